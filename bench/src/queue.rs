//! Request-level queue driver: turns a chain of byte buffers into descriptors in guest
//! memory, submits it, and hands back what the daemon wrote.
//!
//! One [`QueueDriver`] per virtqueue, used by one thread at a time; many chains may be in
//! flight. This is also the raw API for malformed-request tests: a [`Chain`] may carry
//! arbitrary guest addresses and lengths, and a request the daemon never completes comes back
//! as [`Error::Timeout`] (after which it is abandoned, see [`QueueDriver::abandon`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::memory::{GuestBuf, GuestMemory, PAGE_SIZE};
use crate::virtqueue::{ChainMode, Desc, RawDesc, SplitQueue, WaitOutcome};

/// One buffer of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Device-readable: these bytes, copied into freshly allocated guest memory.
    In(Vec<u8>),
    /// Device-writable: a freshly allocated buffer of this many bytes, read back on completion.
    Out(u32),
    /// Device-readable descriptor at a caller-chosen guest address (pre-filled data, or a
    /// bogus address / overlong length for malformed tests). Nothing is allocated.
    InAt {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
    /// Device-writable descriptor at a caller-chosen guest address. Not read back.
    OutAt {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
}

impl Segment {
    fn writable(&self) -> bool {
        matches!(self, Segment::Out(_) | Segment::OutAt { .. })
    }
}

/// A descriptor chain to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Buffers in order (readable first, then writable, unless a test wants otherwise).
    pub segments: Vec<Segment>,
    /// `None`: the driver's default (indirect if negotiated and more than one segment).
    pub mode: Option<ChainMode>,
    /// Copy back at most this many bytes of what the daemon wrote (the rest stays in guest
    /// memory; benchmarks skip copying 1 MiB read payloads).
    pub readback_limit: usize,
}

impl Chain {
    /// A chain with the default mode that reads back everything.
    pub fn new(segments: Vec<Segment>) -> Self {
        Chain {
            segments,
            mode: None,
            readback_limit: usize::MAX,
        }
    }
}

/// A completed chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Length the daemon put in the used ring.
    pub used_len: u32,
    /// What the daemon wrote: the allocated writable segments concatenated, cut to
    /// `min(used_len, their total size, readback_limit)`.
    pub written: Vec<u8>,
    /// Total size of the allocated writable segments.
    pub out_capacity: usize,
    /// Submission to reap.
    pub latency: Duration,
}

/// Identifies a submitted chain. Head ids are reused, so a sequence number disambiguates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    head: u16,
    seq: u64,
}

struct Pending {
    seq: u64,
    _buf: Option<GuestBuf>,
    outs: Vec<(u64, u32)>,
    readback_limit: usize,
    submitted: Instant,
    abandoned: bool,
}

/// Drives one virtqueue at the request level.
pub struct QueueDriver {
    vq: SplitQueue,
    mem: Arc<GuestMemory>,
    sock: Arc<OwnedFd>,
    indirect: bool,
    timeout: Duration,
    pending: HashMap<u16, Pending>,
    done: HashMap<Ticket, Completion>,
    seq: u64,
    submitted: u64,
}

impl std::fmt::Debug for QueueDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueDriver")
            .field("vq", &self.vq)
            .field("pending", &self.pending.len())
            .finish()
    }
}

fn align_for(len: usize) -> u64 {
    if len >= PAGE_SIZE as usize {
        PAGE_SIZE
    } else {
        64
    }
}

impl QueueDriver {
    /// Wraps a started virtqueue. `sock` is the vhost-user socket, polled for hang-ups.
    pub fn new(
        vq: SplitQueue,
        mem: Arc<GuestMemory>,
        sock: Arc<OwnedFd>,
        indirect: bool,
        timeout: Duration,
    ) -> Self {
        QueueDriver {
            vq,
            mem,
            sock,
            indirect,
            timeout,
            pending: HashMap::new(),
            done: HashMap::new(),
            seq: 0,
            submitted: 0,
        }
    }

