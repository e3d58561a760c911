//! Split virtqueue, driver side: the part of a guest's virtio driver that owns the rings.
//!
//! Layout (virtio 1.x split ring) inside guest memory: descriptor table (16 bytes each),
//! available ring (`flags, idx, ring[size], used_event`), used ring (`flags, idx,
//! ring[size] of {id, len}, avail_event`). We allocate descriptors, publish chains in the
//! available ring, kick the daemon through the kick eventfd and reap used entries, waiting on
//! the call eventfd. Everything read back from the used ring is validated.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};
use crate::memory::{GuestBuf, GuestMemory, PAGE_SIZE};

/// Descriptor continues via `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor points to an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Device asks the driver not to kick (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// One buffer of a chain, as the driver describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address (need not be valid: raw tests send bogus ones).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (true) or device-readable (false).
    pub writable: bool,
}

/// A fully caller-controlled descriptor, for malformed-chain tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Raw `VRING_DESC_F_*` flags, written as given.
    pub flags: u16,
    /// `next`, as an index into this chain (0 = its first descriptor). For direct chains an
    /// index inside the chain is translated to the real descriptor id; values past the end
    /// are written unchanged (so they point at arbitrary descriptors).
    pub next: u16,
}

/// Whether a chain goes directly into the descriptor table or through an indirect table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainMode {
    /// One ring descriptor per buffer.
    Direct,
    /// One ring descriptor pointing at an indirect table (what Linux does whenever
    /// VIRTIO_RING_F_INDIRECT_DESC is negotiated and a chain has more than one buffer).
    Indirect,
}

/// One reaped used-ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor id of the completed chain.
    pub id: u16,
    /// Bytes the daemon says it wrote into the chain's writable buffers.
    pub len: u32,
}

/// Outcome of waiting for the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Used entries are ready to reap.
    Ready,
    /// Nothing arrived before the deadline.
    TimedOut,
}

struct InFlight {
    descs: Vec<u16>,
    _indirect: Option<GuestBuf>,
}

/// A split virtqueue driven from this process.
pub struct SplitQueue {
    index: u16,
    size: u16,
    mem: Arc<GuestMemory>,
    _rings: GuestBuf,
    desc_gpa: u64,
    avail_gpa: u64,
    used_gpa: u64,
    free: Vec<u16>,
    in_flight: Vec<Option<InFlight>>,
    avail_idx: u16,
    kicked_idx: u16,
    last_used: u16,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
    kicks: u64,
}

impl std::fmt::Debug for SplitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitQueue")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("in_flight", &self.in_flight_count())
            .finish()
    }
}

