//! `vufsd-bench replay`: send a recorded guest workload (a `vufsd --trace` file) to any
//! vhost-user-fs daemon, as the guest sent it.
//!
//! - **The tree.** [`tree::starting_tree`] works out what the trace found at its start;
//!   `replay --prepare DIR` makes it (files of zeros of the recorded sizes).
//! - **Ids.** Node ids and file handles are the daemon's own: each recorded one is mapped to
//!   the one the daemon under test hands out for the same request (LOOKUP, CREATE, OPEN, ...,
//!   READDIRPLUS entries by name), and requests are rewritten with them.
//! - **Concurrency.** A request is sent once every request that had been *answered* before it
//!   was taken in the recording has been answered here: what the guest could only send after a
//!   reply waits for that reply, and what it had in flight together goes in flight together.
//!   Requests of every request queue go to the first (QEMU's default is one request queue, and
//!   upstream virtiofsd has one); FORGETs go to the high-priority queue without waiting, as
//!   Linux sends them.
//! - INIT is replayed first and alone; DESTROY and INTERRUPT are not replayed.

pub mod record;
pub mod tree;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use record::Record;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::fuse_abi::opcode as op;
use crate::fuse_req::{decode_reply, Creds, FuseRequest, Payload};
use crate::ops::parse_dirents;
use crate::queue::Ticket;
use crate::stats::Histogram;

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Requests sent (FORGETs included).
    pub requests: u64,
    /// First request sent to last reply.
    pub elapsed: Duration,
    /// Latency per opcode.
    pub per_opcode: HashMap<u32, Histogram>,
    /// Requests not sent: their node or handle was never handed out here.
    pub skipped: u64,
    /// Replies whose errno differs from the recording's (recorded, got) per opcode.
    pub mismatches: HashMap<u32, u64>,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Kicks (eventfd writes) the request queue needed: fewer when the daemon is still busy,
    /// or polling, when the next request comes.
    pub kicks: u64,
}