    /// The vhost-user queue index (0 = high priority).
    pub fn index(&self) -> u16 {
        self.vq.index()
    }

    /// The underlying ring, for inspection.
    pub fn virtqueue(&self) -> &SplitQueue {
        &self.vq
    }

    /// The guest memory this queue allocates from.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Default per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the default per-request timeout.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Chains submitted and not yet completed (including abandoned ones).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Chains submitted since creation.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// True if chains use an indirect table by default.
    pub fn uses_indirect(&self) -> bool {
        self.indirect
    }

    /// Lays the chain out in guest memory, publishes it and kicks the daemon if needed.
    /// [`Error::QueueFull`] means: reap completions, then retry.
    pub fn submit(&mut self, chain: &Chain) -> Result<Ticket> {
        let ticket = self.publish(chain)?;
        self.vq.notify()?;
        Ok(ticket)
    }

    /// Like [`QueueDriver::submit`] with fully caller-built descriptors (flags and next as
    /// given); nothing is allocated or read back.
    pub fn submit_raw(&mut self, descs: &[RawDesc], mode: ChainMode) -> Result<Ticket> {
        let head = self.vq.add_raw(descs, mode)?;
        let ticket = self.track(head, None, Vec::new(), 0);
        self.vq.notify()?;
        Ok(ticket)
    }

    fn publish(&mut self, chain: &Chain) -> Result<Ticket> {
        if chain.segments.is_empty() {
            return Err(Error::Config("empty chain".into()));
        }
        // One allocation for every buffer we own; page-sized buffers page-aligned.
        let mut total = 0u64;
        for s in &chain.segments {
            let len = match s {
                Segment::In(b) => b.len(),
                Segment::Out(n) => *n as usize,
                _ => continue,
            };
            let a = align_for(len);
            total = total.div_ceil(a) * a + len as u64;
        }
        let buf = if total > 0 {
            match self.mem.alloc(total, PAGE_SIZE) {
                Some(b) => Some(b),
                None if self.pending.is_empty() => {
                    return Err(Error::Config(format!(
                        "a {total}-byte request does not fit in guest memory"
                    )))
                }
                None => return Err(Error::QueueFull),
            }
        } else {
            None
        };
        let mut descs = Vec::with_capacity(chain.segments.len());
        let mut outs = Vec::new();
        let mut off = 0u64;
        for s in &chain.segments {
            let (addr, len) = match (s, &buf) {
                (Segment::In(bytes), Some(b)) => {
                    let a = align_for(bytes.len());
                    off = off.div_ceil(a) * a;
                    b.write_at(off, bytes)?;
                    let at = (b.gpa() + off, bytes.len());
                    off += bytes.len() as u64;
                    at
                }
                (Segment::Out(n), Some(b)) => {
                    let n = *n as usize;
                    let a = align_for(n);
                    off = off.div_ceil(a) * a;
                    if n < PAGE_SIZE as usize {
                        // Poison small reply buffers so a daemon claiming bytes it never
                        // wrote shows up as garbage rather than as a previous reply.
                        b.write_at(off, &vec![0xa5; n])?;
                    }
                    let at = (b.gpa() + off, n);
                    outs.push((at.0, n as u32));
                    off += n as u64;
                    at
                }
                (Segment::InAt { addr, len } | Segment::OutAt { addr, len }, _) => {
                    (*addr, *len as usize)
                }
                (_, None) => return Err(Error::Config("segment without a buffer".into())),
            };
            let len = u32::try_from(len)
                .map_err(|_| Error::Config("segment longer than 4 GiB".into()))?;
            descs.push(Desc {
                addr,
                len,
                writable: s.writable(),
            });
        }
        let mode = chain.mode.unwrap_or(if self.indirect && descs.len() > 1 {
            ChainMode::Indirect
        } else {
            ChainMode::Direct
        });
        let head = self.vq.add(&descs, mode)?;
        Ok(self.track(head, buf, outs, chain.readback_limit))
    }