/// Bytes of guest memory the rings of a queue of `size` entries take.
pub fn ring_bytes(size: u16) -> u64 {
    let n = u64::from(size);
    let used_off = align_up(16 * n + 6 + 2 * n, PAGE_SIZE);
    used_off + 6 + 8 * n
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// virtio's `vring_need_event`: did `[old, new)` cross `event`?
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl SplitQueue {
    /// Lays out a queue of `size` entries (a power of two, at most 32768) in `mem`.
    pub fn new(mem: &Arc<GuestMemory>, index: u16, size: u16, event_idx: bool) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(Error::Config(format!(
                "queue size {size} must be a power of two in 1..=32768"
            )));
        }
        let n = u64::from(size);
        let rings = mem
            .alloc(ring_bytes(size), PAGE_SIZE)
            .ok_or_else(|| Error::Config("guest memory too small for the vrings".into()))?;
        mem.fill(rings.gpa(), rings.len() as usize, 0)?;
        let desc_gpa = rings.gpa();
        let avail_gpa = desc_gpa + 16 * n;
        let used_gpa = desc_gpa + align_up(16 * n + 6 + 2 * n, PAGE_SIZE);
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io("eventfd (kick)", e))?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io("eventfd (call)", e))?;
        Ok(SplitQueue {
            index,
            size,
            mem: Arc::clone(mem),
            _rings: rings,
            desc_gpa,
            avail_gpa,
            used_gpa,
            free: (0..size).rev().collect(),
            in_flight: (0..size).map(|_| None).collect(),
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            event_idx,
            kick,
            call,
            kicks: 0,
        })
    }

    /// vhost-user queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Number of ring entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// GPA of the descriptor table.
    pub fn desc_gpa(&self) -> u64 {
        self.desc_gpa
    }

    /// GPA of the available ring.
    pub fn avail_gpa(&self) -> u64 {
        self.avail_gpa
    }

    /// GPA of the used ring.
    pub fn used_gpa(&self) -> u64 {
        self.used_gpa
    }

    /// The kick eventfd (we write, the daemon reads).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (the daemon writes, we read).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Free ring descriptors.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Chains published and not yet returned.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.iter().filter(|s| s.is_some()).count()
    }

    /// Kicks actually sent (after notification suppression).
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Publishes a chain of buffers: readable ones must precede writable ones (the virtio
    /// rule; not enforced, so tests can break it). Returns the head descriptor id.
    pub fn add(&mut self, bufs: &[Desc], mode: ChainMode) -> Result<u16> {
        let raw: Vec<RawDesc> = bufs
            .iter()
            .enumerate()
            .map(|(i, d)| RawDesc {
                addr: d.addr,
                len: d.len,
                flags: if d.writable { VRING_DESC_F_WRITE } else { 0 }
                    | if i + 1 < bufs.len() {
                        VRING_DESC_F_NEXT
                    } else {
                        0
                    },
                next: (i + 1) as u16,
            })
            .collect();
        self.add_raw(&raw, mode)
    }

    /// Publishes caller-built descriptors exactly as given (flags, next), directly in the
    /// ring or through an indirect table. Returns the head descriptor id.
    pub fn add_raw(&mut self, descs: &[RawDesc], mode: ChainMode) -> Result<u16> {
        if descs.is_empty() {
            return Err(Error::Config("empty descriptor chain".into()));
        }
        let (ids, indirect) = match mode {
            ChainMode::Direct => {
                if descs.len() > usize::from(self.size) {
                    return Err(Error::Config(format!(
                        "a {}-descriptor chain cannot fit a {}-entry queue",
                        descs.len(),
                        self.size
                    )));
                }
                if self.free.len() < descs.len() {
                    return Err(Error::QueueFull);
                }
                let ids: Vec<u16> = (0..descs.len()).filter_map(|_| self.free.pop()).collect();
                for (d, &id) in descs.iter().zip(&ids) {
                    let next = ids.get(usize::from(d.next)).copied().unwrap_or(d.next);
                    self.write_desc(self.desc_gpa, id, d.addr, d.len, d.flags, next)?;
                }
                (ids, None)
            }
            ChainMode::Indirect => {
                let Some(&id) = self.free.last() else {
                    return Err(Error::QueueFull);
                };
                let bytes = 16 * descs.len() as u64;
                let table_len = u32::try_from(bytes)
                    .map_err(|_| Error::Config("indirect table too large".into()))?;
                let table = self.mem.alloc(bytes, 16).ok_or(Error::QueueFull)?;
                for (i, d) in descs.iter().enumerate() {
                    self.write_desc(table.gpa(), i as u16, d.addr, d.len, d.flags, d.next)?;
                }
                self.free.pop();
                self.write_desc(
                    self.desc_gpa,
                    id,
                    table.gpa(),
                    table_len,
                    VRING_DESC_F_INDIRECT,
                    0,
                )?;
                (vec![id], Some(table))
            }
        };
        let head = ids[0];
        self.in_flight[usize::from(head)] = Some(InFlight {
            descs: ids,
            _indirect: indirect,
        });
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .store(head, self.avail_gpa + 4 + 2 * slot, Ordering::Relaxed)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Descriptors and the ring entry must be visible before the new index.
        fence(Ordering::Release);
        self.mem
            .store(self.avail_idx, self.avail_gpa + 2, Ordering::Release)?;
        Ok(head)
    }

    fn write_desc(
        &self,
        table: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(table + 16 * u64::from(i), &b)
    }

    /// Kicks the daemon if it asked to be notified about the chains published since the last
    /// kick (EVENT_IDX `avail_event`, or the used ring's NO_NOTIFY flag). Returns whether a
    /// kick was sent.
    pub fn notify(&mut self) -> Result<bool> {
        // The new avail idx must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        let new = self.avail_idx;
        let old = self.kicked_idx;
        if new == old {
            return Ok(false);
        }
        self.kicked_idx = new;
        let needed = if self.event_idx {
            let avail_event: u16 = self.mem.load(
                self.used_gpa + 4 + 8 * u64::from(self.size),
                Ordering::Acquire,
            )?;
            need_event(avail_event, new, old)
        } else {
            let flags: u16 = self.mem.load(self.used_gpa, Ordering::Acquire)?;
            flags & VRING_USED_F_NO_NOTIFY == 0
        };
        if needed {
            self.kick_now()?;
        }
        Ok(needed)
    }

    /// Writes the kick eventfd unconditionally.
    pub fn kick_now(&mut self) -> Result<()> {
        self.kicks += 1;
        self.kick.write(1).map_err(|e| Error::io("kick eventfd", e))
    }

    fn device_used_idx(&self) -> Result<u16> {
        self.mem.load(self.used_gpa + 2, Ordering::Acquire)
    }

    /// A one-line snapshot of both sides' ring indexes, for timeout diagnostics.
    pub fn describe(&self) -> String {
        let n = u64::from(self.size);
        let used_idx = self.device_used_idx().ok();
        let used_flags: Option<u16> = self.mem.load(self.used_gpa, Ordering::Acquire).ok();
        let avail_event: Option<u16> = self
            .mem
            .load(self.used_gpa + 4 + 8 * n, Ordering::Acquire)
            .ok();
        format!(
            "queue {}: avail idx {} (last kick check at {}), device used idx {:?}, reaped up to {}, \
             device avail_event {:?}, used flags {:?}, {} in flight, {} free descriptors, {} kicks, {} bytes of guest memory free",
            self.index,
            self.avail_idx,
            self.kicked_idx,
            used_idx,
            self.last_used,
            avail_event.filter(|_| self.event_idx),
            used_flags,
            self.in_flight_count(),
            self.free.len(),
            self.kicks,
            self.mem.free_bytes()
        )
    }

    /// True if the daemon has returned chains we have not reaped.
    pub fn has_used(&self) -> Result<bool> {
        Ok(self.device_used_idx()? != self.last_used)
    }

    /// Reaps every used entry, freeing its descriptors. A used entry naming a descriptor
    /// that is not the head of an in-flight chain, or a used index that runs ahead of what
    /// was published, is a protocol violation.
    pub fn reap(&mut self) -> Result<Vec<UsedElem>> {
        let used_idx = self.device_used_idx()?;
        let pending = used_idx.wrapping_sub(self.last_used);
        let published = self.avail_idx.wrapping_sub(self.last_used);
        if pending > published {
            return Err(Error::Protocol(format!(
                "queue {}: used idx {used_idx} is {pending} ahead of our last seen {}, but only {published} chains were outstanding",
                self.index, self.last_used
            )));
        }
        let mut out = Vec::with_capacity(usize::from(pending));
        while self.last_used != used_idx {
            let slot = u64::from(self.last_used % self.size);
            let elem = self.used_gpa + 4 + 8 * slot;
            let id: u32 = self.mem.load(elem, Ordering::Acquire)?;
            let len: u32 = self.mem.load(elem + 4, Ordering::Acquire)?;
            self.last_used = self.last_used.wrapping_add(1);
            let entry = u16::try_from(id)
                .ok()
                .and_then(|h| self.in_flight.get_mut(usize::from(h)).map(|s| (h, s)))
                .and_then(|(h, s)| s.take().map(|f| (h, f)));
            let Some((head, flight)) = entry else {
                return Err(Error::Protocol(format!(
                    "queue {}: used entry names descriptor {id}, which is not an in-flight chain head",
                    self.index
                )));
            };
            self.free.extend(flight.descs.iter().rev());
            out.push(UsedElem { id: head, len });
        }
        if self.event_idx {
            // Ask for an interrupt at the next used entry.
            self.mem.store(
                self.last_used,
                self.avail_gpa + 4 + 2 * u64::from(self.size),
                Ordering::Release,
            )?;
        }
        Ok(out)
    }

    /// Waits until used entries are available, `timeout` passes, or `hup_fd` (the vhost-user
    /// socket) reports that the daemon went away.
    pub fn wait(&mut self, timeout: Duration, hup_fd: Option<RawFd>) -> Result<WaitOutcome> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.event_idx {
                self.mem.store(
                    self.last_used,
                    self.avail_gpa + 4 + 2 * u64::from(self.size),
                    Ordering::Release,
                )?;
                fence(Ordering::SeqCst);
            }
            if self.has_used()? {
                return Ok(WaitOutcome::Ready);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(WaitOutcome::TimedOut);
            }
            let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut fds = [
                libc::pollfd {
                    fd: self.call.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: hup_fd.unwrap_or(-1),
                    events: libc::POLLRDHUP,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a valid array of two pollfd structs for the duration of the call
            // (a negative fd is ignored by poll).
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("poll call eventfd", e));
            }
            if fds[0].revents & libc::POLLIN != 0 {
                // Drain the counter; EAGAIN means someone else already did.
                let _ = self.call.read();
            }
            if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
                && !self.has_used()?
            {
                return Err(Error::Disconnected);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_virtio() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(5, 3, 0));
        assert!(need_event(65535, 0, 65534));
    }

    #[test]
    fn add_reap_direct_and_indirect() {
        let mem = GuestMemory::new(1 << 20, 0).unwrap();
        let mut q = SplitQueue::new(&mem, 1, 8, false).unwrap();
        let bufs = [
            Desc {
                addr: 0x1000,
                len: 40,
                writable: false,
            },
            Desc {
                addr: 0x2000,
                len: 16,
                writable: true,
            },
        ];
        let h1 = q.add(&bufs, ChainMode::Direct).unwrap();
        let h2 = q.add(&bufs, ChainMode::Indirect).unwrap();
        assert_eq!(q.free_descs(), 5);
        // Play the device: return h2 then h1.
        for (i, (h, len)) in [(h2, 7u32), (h1, 9u32)].iter().enumerate() {
            let e = q.used_gpa() + 4 + 8 * i as u64;
            mem.store(u32::from(*h), e, Ordering::Relaxed).unwrap();
            mem.store(*len, e + 4, Ordering::Relaxed).unwrap();
        }
        mem.store(2u16, q.used_gpa() + 2, Ordering::Release)
            .unwrap();
        let used = q.reap().unwrap();
        assert_eq!(
            used,
            vec![UsedElem { id: h2, len: 7 }, UsedElem { id: h1, len: 9 }]
        );
        assert_eq!(q.free_descs(), 8);
        // A bogus id is a protocol error, not a panic.
        q.add(&bufs, ChainMode::Direct).unwrap();
        mem.store(999u32, q.used_gpa() + 4 + 16, Ordering::Relaxed)
            .unwrap();
        mem.store(3u16, q.used_gpa() + 2, Ordering::Release)
            .unwrap();
        assert!(matches!(q.reap(), Err(Error::Protocol(_))));
    }
}