impl ReplayReport {
    /// Requests per second.
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Fields holding a file handle: the byte offset in the arguments, per opcode.
fn fh_offset(r: &Record) -> Option<usize> {
    let a = r.args();
    let u32_at = |at: usize| {
        a.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    match r.opcode() {
        op::READ
        | op::WRITE
        | op::RELEASE
        | op::RELEASEDIR
        | op::FLUSH
        | op::FSYNC
        | op::FSYNCDIR
        | op::READDIR
        | op::READDIRPLUS
        | op::GETLK
        | op::SETLK
        | op::SETLKW
        | op::LSEEK
        | op::FALLOCATE
        | op::IOCTL
        | op::POLL
        | op::COPY_FILE_RANGE => Some(0),
        // fuse_getattr_in { getattr_flags, dummy, fh }, FUSE_GETATTR_FH.
        op::GETATTR if u32_at(0).is_some_and(|f| f & 1 != 0) => Some(8),
        // fuse_setattr_in { valid, padding, fh }, FATTR_FH.
        op::SETATTR if u32_at(0).is_some_and(|v| v & (1 << 3) != 0) => Some(8),
        _ => None,
    }
}

/// Fields holding a second node id: offset in the arguments.
fn node_offset(opcode: u32) -> Option<usize> {
    match opcode {
        op::RENAME | op::RENAME2 | op::LINK => Some(0),
        // fuse_copy_file_range_in { fh_in, off_in, nodeid_out, fh_out, ... }
        op::COPY_FILE_RANGE => Some(16),
        _ => None,
    }
}

fn patch(b: &mut [u8], at: usize, v: u64) -> bool {
    match b.get_mut(at..at + 8) {
        Some(s) => {
            s.copy_from_slice(&v.to_le_bytes());
            true
        }
        None => false,
    }
}

fn get(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Recorded ids to the ones the daemon under test handed out.
struct Ids {
    nodes: HashMap<u64, u64>,
    fhs: HashMap<u64, u64>,
}

impl Ids {
    fn node(&self, n: u64) -> Option<u64> {
        if n == 0 {
            Some(0)
        } else {
            self.nodes.get(&n).copied()
        }
    }

    /// The request `r` rewritten with this daemon's ids, or None if one was never handed out.
    fn translate(&self, r: &Record, write_buf: Option<(u64, u32)>) -> Option<FuseRequest> {
        let opc = r.opcode();
        let nodeid = self.node(r.nodeid())?;
        let mut args = r.args().to_vec();
        if let Some(at) = fh_offset(r) {
            let fh = self.fhs.get(&get(&args, at)?).copied()?;
            patch(&mut args, at, fh);
        }
        if let Some(at) = node_offset(opc) {
            let n = self.node(get(&args, at)?)?;
            patch(&mut args, at, n);
        }
        if opc == op::COPY_FILE_RANGE {
            let fh = self.fhs.get(&get(&args, 24)?).copied()?;
            patch(&mut args, 24, fh);
        }
        let mut req = FuseRequest::new(opc, nodeid);
        req.args = args;
        if opc == op::WRITE {
            let len = (r.request_len as usize).saturating_sub(r.request.len());
            let (gpa, room) = write_buf?;
            req.data = Payload::Guest {
                gpa,
                len: u32::try_from(len).ok().filter(|l| *l <= room)?,
            };
        }
        req.out_data = r.reply_room.saturating_sub(record::OUT_HEADER as u32);
        // Data replies are not needed back, only their length.
        req.keep_data = !matches!(opc, op::READ | op::GETXATTR | op::LISTXATTR | op::READDIR);
        Some(req)
    }

    /// Learn the ids a reply (`body`, after its header) handed out, against the recording.
    fn learn(&mut self, r: &Record, body: &[u8]) {
        match r.opcode() {
            op::LOOKUP | op::MKNOD | op::MKDIR | op::SYMLINK | op::LINK | op::CREATE => {
                if let (Some(theirs), Some(ours)) = (r.entry_nodeid(), get(body, 0)) {
                    self.nodes.insert(theirs, ours);
                }
            }
            op::READDIRPLUS => {
                let (Ok(theirs), Ok(ours)) =
                    (parse_dirents(r.body(), true), parse_dirents(body, true))
                else {
                    return;
                };
                let ours: HashMap<&[u8], u64> = ours
                    .iter()
                    .filter_map(|e| Some((e.name.as_slice(), e.entry?.nodeid)))
                    .collect();
                for e in &theirs {
                    if let (Some(t), Some(o)) = (e.entry, ours.get(e.name.as_slice())) {
                        if t.nodeid != 0 && *o != 0 {
                            self.nodes.insert(t.nodeid, *o);
                        }
                    }
                }
            }
            _ => {}
        }
        if let (Some(theirs), Some(ours)) = (
            r.reply_fh(),
            match r.opcode() {
                op::CREATE => get(body, record::ENTRY_OUT),
                op::OPEN | op::OPENDIR => get(body, 0),
                _ => None,
            },
        ) {
            self.fhs.insert(theirs, ours);
        }
    }
}

/// Replay `records` (a whole trace) on `dev`, which the caller connected with one request
/// queue or more, not initialized: the trace's INIT is sent first.
pub fn replay(dev: &Arc<Device>, records: &[Record]) -> Result<ReplayReport> {
    let mut order: Vec<&Record> = records
        .iter()
        .filter(|r| !matches!(r.opcode(), op::DESTROY | op::INTERRUPT))
        .collect();
    order.sort_by_key(|r| r.start_ns);
    let mut ids = Ids {
        nodes: HashMap::from([(1, 1)]),
        fhs: HashMap::new(),
    };
    let mut report = ReplayReport::default();
    let creds = Creds::default();
    let timeout = dev.config().timeout;
    let mut q = dev.request_queue(0)?;

    // INIT, alone and first.
    if let Some(init) = order.iter().position(|r| r.opcode() == op::INIT) {
        let r = order.remove(init);
        let req = ids
            .translate(r, None)
            .ok_or_else(|| Error::Config("the trace's INIT cannot be sent".into()))?;
        let unique = dev.next_unique();
        let c = q.roundtrip(&req.to_chain(unique, creds))?;
        decode_reply(&req, unique, &c)?;
    }

    // Dependencies: request i may go once the first need[i] requests in end order are done.
    let mut by_end: Vec<usize> = (0..order.len()).collect();
    by_end.sort_by_key(|i| order[*i].end_ns);
    let ends: Vec<u64> = by_end.iter().map(|i| order[*i].end_ns).collect();
    let need: Vec<usize> = order
        .iter()
        .map(|r| ends.partition_point(|e| *e < r.start_ns))
        .collect();
    let mut end_rank = vec![0usize; order.len()];
    for (rank, i) in by_end.iter().enumerate() {
        end_rank[*i] = rank;
    }
    let mut done = vec![false; order.len()];
    let mut prefix = 0usize;
    let finish = |i: usize, done: &mut Vec<bool>, prefix: &mut usize| {
        done[end_rank[i]] = true;
        while *prefix < done.len() && done[*prefix] {
            *prefix += 1;
        }
    };

    // One buffer for every WRITE's data (contents do not matter, only that they are bytes).
    let max_write = order
        .iter()
        .filter(|r| r.opcode() == op::WRITE)
        .map(|r| r.request_len as usize)
        .max()
        .unwrap_or(0);
    // Kept for the whole replay: dropping it frees its guest memory.
    let buf = if max_write > 0 {
        let mem = dev.memory();
        let b = mem
            .alloc(max_write as u64, 4096)
            .ok_or_else(|| Error::Config("guest memory too small for the trace's writes".into()))?;
        mem.fill(b.gpa(), max_write, 0x5a)?;
        Some(b)
    } else {
        None
    };
    let write_buf = buf.as_ref().map(|b| (b.gpa(), max_write as u32));

    let mut in_flight: HashMap<Ticket, (usize, u64, FuseRequest, Instant)> = HashMap::new();
    let mut next = 0usize;
    let t0 = Instant::now();
    while next < order.len() || !in_flight.is_empty() {
        while next < order.len() && prefix >= need[next] {
            let r = order[next];
            let Some(req) = ids.translate(r, write_buf) else {
                report.skipped += 1;
                finish(next, &mut done, &mut prefix);
                next += 1;
                continue;
            };
            let unique = dev.next_unique();
            if matches!(r.opcode(), op::FORGET | op::BATCH_FORGET) {
                let mut req = req;
                req.no_reply = true;
                if r.opcode() == op::BATCH_FORGET {
                    // fuse_batch_forget_in { count, dummy }, then { nodeid, nlookup } each.
                    let mut at = 8;
                    while at + 16 <= req.args.len() {
                        let n = get(&req.args, at).and_then(|n| ids.node(n)).unwrap_or(0);
                        patch(&mut req.args, at, n);
                        at += 16;
                    }
                }
                let mut hp = dev.hiprio()?;
                hp.poll()?;
                let chain = req.to_chain(unique, creds);
                let t = loop {
                    match hp.submit(&chain) {
                        // The daemon has not taken the last ones yet: wait for it.
                        Err(Error::QueueFull) => drop(hp.wait(timeout)?),
                        r => break r?,
                    }
                };
                hp.abandon(t);
                report.requests += 1;
                finish(next, &mut done, &mut prefix);
                next += 1;
                continue;
            }
            match q.submit(&req.to_chain(unique, creds)) {
                Ok(t) => {
                    in_flight.insert(t, (next, unique, req, Instant::now()));
                    report.requests += 1;
                    report.max_in_flight = report.max_in_flight.max(in_flight.len());
                    next += 1;
                }
                Err(Error::QueueFull) => break,
                Err(e) => return Err(e),
            }
        }
        if in_flight.is_empty() {
            continue;
        }
        for (t, c) in q.wait(timeout)? {
            let Some((i, unique, req, sent)) = in_flight.remove(&t) else {
                continue;
            };
            let r = order[i];
            report
                .per_opcode
                .entry(r.opcode())
                .or_default()
                .record(sent.elapsed());
            let got = match decode_reply(&req, unique, &c) {
                Ok(reply) => {
                    if r.errno() == Some(0) {
                        ids.learn(r, &reply.body);
                    }
                    0
                }
                Err(Error::Fuse { errno, .. }) => errno,
                Err(e) => return Err(e),
            };
            if r.errno().is_some_and(|e| e != got) {
                *report.mismatches.entry(r.opcode()).or_default() += 1;
            }
            finish(i, &mut done, &mut prefix);
        }
    }
    report.elapsed = t0.elapsed();
    report.kicks = q.virtqueue().kicks();
    Ok(report)
}