    fn track(
        &mut self,
        head: u16,
        buf: Option<GuestBuf>,
        outs: Vec<(u64, u32)>,
        readback_limit: usize,
    ) -> Ticket {
        self.seq += 1;
        self.submitted += 1;
        self.pending.insert(
            head,
            Pending {
                seq: self.seq,
                _buf: buf,
                outs,
                readback_limit,
                submitted: Instant::now(),
                abandoned: false,
            },
        );
        Ticket {
            head,
            seq: self.seq,
        }
    }

    /// Gives up on a request (after a timeout): its descriptors and buffers stay reserved
    /// for the daemon, and its completion, if it ever comes, is discarded.
    pub fn abandon(&mut self, t: Ticket) {
        if let Some(p) = self.pending.get_mut(&t.head) {
            if p.seq == t.seq {
                p.abandoned = true;
            }
        }
        self.done.remove(&t);
    }

    /// Abandons every request in flight (after an error, so later users of the queue do not
    /// see their completions).
    pub fn abandon_all(&mut self) {
        for p in self.pending.values_mut() {
            p.abandoned = true;
        }
        self.done.clear();
    }

    /// Reaps whatever the daemon has completed, without waiting. Completions of abandoned
    /// requests are dropped.
    pub fn poll(&mut self) -> Result<Vec<(Ticket, Completion)>> {
        self.reap_counted().map(|(_, v)| v)
    }

    /// Reaps; also returns how many used entries were consumed (abandoned ones included).
    fn reap_counted(&mut self) -> Result<(usize, Vec<(Ticket, Completion)>)> {
        let used = self.vq.reap()?;
        let count = used.len();
        let mut out = Vec::with_capacity(used.len());
        for u in used {
            let Some(p) = self.pending.remove(&u.id) else {
                return Err(Error::Protocol(format!(
                    "queue {}: completion for descriptor {} we never submitted",
                    self.vq.index(),
                    u.id
                )));
            };
            if p.abandoned {
                continue;
            }
            let capacity: usize = p.outs.iter().map(|&(_, n)| n as usize).sum();
            let want = (u.len as usize).min(capacity).min(p.readback_limit);
            let mut written = vec![0u8; want];
            let mut at = 0;
            for &(gpa, n) in &p.outs {
                if at >= want {
                    break;
                }
                let k = (n as usize).min(want - at);
                self.mem.read(gpa, &mut written[at..at + k])?;
                at += k;
            }
            out.push((
                Ticket {
                    head: u.id,
                    seq: p.seq,
                },
                Completion {
                    used_len: u.len,
                    written,
                    out_capacity: capacity,
                    latency: p.submitted.elapsed(),
                },
            ));
        }
        Ok((count, out))
    }

