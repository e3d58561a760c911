//! POSIX record locks and flock(2) for the guest.
//!
//! POSIX locks belong to a lock owner (a guest process's file table), not to an open file, and
//! they conflict between owners even when the owners share one open file (after fork). Host OFD
//! locks belong to an open file description. So each (inode, owner) pair gets its own host
//! open file, and the owner's locks are OFD locks on it: owners map to descriptions one to one.
//! The file is dropped when the owner flushes (closes) the file, which releases its locks, as
//! POSIX says a close does.
//!
//! flock(2) locks belong to an open file, which is exactly a FUSE handle: they are applied to
//! the handle's own host fd.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use fuse_backend_rs::abi::fuse_abi::FileLock;
use log::debug;

use super::handles::HandleData;
use super::idhash::IdMap;
use super::inodes::InodeData;
use super::{err, Passthrough};
use crate::sys;

/// FUSE's "to the end of the file".
const OFFSET_MAX: u64 = i64::MAX as u64;

/// Open files holding the POSIX locks of each (node id, lock owner).
#[derive(Default)]
pub struct LockTable {
    files: Mutex<IdMap<(u64, u64), LockFile>>,
}

/// One owner's host open file, and the guest handles it locked through.
struct LockFile {
    fd: Arc<OwnedFd>,
    /// An OFD lock's owner is the guest's open file, and no unlock comes when that file is
    /// closed (the FLUSH at close names the closing process's file table), so the lock file
    /// goes when one of these handles is released. A POSIX owner has always flushed by then:
    /// a RELEASE means every process closed the file, and each close flushes its own locks.
    handles: Vec<u64>,
}

/// FUSE lock range (inclusive end, OFFSET_MAX for "to EOF") to a host flock64.
fn to_flock(lock: &FileLock) -> io::Result<libc::flock64> {
    let l_type = match lock.type_ as i32 {
        libc::F_RDLCK => libc::F_RDLCK,
        libc::F_WRLCK => libc::F_WRLCK,
        libc::F_UNLCK => libc::F_UNLCK,
        _ => return Err(err(libc::EINVAL)),
    } as i16;
    if lock.start > OFFSET_MAX || lock.end < lock.start {
        return Err(err(libc::EINVAL));
    }
    let l_len = if lock.end >= OFFSET_MAX {
        0
    } else {
        (lock.end - lock.start + 1) as i64
    };
    Ok(libc::flock64 {
        l_type,
        l_whence: libc::SEEK_SET as i16,
        l_start: lock.start as i64,
        l_len,
        // OFD locks require 0 here.
        l_pid: 0,
    })
}

fn from_flock(fl: &libc::flock64) -> FileLock {
    let start = fl.l_start.max(0) as u64;
    let end = if fl.l_len == 0 {
        OFFSET_MAX
    } else {
        start.saturating_add(fl.l_len as u64 - 1)
    };
    FileLock {
        start,
        end,
        type_: fl.l_type as u32,
        // The holder of an OFD lock has no pid the guest could use.
        pid: 0,
    }
}

impl Passthrough {
    /// The open file holding `owner`'s locks on `inode`, created on first use.
    ///
    /// Regular files only. A guest kernel locks directories itself (FUSE has no lock operation
    /// for them), and a lock file kept for a directory could outlive every handle: the root is
    /// never forgotten, so a guest naming a new owner in each SETLK on it would make the daemon
    /// hold one more fd each time, for good (found by the fuzz harness).
    fn lock_file(
        &self,
        inode: &InodeData,
        (handle, h): (u64, &HandleData),
        owner: u64,
    ) -> io::Result<Arc<OwnedFd>> {
        if !inode.is_reg() {
            return Err(err(libc::EINVAL));
        }
        let mut files = self.locks.files.lock().map_err(|_| err(libc::ENOLCK))?;
        if let Some(f) = files.get_mut(&(inode.id, owner)) {
            if !f.handles.contains(&handle) {
                f.handles.push(handle);
            }
            return Ok(f.fd.clone());
        }
        // Read-write so that the owner can take both read and write locks on one description;
        // where the daemon may not write the file, the handle's own access mode will do. A
        // read-only share never opens a file for writing: there the description is read-only,
        // and a write lock gets the host's EBADF, as on a read-only mount (a guest kernel
        // refuses it itself: it needs a file open for writing).
        let proc_fd = self.proc_self_fd.as_fd();
        let fd = if self.cfg.readonly {
            inode.open(proc_fd, libc::O_RDONLY)?
        } else {
            match inode.open(proc_fd, libc::O_RDWR) {
                Ok(fd) => fd,
                Err(_) => {
                    let mode = sys::get_fl(h.fd())? & libc::O_ACCMODE;
                    inode.open(proc_fd, mode)?
                }
            }
        };
        let fd = Arc::new(fd);
        files.insert(
            (inode.id, owner),
            LockFile {
                fd: fd.clone(),
                handles: vec![handle],
            },
        );
        Ok(fd)
    }

