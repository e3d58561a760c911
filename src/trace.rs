//! `--trace FILE`: a record of the FUSE requests a guest sends and what they were answered, for
//! `vufsd-bench replay` to send again to any daemon (docs/performance.md, "Real workloads").
//!
//! Per request: when the daemon took it off its queue and when it answered (nanoseconds since
//! the trace began), the queue, the request's header and arguments (names included, but never
//! a WRITE's data), the size of the guest's reply buffers, and the reply's header with the
//! fixed part after it (node ids and handles the daemon handed out, entries of a READDIRPLUS;
//! never a READ's data or an xattr's value). File contents stay out of the trace.
//!
//! ```text
//! file    "vufsd-trace\0" u32:version, then records
//! record  u32:len-of-the-rest u64:start_ns u64:end_ns u16:queue u32:request_len
//!         u32:reply_room u32:n [n request bytes] u32:m [m reply bytes]      (little endian)
//! ```
//!
//! Off by default and free when off (one branch per request). When on, each request costs a
//! copy of a few hundred bytes and a buffered write under a lock: a trace is for capturing a
//! workload, not for measuring one.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Deref;
use std::sync::Mutex;
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::Opcode;
use log::warn;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

pub const MAGIC: &[u8; 12] = b"vufsd-trace\0";
pub const VERSION: u32 = 1;

/// Request bytes kept: the header, the arguments and up to two names (RENAME: 2 x 255 + NULs),
/// well under this.
const MAX_REQUEST: usize = 1024;
/// Reply bytes kept for a READDIRPLUS (its entries are the node ids the guest goes on to use),
/// and for everything else (the header and the fixed reply: entry_out + open_out for CREATE).
const MAX_READDIRPLUS: usize = 1 << 20;
const MAX_REPLY: usize = 256;
/// fuse_in_header + fuse_write_in: what is kept of a WRITE.
const WRITE_HEAD: usize = 40 + 40;
/// fuse_out_header.
const OUT_HEADER: usize = 16;

pub struct Tracer {
    out: Mutex<BufWriter<File>>,
    t0: Instant,
    failed: std::sync::atomic::AtomicBool,
}

/// A request taken off a queue, not answered yet.
pub struct Pending {
    start_ns: u64,
    queue: u16,
    opcode: u32,
    request_len: u32,
    reply_room: u32,
    request: Vec<u8>,
}

/// Copy up to `limit` bytes from the descriptors of `chain` that `pick` selects, in order.
fn gather<M>(
    mem: &M::Target,
    chain: &DescriptorChain<M>,
    writable: bool,
    limit: usize,
) -> (Vec<u8>, usize)
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let mut out = Vec::new();
    let mut total = 0usize;
    for d in chain.clone().filter(|d| d.is_write_only() == writable) {
        let len = d.len() as usize;
        total = total.saturating_add(len);
        let take = len.min(limit.saturating_sub(out.len()));
        if take > 0 {
            let at = out.len();
            out.resize(at + take, 0);
            if mem.read_slice(&mut out[at..], d.addr()).is_err() {
                out.truncate(at);
            }
        }
    }
    (out, total)
}

fn opcode_of(request: &[u8]) -> u32 {
    request
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

impl Tracer {
    /// Start a trace into `file` (opened by the caller: inside a sandbox there is no path to
    /// open it by).
    pub fn new(file: File) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        Ok(Self {
            out: Mutex::new(out),
            t0: Instant::now(),
            failed: Default::default(),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A request was taken off queue `queue`.
    pub fn begin<M>(&self, mem: &M::Target, chain: &DescriptorChain<M>, queue: u16) -> Pending
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let start_ns = self.now_ns();
        let (mut request, request_len) = gather(mem, chain, false, MAX_REQUEST);
        let opcode = opcode_of(&request);
        if opcode == Opcode::Write as u32 {
            request.truncate(WRITE_HEAD);
        }
        let (_, room) = gather(mem, chain, true, 0);
        Pending {
            start_ns,
            queue,
            opcode,
            request_len: u32::try_from(request_len).unwrap_or(u32::MAX),
            reply_room: u32::try_from(room).unwrap_or(u32::MAX),
            request,
        }
    }

    /// The request was answered with `used` bytes.
    pub fn end<M>(&self, p: Pending, mem: &M::Target, chain: &DescriptorChain<M>, used: u32)
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let end_ns = self.now_ns();
        let keep = match p.opcode {
            x if x == Opcode::Readdirplus as u32 => MAX_READDIRPLUS,
            x if x == Opcode::Readlink as u32 => MAX_REPLY + 4096,
            x if x == Opcode::Read as u32
                || x == Opcode::Getxattr as u32
                || x == Opcode::Listxattr as u32 =>
            {
                OUT_HEADER
            }
            _ => MAX_REPLY,
        };
        let (reply, _) = gather(mem, chain, true, keep.min(used as usize));
        let mut rec = Vec::with_capacity(40 + p.request.len() + reply.len());
        rec.extend_from_slice(&p.start_ns.to_le_bytes());
        rec.extend_from_slice(&end_ns.to_le_bytes());
        rec.extend_from_slice(&p.queue.to_le_bytes());
        rec.extend_from_slice(&p.request_len.to_le_bytes());
        rec.extend_from_slice(&p.reply_room.to_le_bytes());
        rec.extend_from_slice(&(p.request.len() as u32).to_le_bytes());
        rec.extend_from_slice(&p.request);
        rec.extend_from_slice(&(reply.len() as u32).to_le_bytes());
        rec.extend_from_slice(&reply);
        let Ok(mut out) = self.out.lock() else { return };
        let written = out
            .write_all(&(rec.len() as u32).to_le_bytes())
            .and_then(|()| out.write_all(&rec));
        if let Err(e) = written {
            if !self.failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!("cannot write the trace: {e}; the trace is incomplete");
            }
        }
    }

    /// Write out what is buffered (at exit).
    pub fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            if let Err(e) = out.flush() {
                warn!("cannot write the trace: {e}");
            }
        }
    }
}
