//! Guest memory and the descriptor chains a request is laid into.
//!
//! Memory is three regions: two contiguous ones (a buffer may span them, as it may span two of
//! QEMU's RAM regions) and one after a hole. The split virtqueue lives at the bottom of the
//! first region; each request rewrites its descriptor table and publishes one chain.

use fuse_backend_rs::abi::fuse_abi::OutHeader;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const QUEUE_SIZE: u16 = 256;
const DESC_TABLE: u64 = 0x0000;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x1400;
const INDIRECT_TABLE: u64 = 0x2000;
const DATA: u64 = 0x4000;
const R0_END: u64 = 0x10_0000;
const R1_END: u64 = 0x14_0000;
const R2: u64 = 0x20_0000;
const R2_END: u64 = 0x21_0000;
/// Inside no region.
const HOLE: u64 = 0x18_0000;
/// Longest segment a layout may ask for.
pub const MAX_SEG: u32 = 0x2_0000;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), R0_END as usize),
        (GuestAddress(R0_END), (R1_END - R0_END) as usize),
        (GuestAddress(R2), (R2_END - R2) as usize),
    ])
    .expect("mapping guest memory")
}

/// Where a segment's buffer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The next free bytes of the first region.
    Next,
    /// Across the boundary of the two contiguous regions (valid memory).
    Boundary,
    /// At the start of the region after the hole (valid memory).
    AfterHole,
    /// On the same bytes as the first readable segment (valid, but aliased).
    OverRequest,
    /// In the hole between the regions: not guest memory.
    Hole,
    /// Running past the end of the last region.
    PastEnd,
}

impl Place {
    pub fn from_index(i: u8) -> Self {
        match i % 8 {
            1 => Self::Boundary,
            2 => Self::AfterHole,
            3 => Self::OverRequest,
            4 => Self::Hole,
            5 => Self::PastEnd,
            _ => Self::Next,
        }
    }

    pub fn index(self) -> u8 {
        match self {
            Self::Next => 0,
            Self::Boundary => 1,
            Self::AfterHole => 2,
            Self::OverRequest => 3,
            Self::Hole => 4,
            Self::PastEnd => 5,
        }
    }

    pub fn is_memory(self) -> bool {
        !matches!(self, Self::Hole | Self::PastEnd)
    }
}

#[derive(Clone, Debug)]
pub struct Seg {
    pub writable: bool,
    pub len: u32,
    pub place: Place,
}

#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub segs: Vec<Seg>,
    /// The chain sits in an indirect table.
    pub indirect: bool,
    /// The last descriptor points back at the first.
    pub looped: bool,
}

impl Layout {
    pub fn writable_len(&self) -> u64 {
        self.segs
            .iter()
            .filter(|s| s.writable)
            .map(|s| u64::from(s.len))
            .sum()
    }

    fn readable_len(&self) -> u64 {
        self.segs
            .iter()
            .filter(|s| !s.writable)
            .map(|s| u64::from(s.len))
            .sum()
    }

    /// A chain a correct driver could send: every buffer is guest memory, readable before
    /// writable, room for a request header and a reply header. Such a chain must get a reply.
    pub fn well_formed(&self, request_len: usize) -> bool {
        let ordered = self
            .segs
            .windows(2)
            .all(|w| !w[0].writable || w[1].writable);
        ordered
            && !self.looped
            && self.segs.iter().all(|s| s.place.is_memory())
            && self.readable_len() >= request_len as u64
            && self.readable_len() >= 40
            && self.writable_len() >= std::mem::size_of::<OutHeader>() as u64
    }
}

/// The chain as the device sees it: its descriptors in iteration order, (writable, address,
/// length). A looped chain repeats descriptors until virtio-queue's limit, so this is the
/// ground truth for "the writable bytes" rather than the layout.
pub struct Built {
    descs: Vec<(bool, u64, u32)>,
}

impl Built {
    pub fn writable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.0)
            .map(|d| u64::from(d.2))
            .sum()
    }

    /// Whether a writable buffer shares bytes with a readable one (then the writable buffer's
    /// initial content is not the fill pattern).
    pub fn aliased(&self) -> bool {
        let end = |d: &(bool, u64, u32)| d.1.saturating_add(u64::from(d.2));
        self.descs.iter().filter(|w| w.0).any(|w| {
            self.descs
                .iter()
                .filter(|r| !r.0)
                .any(|r| w.1 < end(r) && r.1 < end(w))
        })
    }

    /// Whether two writable descriptors share bytes (a looped chain repeats one): a reply
    /// written into them is overwritten by itself, and its bytes cannot be checked.
    pub fn writable_overlap(&self) -> bool {
        let end = |d: &(bool, u64, u32)| d.1.saturating_add(u64::from(d.2));
        let w: Vec<_> = self.descs.iter().filter(|d| d.0 && d.2 > 0).collect();
        w.iter()
            .enumerate()
            .any(|(i, a)| w[i + 1..].iter().any(|b| a.1 < end(b) && b.1 < end(a)))
    }

    /// The first `n` bytes of the readable stream as the device will see it (the request
    /// header, for n = 40), if they are all guest memory.
    pub fn readable_prefix(&self, mem: &GuestMemoryMmap, n: usize) -> Option<Vec<u8>> {
        self.stream(mem, false, n).ok()
    }

    /// The first `used` bytes the device wrote, gathered from the writable descriptors in
    /// chain order. Err if they would have to come from outside guest memory.
    pub fn gather(&self, mem: &GuestMemoryMmap, used: u32) -> Result<Vec<u8>, String> {
        self.stream(mem, true, used as usize)
    }

    fn stream(&self, mem: &GuestMemoryMmap, writable: bool, n: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(n);
        for &(w, addr, len) in &self.descs {
            if out.len() >= n {
                break;
            }
            if w != writable {
                continue;
            }
            let take = (n - out.len()).min(len as usize);
            let mut buf = vec![0u8; take];
            mem.read_slice(&mut buf, GuestAddress(addr))
                .map_err(|e| format!("bytes at {addr:#x}+{take} are not guest memory: {e}"))?;
            out.extend_from_slice(&buf);
        }
        if out.len() < n {
            return Err(format!("{n} bytes wanted, the chain has {}", out.len()));
        }
        Ok(out)
    }
}

