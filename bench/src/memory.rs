//! "Guest memory": one memfd, mapped here and handed to the daemon, plus an allocator for the
//! vrings and request buffers laid out in it.
//!
//! Guest physical addresses (GPAs) start at a configurable base. All accesses go through
//! vm-memory, which bounds-checks them; the daemon writes into the same pages concurrently.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::bytes::AtomicAccess;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemory as _, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::error::{Error, Result};

/// Page size the driver lays data out in (the guest's PAGE_SIZE).
pub const PAGE_SIZE: u64 = 4096;

/// Shared memory region standing in for guest RAM.
pub struct GuestMemory {
    mem: GuestMemoryMmap,
    base: u64,
    size: u64,
    alloc: Mutex<Allocator>,
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("base", &self.base)
            .field("size", &self.size)
            .finish()
    }
}

impl GuestMemory {
    /// Creates a memfd of `size` bytes (a multiple of 4 KiB) mapped at guest address `base`.
    pub fn new(size: u64, base: u64) -> Result<Arc<Self>> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !base.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Config(format!(
                "guest memory size {size} and base {base:#x} must be non-zero multiples of 4 KiB"
            )));
        }
        if base.checked_add(size).is_none() {
            return Err(Error::Config("guest memory base + size overflows".into()));
        }
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let fd =
            unsafe { libc::memfd_create(c"vufsd-bench-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last_os("memfd_create"));
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)
            .map_err(|e| Error::io("ftruncate guest memory", e))?;
        let len = usize::try_from(size).map_err(|_| Error::Config("memory too large".into()))?;
        let region =
            GuestRegionMmap::from_range(GuestAddress(base), len, Some(FileOffset::new(file, 0)))
                .map_err(|e| {
                    Error::io("mmap guest memory", std::io::Error::other(e.to_string()))
                })?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| Error::io("guest memory layout", std::io::Error::other(e.to_string())))?;
        Ok(Arc::new(GuestMemory {
            mem,
            base,
            size,
            alloc: Mutex::new(Allocator::new(size)),
        }))
    }

    /// First guest physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True if `[gpa, gpa + len)` lies inside guest memory.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.base
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.size)
    }

    fn region(&self) -> Result<&GuestRegionMmap> {
        self.mem
            .iter()
            .next()
            .ok_or_else(|| Error::Config("guest memory has no region".into()))
    }

    /// The region description sent in SET_MEM_TABLE / ADD_MEM_REG (fd, GPA, our VA).
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo> {
        VhostUserMemoryRegionInfo::from_guest_region(self.region()?).map_err(|e| Error::VhostUser {
            what: "memory region".into(),
            source: e,
        })
    }

    /// The memfd backing guest memory.
    pub fn fd(&self) -> Result<RawFd> {
        let region = self.region()?;
        region
            .file_offset()
            .map(|f| f.file().as_raw_fd())
            .ok_or_else(|| Error::Config("guest memory has no backing file".into()))
    }

    /// Our (the "VMM's") virtual address of `gpa`: what SET_VRING_ADDR carries.
    pub fn user_addr(&self, gpa: u64) -> Result<u64> {
        if !self.contains(gpa, 1) {
            return Err(Error::Config(format!("{gpa:#x} is outside guest memory")));
        }
        let region = self.region()?;
        Ok(region.as_ptr() as u64 + (gpa - self.base))
    }

    /// Copies `data` to guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| Error::Config(format!("write {} bytes at {gpa:#x}: {e}", data.len())))
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| Error::Config(format!("read {} bytes at {gpa:#x}: {e}", buf.len())))
    }

    /// Fills `[gpa, gpa + len)` with `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) -> Result<()> {
        let chunk = vec![byte; len.min(64 * 1024)];
        let mut done = 0;
        while done < len {
            let n = chunk.len().min(len - done);
            self.write(gpa + done as u64, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    /// Atomic load of a naturally aligned integer (ring indexes shared with the daemon).
    pub fn load<T: AtomicAccess>(&self, gpa: u64, order: Ordering) -> Result<T> {
        self.mem
            .load(GuestAddress(gpa), order)
            .map_err(|e| Error::Config(format!("atomic load at {gpa:#x}: {e}")))
    }

    /// Atomic store of a naturally aligned integer.
    pub fn store<T: AtomicAccess>(&self, val: T, gpa: u64, order: Ordering) -> Result<()> {
        self.mem
            .store(val, GuestAddress(gpa), order)
            .map_err(|e| Error::Config(format!("atomic store at {gpa:#x}: {e}")))
    }

    /// Allocates `len` bytes aligned to `align` (a power of two), or `None` if memory is full.
    pub fn alloc(self: &Arc<Self>, len: u64, align: u64) -> Option<GuestBuf> {
        let len = len.max(1);
        let off = self.alloc.lock().ok()?.alloc(len, align.max(1))?;
        Some(GuestBuf {
            mem: Arc::clone(self),
            gpa: self.base + off,
            len,
        })
    }

    /// Bytes currently free for allocation.
    pub fn free_bytes(&self) -> u64 {
        self.alloc.lock().map(|a| a.free_bytes()).unwrap_or(0)
    }

    fn release(&self, gpa: u64, len: u64) {
        if let Ok(mut a) = self.alloc.lock() {
            a.free(gpa - self.base, len);
        }
    }
}

/// An allocation in guest memory, returned to the allocator on drop.
#[derive(Debug)]
pub struct GuestBuf {
    mem: Arc<GuestMemory>,
    gpa: u64,
    len: u64,
}

impl GuestBuf {
    /// Guest physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if zero-length (never, allocations are at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory this buffer lives in.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Writes `data` at `offset` inside the buffer.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        self.mem.write(self.gpa + offset, data)
    }

    /// Reads `buf.len()` bytes from `offset` inside the buffer.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.mem.read(self.gpa + offset, buf)
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_some_and(|end| end <= self.len) {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "access [{offset}, +{len}) outside a {}-byte guest buffer",
                self.len
            )))
        }
    }
}

