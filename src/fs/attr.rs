//! Attributes: GETATTR, SETATTR, ACCESS (and the permission check behind it), STATFS, and the
//! inode-attribute ioctls.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64};
use fuse_backend_rs::api::filesystem::{Context, SetattrValid};

use super::handles::HandleData;
use super::inodes::InodeData;
use super::{err, Passthrough};
use crate::sys::{self, Stat};

/// A FUSE time update as the host's utimensat wants it.
fn time_spec(set: bool, now: bool, sec: i64, nsec: i64) -> libc::timespec {
    let (tv_sec, tv_nsec) = if now {
        (0, libc::UTIME_NOW)
    } else if set {
        (sec, nsec)
    } else {
        (0, libc::UTIME_OMIT)
    };
    libc::timespec { tv_sec, tv_nsec }
}

impl Passthrough {
    /// Whether the guest left clearing setuid/setgid bits to us (`--killpriv-v2`, negotiated).
    pub(super) fn killpriv(&self) -> bool {
        self.killpriv_v2.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What a local filesystem does when a file is written or truncated by someone without
    /// CAP_FSETID: drop setuid, setgid (when the group may execute: otherwise it marks mandatory
    /// locking) and file capabilities. The guest asks for it (FUSE_WRITE_KILL_SUIDGID, ...)
    /// under killpriv_v2, because the daemon's own writes, with CAP_FSETID, would not.
    pub(super) fn kill_suidgid(&self, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        let st = sys::stat_fd(fd)?;
        let mut mode = st.st_mode & 0o7777;
        mode &= !libc::S_ISUID;
        if st.st_mode & libc::S_IXGRP != 0 {
            mode &= !libc::S_ISGID;
        }
        if mode != st.st_mode & 0o7777 {
            sys::fchmod(fd, mode)?;
        }
        match sys::removexattr(&sys::proc_fd_path(fd.as_raw_fd()), c"security.capability") {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Apply the parts of `attr` selected by `valid`, through the open handle when the guest
    /// gave one (so that, as on a local disk, an fd opened for writing can still truncate a
    /// file whose mode no longer allows writing).
    pub(super) fn apply_setattr(
        &self,
        inode: &InodeData,
        h: Option<&HandleData>,
        attr: &stat64,
        valid: SetattrValid,
    ) -> io::Result<()> {
        let ifd = inode.fd()?;
        let proc_name = sys::fd_name(ifd.as_raw_fd());
        if valid.contains(SetattrValid::MODE) {
            match h {
                Some(h) => sys::fchmod(h.fd(), attr.st_mode & 0o7777)?,
                None => {
                    sys::fchmodat(self.proc_self_fd.as_fd(), &proc_name, attr.st_mode & 0o7777)?
                }
            }
        }
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            // The guest names its own ids; -1 (u32::MAX) leaves one unchanged. A guest id the
            // translation forbids cannot own anything.
            let uid = if valid.contains(SetattrValid::UID) {
                self.cfg
                    .uid_map
                    .to_host(attr.st_uid)
                    .ok_or_else(|| err(libc::EPERM))?
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                self.cfg
                    .gid_map
                    .to_host(attr.st_gid)
                    .ok_or_else(|| err(libc::EPERM))?
            } else {
                u32::MAX
            };
            sys::fchownat(
                inode.fd()?.as_fd(),
                sys::EMPTY,
                uid,
                gid,
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        if valid.contains(SetattrValid::SIZE) {
            let size = u64::try_from(attr.st_size).map_err(|_| err(libc::EINVAL))?;
            let kill = valid.contains(SetattrValid::KILL_SUIDGID) && self.killpriv();
            match h {
                Some(h) => {
                    sys::ftruncate(h.fd(), size)?;
                    if kill {
                        self.kill_suidgid(h.fd())?;
                    }
                }
                None if inode.is_dir() => return Err(err(libc::EISDIR)),
                None if !inode.is_reg() => return Err(err(libc::EINVAL)),
                None => {
                    let f = inode.open(self.proc_self_fd.as_fd(), libc::O_WRONLY)?;
                    sys::ftruncate(f.as_fd(), size)?;
                    if kill {
                        self.kill_suidgid(f.as_fd())?;
                    }
                }
            }
        }
        let set_atime = valid.intersects(SetattrValid::ATIME | SetattrValid::ATIME_NOW);
        let set_mtime = valid.intersects(SetattrValid::MTIME | SetattrValid::MTIME_NOW);
        if set_atime || set_mtime {
            let times = [
                time_spec(
                    valid.contains(SetattrValid::ATIME),
                    valid.contains(SetattrValid::ATIME_NOW),
                    attr.st_atime,
                    attr.st_atime_nsec,
                ),
                time_spec(
                    valid.contains(SetattrValid::MTIME),
                    valid.contains(SetattrValid::MTIME_NOW),
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                ),
            ];
            match h {
                Some(h) => sys::futimens(h.fd(), &times)?,
                None => sys::utimensat(self.proc_self_fd.as_fd(), &proc_name, &times, 0)?,
            }
        }
        Ok(())
    }

    pub(super) fn stat_inode(&self, inode: &InodeData, handle: Option<u64>) -> io::Result<Stat> {
        let st = match handle {
            Some(fh) => {
                let h = self.handles.get(fh, inode.id)?;
                sys::stat_fd(h.fd())?
            }
            None => sys::stat_fd(inode.fd()?.as_fd())?,
        };
        inode.note_owner(st.st_uid);
        Ok(st)
    }

    /// FUSE_IOCTL for the inode-attribute ioctls (see [`sys::inode_ioctl`]); `arg` holds the
    /// argument in and, for the getters, the result out.
    pub fn inode_ioctl(&self, inode: u64, handle: u64, cmd: u32, arg: &mut [u8]) -> io::Result<()> {
        let (_, _, getter) = sys::inode_ioctl(cmd).ok_or_else(|| err(libc::ENOTTY))?;
        if !getter {
            self.check_writable()?;
        }
        let h = self.handles.get(handle, inode)?;
        sys::run_inode_ioctl(h.fd(), cmd, arg)
    }

    pub(super) fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let inode = self.inodes.get(inode)?;
        let st = self.stat_inode(&inode, handle)?;
        Ok((self.guest_attr(st), self.cfg.cache.timeout()))
    }

    pub(super) fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.check_writable()?;
        let inode = self.inodes.get(inode)?;
        let h = match handle {
            Some(fh) => Some(self.handles.get(fh, inode.id)?),
            None => None,
        };
        self.apply_setattr(&inode, h.as_deref(), &attr, valid)?;
        let st = self.stat_inode(&inode, None)?;
        Ok((self.guest_attr(st), self.cfg.cache.timeout()))
    }

    pub(super) fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let inode = self.inodes.get(inode)?;
        sys::fstatvfs(inode.fd()?.as_fd())
    }

    pub(super) fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let inode = self.inodes.get(inode)?;
        let st = self.stat_inode(&inode, None)?;
        if mask & libc::W_OK as u32 != 0 && self.cfg.readonly {
            return Err(err(libc::EROFS));
        }
        check_access(&self.guest_attr(st), ctx.uid, ctx.gid, mask)
    }
}

