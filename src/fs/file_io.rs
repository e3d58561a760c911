//! Moving data: READ and WRITE straight between host files and guest memory, FLUSH, FSYNC,
//! SYNCFS, FALLOCATE, LSEEK and COPY_FILE_RANGE on open handles.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use fuse_backend_rs::api::filesystem::{Context, ZeroCopyReader, ZeroCopyWriter};
use log::debug;

use super::handles::HandleData;
use super::{err, Passthrough};
use crate::sys;

/// Move `size` bytes at `offset` between a host file and the guest, one `step(count, offset)`
/// (a preadv/pwritev straight to or from guest memory) at a time, until done or the file ends:
/// a step that moves 0 bytes, or moves less than asked when `short_is_end()` says that only
/// happens at the end (read_ends.rs). An error after some bytes moved ends the transfer
/// short, as read(2) and write(2) do.
fn transfer(
    size: u32,
    offset: u64,
    short_is_end: impl Fn() -> bool,
    mut step: impl FnMut(usize, u64) -> io::Result<usize>,
) -> io::Result<usize> {
    let size = size as usize;
    let mut done = 0usize;
    while done < size {
        let off = offset.checked_add(done as u64).ok_or(err(libc::EINVAL))?;
        let want = size - done;
        match step(want, off) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if n < want && short_is_end() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if done > 0 => {
                debug!("short transfer at offset {off}: {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Passthrough {
    /// Follow a guest-side flag change of O_NOATIME on an open handle (FUSE read/write carry
    /// the file's current flags). Only a handle the policy allowed may gain the flag back.
    fn follow_noatime(&self, h: &HandleData, guest_flags: u32) {
        let want = guest_flags as i32 & libc::O_NOATIME != 0 && h.noatime_allowed;
        if want == h.noatime_on.load(Ordering::Relaxed) {
            return;
        }
        let result = sys::get_fl(h.fd()).and_then(|fl| {
            let fl = if want {
                fl | libc::O_NOATIME
            } else {
                fl & !libc::O_NOATIME
            };
            sys::set_fl(h.fd(), fl)
        });
        match result {
            Ok(()) => h.noatime_on.store(want, Ordering::Relaxed),
            // Not fatal: the flag only affects atime, and the read itself must not fail for it.
            Err(e) => debug!("node {}: could not change O_NOATIME: {e}", h.inode),
        }
    }

    /// FUSE_COPY_FILE_RANGE.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        inode_in: u64,
        fh_in: u64,
        off_in: u64,
        inode_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    ) -> io::Result<usize> {
        self.check_writable()?;
        if flags != 0 {
            return Err(err(libc::EINVAL));
        }
        let hin = self.handles.get(fh_in, inode_in)?;
        let hout = self.handles.get(fh_out, inode_out)?;
        // The reply carries a u32 byte count.
        let len = len.min(u64::from(u32::MAX) & !0xfff) as usize;
        sys::copy_file_range(hin.fd(), off_in, hout.fd(), off_out, len, 0)
    }

    /// FUSE_SYNCFS.
    pub fn syncfs(&self, inode: u64) -> io::Result<()> {
        let inode = self.inodes.get(inode)?;
        let f = inode.open(
            self.proc_self_fd.as_fd(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        sys::syncfs(f.as_fd())
    }

    // FileSystem::read's signature.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let h = self.handles.get(handle, inode)?;
        self.follow_noatime(&h, flags);
        let mut io = sys::HostIo(h.fd());
        let short_is_end = || self.read_ends.short_read_is_end(h.dev, h.fd());
        transfer(size, offset, short_is_end, |count, off| {
            w.write_from(&mut io, count, off)
        })
        .inspect_err(|e| self.faults.note("read", inode, e))
    }

    // FileSystem::write's signature.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.check_writable()?;
        let h = self.handles.get(handle, inode)?;
        self.follow_noatime(&h, flags);
        if fuse_flags & fuse_backend_rs::abi::fuse_abi::WRITE_KILL_PRIV != 0 && self.killpriv() {
            self.kill_suidgid(h.fd())?;
        }
        let mut io = sys::HostIo(h.fd());
        // A short write is retried for the rest: the next one reports why (ENOSPC, EFBIG).
        transfer(
            size,
            offset,
            || false,
            |count, off| r.read_to(&mut io, count, off),
        )
        .inspect_err(|e| self.faults.note("write", inode, e))
    }

    pub(super) fn flush(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        lock_owner: u64,
    ) -> io::Result<()> {
        // Nothing is buffered in the daemon. A close releases the closing owner's POSIX locks.
        self.handles.get(handle, inode)?;
        self.release_owner_locks(inode, lock_owner);
        Ok(())
    }

    pub(super) fn fsync(
        &self,
        _ctx: &Context,
        inode: u64,
        datasync: bool,
        handle: u64,
    ) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        sys::fsync(h.fd(), datasync).inspect_err(|e| self.faults.note("fsync", inode, e))
    }

    pub(super) fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        let h = self.handles.get(handle, inode)?;
        sys::fallocate(h.fd(), mode as i32, offset, length)
    }

    pub(super) fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let h = self.handles.get(handle, inode)?;
        let whence = whence as i32;
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(err(libc::EINVAL));
        }
        let offset = i64::try_from(offset).map_err(|_| err(libc::ENXIO))?;
        sys::lseek(h.fd(), offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A file of `len` bytes whose steps move at most `chunk` bytes; records the calls.
    fn file(
        len: u64,
        chunk: usize,
        calls: &RefCell<Vec<u64>>,
    ) -> impl FnMut(usize, u64) -> io::Result<usize> + '_ {
        move |count, off| {
            calls.borrow_mut().push(off);
            Ok(count.min(chunk).min(len.saturating_sub(off) as usize))
        }
    }

    #[test]
    fn a_short_read_ends_the_transfer_only_where_that_means_the_end() {
        let calls = RefCell::new(Vec::new());
        // A 3 KiB file read with 128 KiB: one call on local storage...
        assert_eq!(
            transfer(131072, 0, || true, file(3072, usize::MAX, &calls)).unwrap(),
            3072
        );
        assert_eq!(*calls.borrow(), [0]);
        // ...and a second, that gets 0, elsewhere.
        calls.borrow_mut().clear();
        assert_eq!(
            transfer(131072, 0, || false, file(3072, usize::MAX, &calls)).unwrap(),
            3072
        );
        assert_eq!(*calls.borrow(), [0, 3072]);
        // A filesystem that returns 1 KiB at a time mid-file is read to the end.
        calls.borrow_mut().clear();
        assert_eq!(
            transfer(4096, 0, || false, file(3072, 1024, &calls)).unwrap(),
            3072
        );
        assert_eq!(*calls.borrow(), [0, 1024, 2048, 3072]);
        // A full read asks nothing more.
        calls.borrow_mut().clear();
        assert_eq!(
            transfer(2048, 1024, || false, file(3072, usize::MAX, &calls)).unwrap(),
            2048
        );
        assert_eq!(*calls.borrow(), [1024]);
    }

    #[test]
    fn an_error_after_some_bytes_ends_short_and_before_any_is_returned() {
        let mut first = true;
        let step = |count: usize, _| {
            if std::mem::take(&mut first) {
                Ok(count / 2)
            } else {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        };
        assert_eq!(transfer(4096, 0, || false, step).unwrap(), 2048);
        let fail = |_, _| Err(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(
            transfer(4096, 0, || false, fail)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOSPC)
        );
    }
}