    /// Waits until the daemon returns at least one chain, and returns the completions
    /// reaped (empty if every returned chain had been abandoned). [`Error::Timeout`] if the
    /// daemon returned nothing within `timeout`; [`Error::Disconnected`] if it closed the
    /// vhost-user socket.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<(Ticket, Completion)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let (n, got) = self.reap_counted()?;
            if n > 0 {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline
                || self.vq.wait(deadline - now, Some(self.sock.as_raw_fd()))?
                    == WaitOutcome::TimedOut
            {
                let (n, got) = self.reap_counted()?;
                if n > 0 {
                    return Ok(got);
                }
                return Err(Error::Timeout {
                    what: format!("a used entry ({})", self.vq.describe()),
                    after: timeout,
                });
            }
        }
    }

    /// Waits for one particular request; completions of others are kept for their own
    /// `wait_for`. On timeout the request is abandoned and [`Error::Timeout`] returned.
    pub fn wait_for(&mut self, t: Ticket, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.done.remove(&t) {
                return Ok(c);
            }
            if self.pending.get(&t.head).is_none_or(|p| p.seq != t.seq) {
                return Err(Error::Config("waiting for an unknown request".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait(left) {
                Ok(got) => self.done.extend(got),
                Err(e) => {
                    if e.is_timeout() {
                        self.abandon(t);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Submits a chain and waits for it with the default timeout.
    pub fn roundtrip(&mut self, chain: &Chain) -> Result<Completion> {
        let t = loop {
            match self.submit(chain) {
                Err(Error::QueueFull) => {
                    let got = self.wait(self.timeout)?;
                    self.done.extend(got);
                }
                r => break r?,
            }
        };
        self.wait_for(t, self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn driver() -> (QueueDriver, std::os::unix::net::UnixStream) {
        let mem = GuestMemory::new(1 << 20, 0).unwrap();
        let vq = SplitQueue::new(&mem, 1, 4, true).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let q = QueueDriver::new(
            vq,
            mem,
            Arc::new(OwnedFd::from(a)),
            true,
            Duration::from_millis(50),
        );
        (q, b)
    }

    /// Plays the device: returns chain `head` with `len` bytes written.
    fn complete(q: &QueueDriver, slot: u16, head: u16, len: u32) {
        let vq = q.virtqueue();
        let mem = q.memory();
        let e = vq.used_gpa() + 4 + 8 * u64::from(slot);
        mem.store(u32::from(head), e, Ordering::Relaxed).unwrap();
        mem.store(len, e + 4, Ordering::Relaxed).unwrap();
        mem.store(slot + 1, vq.used_gpa() + 2, Ordering::Release)
            .unwrap();
    }

    #[test]
    fn reaping_only_abandoned_requests_is_progress_not_a_timeout() {
        let (mut q, _peer) = driver();
        let chain = Chain::new(vec![Segment::In(vec![1; 48])]);
        let t = q.submit(&chain).unwrap();
        q.abandon(t);
        complete(&q, 0, t.head, 0);
        assert!(q.wait(Duration::from_millis(50)).unwrap().is_empty());
        assert_eq!(q.in_flight(), 0);
        // Nothing left: now it is a timeout, with ring state in the message.
        let e = q.wait(Duration::from_millis(10)).unwrap_err();
        assert!(
            e.is_timeout() && e.to_string().contains("avail idx 1"),
            "{e}"
        );
    }

    #[test]
    fn completion_reads_back_what_the_device_wrote() {
        let (mut q, _peer) = driver();
        let chain = Chain::new(vec![
            Segment::In(vec![1; 8]),
            Segment::Out(16),
            Segment::Out(8),
        ]);
        let t = q.submit(&chain).unwrap();
        // Find where the writable buffers are by reading the indirect table.
        let vq = q.virtqueue();
        let mut d = [0u8; 16];
        q.memory()
            .read(vq.desc_gpa() + 16 * u64::from(t.head), &mut d)
            .unwrap();
        let table = u64::from_le_bytes(d[..8].try_into().unwrap());
        let mut out1 = [0u8; 16];
        q.memory().read(table + 16, &mut out1).unwrap();
        let gpa = u64::from_le_bytes(out1[..8].try_into().unwrap());
        q.memory().write(gpa, &[7; 16]).unwrap();
        complete(&q, 0, t.head, 20);
        let c = q.wait_for(t, Duration::from_millis(50)).unwrap();
        assert_eq!(c.used_len, 20);
        assert_eq!(c.out_capacity, 24);
        assert_eq!(&c.written[..16], &[7; 16]);
        assert_eq!(c.written.len(), 20);
    }

    #[test]
    fn hangup_is_disconnected() {
        let (mut q, peer) = driver();
        let t = q
            .submit(&Chain::new(vec![Segment::In(vec![1; 8])]))
            .unwrap();
        drop(peer);
        let e = q.wait_for(t, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, Error::Disconnected), "{e}");
    }
}