impl Drop for GuestBuf {
    fn drop(&mut self) {
        self.mem.release(self.gpa, self.len);
    }
}

/// First-fit allocator over `[0, size)` with coalescing free ranges.
struct Allocator {
    /// start -> length of each free range; ranges never touch (they are merged).
    free: BTreeMap<u64, u64>,
}

impl Allocator {
    fn new(size: u64) -> Self {
        let mut free = BTreeMap::new();
        free.insert(0, size);
        Allocator { free }
    }

    fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let mask = align.checked_next_power_of_two()? - 1;
        let (start, flen, at) = self.free.iter().find_map(|(&start, &flen)| {
            let at = start.checked_add(mask)? & !mask;
            let end = at.checked_add(len)?;
            (end <= start + flen).then_some((start, flen, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        let tail = start + flen - (at + len);
        if tail > 0 {
            self.free.insert(at + len, tail);
        }
        Some(at)
    }

    fn free(&mut self, mut start: u64, mut len: u64) {
        if let Some((&prev, &plen)) = self.free.range(..start).next_back() {
            if prev + plen == start {
                self.free.remove(&prev);
                start = prev;
                len += plen;
            }
        }
        if let Some(&nlen) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += nlen;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_splits_and_coalesces() {
        let mut a = Allocator::new(1 << 20);
        let x = a.alloc(100, 64).unwrap();
        let y = a.alloc(4096, 4096).unwrap();
        assert_eq!(x, 0);
        assert_eq!(y, 4096);
        a.free(x, 100);
        a.free(y, 4096);
        assert_eq!(a.free.len(), 1);
        assert_eq!(a.free_bytes(), 1 << 20);
        assert!(a.alloc(2 << 20, 1).is_none());
    }

    #[test]
    fn guest_memory_roundtrip() {
        let m = GuestMemory::new(1 << 20, 0x10000).unwrap();
        let b = m.alloc(8192, 4096).unwrap();
        b.write_at(10, b"hello").unwrap();
        let mut out = [0u8; 5];
        b.read_at(10, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        assert!(b.write_at(8190, b"xyz").is_err());
        m.store(7u16, b.gpa(), Ordering::Release).unwrap();
        assert_eq!(m.load::<u16>(b.gpa(), Ordering::Acquire).unwrap(), 7);
        assert!(m.region_info().unwrap().mmap_handle >= 0);
        drop(b);
        assert_eq!(m.free_bytes(), 1 << 20);
    }
}