/// access(2) semantics for `uid`/`gid` against `st`. The guest kernel normally checks
/// permissions itself (virtiofs mounts use default_permissions); this answers FUSE_ACCESS for
/// guests that ask anyway.
pub fn check_access(st: &Stat, uid: u32, gid: u32, mask: u32) -> io::Result<()> {
    let mask = mask & 0o7;
    if mask == 0 {
        return Ok(()); // F_OK: the inode exists.
    }
    let mode = st.st_mode;
    if uid == 0 {
        // Root may read and write anything; execute needs some execute bit (or a directory).
        let any_x = mode & 0o111 != 0 || mode & libc::S_IFMT == libc::S_IFDIR;
        return if mask & libc::X_OK as u32 != 0 && !any_x {
            Err(err(libc::EACCES))
        } else {
            Ok(())
        };
    }
    let granted = if st.st_uid == uid {
        (mode >> 6) & 0o7
    } else if st.st_gid == gid {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    };
    if mask & !granted == 0 {
        Ok(())
    } else {
        Err(err(libc::EACCES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mode: u32, uid: u32, gid: u32) -> Stat {
        // SAFETY-free: a zeroed stat64 is a valid value.
        let mut st: Stat = unsafe { std::mem::zeroed() };
        st.st_mode = mode;
        st.st_uid = uid;
        st.st_gid = gid;
        st
    }

    #[test]
    fn owner_group_other_bits() {
        let f = st(libc::S_IFREG | 0o640, 1000, 100);
        assert!(check_access(&f, 1000, 1, libc::R_OK as u32 | libc::W_OK as u32).is_ok());
        assert!(check_access(&f, 1001, 100, libc::R_OK as u32).is_ok());
        assert!(check_access(&f, 1001, 100, libc::W_OK as u32).is_err());
        assert!(check_access(&f, 1002, 1, libc::R_OK as u32).is_err());
        assert!(check_access(&f, 1002, 1, libc::F_OK as u32).is_ok());
    }

    #[test]
    fn root_needs_an_execute_bit_to_execute() {
        assert!(check_access(&st(libc::S_IFREG | 0o600, 5, 5), 0, 0, libc::X_OK as u32).is_err());
        assert!(check_access(&st(libc::S_IFREG | 0o100, 5, 5), 0, 0, libc::X_OK as u32).is_ok());
        assert!(check_access(&st(libc::S_IFDIR, 5, 5), 0, 0, libc::X_OK as u32).is_ok());
    }

    #[test]
    fn time_specs() {
        assert_eq!(time_spec(false, false, 1, 2).tv_nsec, libc::UTIME_OMIT);
        assert_eq!(time_spec(true, true, 1, 2).tv_nsec, libc::UTIME_NOW);
        let t = time_spec(true, false, 7, 9);
        assert_eq!((t.tv_sec, t.tv_nsec), (7, 9));
    }
}