/// Write `request` into the readable segments of `layout` (in order, truncated or zero-padded to
/// their lengths), fill the writable ones with a pattern, and publish the chain. Returns the chain
/// as the device would pop it, or None if virtio-queue refuses it.
pub fn build<'m>(
    mem: &'m GuestMemoryMmap,
    layout: &Layout,
    request: &[u8],
) -> (Built, Option<DescriptorChain<&'m GuestMemoryMmap>>) {
    let mut next = DATA;
    let mut first_readable = None;
    let mut addrs = Vec::with_capacity(layout.segs.len());
    let mut rest = request;
    for seg in &layout.segs {
        let len = u64::from(seg.len);
        let addr = match seg.place {
            Place::Next => {
                let a = next;
                next = (next + len + 7) & !7;
                if next > R0_END {
                    next = DATA;
                    DATA
                } else {
                    a
                }
            }
            Place::Boundary => R0_END - len / 2,
            Place::AfterHole => R2,
            Place::OverRequest => first_readable.unwrap_or(DATA),
            Place::Hole => HOLE,
            Place::PastEnd => R2_END - len / 2,
        };
        if !seg.writable {
            first_readable.get_or_insert(addr);
        }
        addrs.push(addr);
    }
    // Writable buffers first, so that one aliasing the request starts out holding it.
    for (seg, &addr) in layout.segs.iter().zip(&addrs) {
        if seg.writable {
            write_partial(mem, addr, &vec![0x5a; seg.len as usize]);
        }
    }
    for (seg, &addr) in layout.segs.iter().zip(&addrs) {
        if !seg.writable {
            let take = rest.len().min(seg.len as usize);
            let mut buf = rest[..take].to_vec();
            rest = &rest[take..];
            buf.resize(seg.len as usize, 0);
            write_partial(mem, addr, &buf);
        }
    }
    let n = layout.segs.len();
    let descs: Vec<RawDescriptor> = layout
        .segs
        .iter()
        .zip(&addrs)
        .enumerate()
        .map(|(i, (seg, &addr))| {
            let mut flags = if seg.writable { VRING_DESC_F_WRITE } else { 0 };
            let mut next = 0;
            if i + 1 < n {
                flags |= VRING_DESC_F_NEXT;
                next = i as u16 + 1;
            } else if layout.looped {
                flags |= VRING_DESC_F_NEXT;
            }
            RawDescriptor::from(Descriptor::new(addr, seg.len, flags, next))
        })
        .collect();
    if layout.indirect {
        write_descs(mem, INDIRECT_TABLE, &descs);
        let head = Descriptor::new(
            INDIRECT_TABLE,
            (descs.len() * 16) as u32,
            VRING_DESC_F_INDIRECT,
            0,
        );
        write_descs(mem, DESC_TABLE, &[RawDescriptor::from(head)]);
    } else {
        write_descs(mem, DESC_TABLE, &descs);
    }
    // One chain, head 0, in an avail ring that starts over for every request.
    mem.write_obj(0u16, GuestAddress(AVAIL_RING)).ok();
    mem.write_obj(1u16, GuestAddress(AVAIL_RING + 2)).ok();
    mem.write_obj(0u16, GuestAddress(AVAIL_RING + 4)).ok();
    let chain = pop(mem);
    let descs = chain
        .clone()
        .map(|c| {
            c.map(|d| (d.is_write_only(), d.addr().0, d.len()))
                .collect()
        })
        .unwrap_or_default();
    (Built { descs }, chain)
}

fn pop(mem: &GuestMemoryMmap) -> Option<DescriptorChain<&GuestMemoryMmap>> {
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_ready(true);
    // The iterator borrows the queue only to advance next_avail; the chain itself holds the
    // memory reference and the table address, so it outlives the queue.
    let chain = q.iter(mem).ok()?.next();
    chain
}

fn write_descs(mem: &GuestMemoryMmap, at: u64, descs: &[RawDescriptor]) {
    for (i, d) in descs.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(at + 16 * i as u64))
            .expect("descriptor tables are in guest memory");
    }
}

/// Write as much of `buf` as is guest memory.
fn write_partial(mem: &GuestMemoryMmap, addr: u64, buf: &[u8]) {
    if mem.write_slice(buf, GuestAddress(addr)).is_ok() {
        return;
    }
    for (i, b) in buf.iter().enumerate() {
        let _ = mem.write_obj(*b, GuestAddress(addr.wrapping_add(i as u64)));
    }
}