    /// FUSE_GETLK: the first lock that would conflict with `lock`, or F_UNLCK.
    pub fn do_getlk(
        &self,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: &FileLock,
    ) -> io::Result<FileLock> {
        let h = self.handles.get(handle, inode)?;
        let inode = self.inodes.get(inode)?;
        let f = self.lock_file(&inode, (handle, &h), owner)?;
        let mut fl = to_flock(lock)?;
        sys::fcntl_lock(f.as_fd(), libc::F_OFD_GETLK, &mut fl)?;
        Ok(from_flock(&fl))
    }

    /// FUSE_SETLK / FUSE_SETLKW (`wait`), POSIX or flock(2) (`flock`).
    pub fn do_setlk(
        &self,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: &FileLock,
        flock: bool,
        wait: bool,
    ) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        if flock {
            let op = match lock.type_ as i32 {
                libc::F_RDLCK => libc::LOCK_SH,
                libc::F_WRLCK => libc::LOCK_EX,
                libc::F_UNLCK => libc::LOCK_UN,
                _ => return Err(err(libc::EINVAL)),
            };
            return sys::flock(h.fd(), if wait { op } else { op | libc::LOCK_NB });
        }
        let inode = self.inodes.get(inode)?;
        let f = self.lock_file(&inode, (handle, &h), owner)?;
        let mut fl = to_flock(lock)?;
        let cmd = if wait {
            libc::F_OFD_SETLKW
        } else {
            libc::F_OFD_SETLK
        };
        if wait {
            debug!("node {}: owner {owner:#x} waits for a lock", inode.id);
        }
        // The table's mutex is not held here: a waiting owner must not block the one that
        // will release its lock.
        sys::fcntl_lock(f.as_fd(), cmd, &mut fl)
    }

    /// The owner closed a file: drop its lock file, which releases its POSIX locks.
    pub(super) fn release_owner_locks(&self, inode: u64, owner: u64) {
        if let Ok(mut files) = self.locks.files.lock() {
            files.remove(&(inode, owner));
        }
    }

    /// The guest released a handle: drop the lock files of the owners that locked through it
    /// (see [`LockFile::handles`]).
    pub(super) fn release_handle_locks(&self, inode: u64, handle: u64) {
        if let Ok(mut files) = self.locks.files.lock() {
            files.retain(|(ino, _), f| *ino != inode || !f.handles.contains(&handle));
        }
    }

    /// How many host open files hold a lock for the guest now: the POSIX lock owners' files and
    /// the handles with a flock(2) lock. Locks live on open files, which cannot move to another
    /// daemon, so a migration has to know (see `migrate`).
    pub(super) fn files_holding_locks(&self) -> usize {
        let proc_fd = self.proc_self_fd.as_fd();
        let holds = |fd: std::os::fd::RawFd| sys::fd_holds_locks(proc_fd, fd).unwrap_or(false);
        let posix = self.locks.files.lock().map_or(0, |files| {
            files
                .values()
                .filter(|f| holds(std::os::fd::AsRawFd::as_raw_fd(&*f.fd)))
                .count()
        });
        let flock = self
            .handles
            .entries()
            .iter()
            .filter(|(_, h)| holds(std::os::fd::AsRawFd::as_raw_fd(&h.fd())))
            .count();
        posix + flock
    }

    /// A node is gone from the guest: no owner can hold locks on it any more.
    /// Drop every lock file (at the guest's unmount): their OFD locks go with them.
    pub(super) fn drop_all_locks(&self) -> usize {
        self.locks.files.lock().map_or(0, |mut files| {
            let n = files.len();
            files.clear();
            n
        })
    }

    pub(super) fn forget_locks(&self, inode: u64) {
        if let Ok(mut files) = self.locks.files.lock() {
            files.retain(|(ino, _), _| *ino != inode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lk(start: u64, end: u64, type_: i32) -> FileLock {
        FileLock {
            start,
            end,
            type_: type_ as u32,
            pid: 42,
        }
    }

    #[test]
    fn ranges_convert_both_ways() {
        let fl = to_flock(&lk(10, 19, libc::F_WRLCK)).unwrap();
        assert_eq!((fl.l_start, fl.l_len, fl.l_pid), (10, 10, 0));
        assert_eq!(from_flock(&fl).end, 19);
        let whole = to_flock(&lk(0, OFFSET_MAX, libc::F_RDLCK)).unwrap();
        assert_eq!(whole.l_len, 0);
        assert_eq!(from_flock(&whole).end, OFFSET_MAX);
        assert_eq!(to_flock(&lk(0, u64::MAX, libc::F_RDLCK)).unwrap().l_len, 0);
    }

    #[test]
    fn nonsense_is_einval() {
        assert!(to_flock(&lk(5, 4, libc::F_RDLCK)).is_err());
        assert!(to_flock(&lk(0, 1, 99)).is_err());
        assert!(to_flock(&lk(u64::MAX, u64::MAX, libc::F_RDLCK)).is_err());
    }
}
