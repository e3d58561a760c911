//! Extended attributes, reached through `/proc/self/fd/N` because the f*xattr calls refuse
//! O_PATH fds (as `N` relative to the working directory, which is `/proc/self/fd`: see
//! `sys::proc_fd_path`). The magic link resolves to the inode itself (a symlink stays a symlink:
//! it is not followed again), so these calls act on exactly the inode the guest named.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;

use fuse_backend_rs::abi::fuse_abi::Opcode;
use fuse_backend_rs::api::filesystem::{Context, GetxattrReply, ListxattrReply};

use super::{err, Passthrough};
use crate::sys;

/// Largest value/list the kernel allows (XATTR_SIZE_MAX / XATTR_LIST_MAX).
const XATTR_MAX: usize = 64 * 1024;

pub fn get(fd: BorrowedFd<'_>, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
    let path = sys::proc_fd_path(fd.as_raw_fd());
    if size == 0 {
        let n = sys::getxattr(&path, name, &mut [])?;
        return Ok(GetxattrReply::Count(n as u32));
    }
    let mut buf = Vec::new();
    sys::getxattr_into(&path, name, &mut buf, (size as usize).min(XATTR_MAX))?;
    Ok(GetxattrReply::Value(buf))
}

/// The whole list, for mapping: asked for its size first, then read (again if it grew).
fn list_all(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let path = sys::proc_fd_path(fd.as_raw_fd());
    loop {
        let n = sys::listxattr(&path, &mut [])?;
        let mut buf = vec![0u8; n.min(XATTR_MAX)];
        match sys::listxattr(&path, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && n < XATTR_MAX => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn list(fd: BorrowedFd<'_>, size: u32) -> io::Result<ListxattrReply> {
    let path = sys::proc_fd_path(fd.as_raw_fd());
    if size == 0 {
        let n = sys::listxattr(&path, &mut [])?;
        return Ok(ListxattrReply::Count(n as u32));
    }
    let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
    let n = sys::listxattr(&path, &mut buf)?;
    buf.truncate(n);
    Ok(ListxattrReply::Names(buf))
}

pub fn set(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
    if value.len() > XATTR_MAX {
        return Err(err(libc::E2BIG));
    }
    let flags = i32::try_from(flags).map_err(|_| err(libc::EINVAL))?;
    sys::setxattr(&sys::proc_fd_path(fd.as_raw_fd()), name, value, flags)
}

pub fn remove(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    sys::removexattr(&sys::proc_fd_path(fd.as_raw_fd()), name)
}

impl Passthrough {
    /// The host's name for a guest's xattr name (`--xattrmap`), or the errno refusing it.
    fn host_name<'a>(&self, name: &'a CStr) -> io::Result<std::borrow::Cow<'a, CStr>> {
        match &self.cfg.xattrmap {
            None => Ok(std::borrow::Cow::Borrowed(name)),
            Some(map) => map.to_host(name).map(std::borrow::Cow::Owned),
        }
    }

    fn xattr_enabled(&self, opcode: Opcode) -> io::Result<()> {
        if self.cfg.xattr || self.cfg.posix_acl {
            Ok(())
        } else {
            // ENOSYS makes the guest stop asking.
            self.note_unsupported(opcode as u32);
            Err(err(libc::ENOSYS))
        }
    }

    pub(super) fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.xattr_enabled(Opcode::Setxattr)?;
        self.check_writable()?;
        let inode = self.inodes.get(inode)?;
        let name = self.host_name(name)?;
        set(inode.fd()?.as_fd(), &name, value, flags)
    }

    /// Whether to accept FUSE_SETXATTR_EXT from the guest: only ACLs need it.
    pub fn wants_setxattr_ext(&self) -> bool {
        self.cfg.posix_acl
    }

    /// What INIT settled about FUSE_SETXATTR_EXT (the dispatcher negotiates it).
    pub fn set_setxattr_ext(&self, on: bool) {
        self.setxattr_ext.store(on, Ordering::Relaxed);
    }

    /// Whether SETXATTR requests carry the extended header.
    pub fn setxattr_ext(&self) -> bool {
        self.setxattr_ext.load(Ordering::Relaxed)
    }

    /// SETXATTR with the guest's FUSE_SETXATTR_ACL_KILL_SGID decision: the daemon sets the ACL
    /// with CAP_FSETID, so the host keeps the setgid bit, and it is cleared here when the
    /// guest says that its caller could not have kept it.
    pub fn setxattr_killing_sgid(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
        kill_sgid: bool,
    ) -> io::Result<()> {
        self.setxattr(ctx, inode, name, value, flags)?;
        if !kill_sgid {
            return Ok(());
        }
        let inode = self.inodes.get(inode)?;
        let fd = inode.fd()?;
        let st = sys::stat_fd(fd.as_fd())?;
        if st.st_mode & libc::S_ISGID != 0 {
            let proc_name = sys::fd_name(fd.as_raw_fd());
            sys::fchmodat(
                self.proc_self_fd.as_fd(),
                &proc_name,
                st.st_mode & 0o7777 & !libc::S_ISGID,
            )?;
        }
        Ok(())
    }

    pub(super) fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.xattr_enabled(Opcode::Getxattr)?;
        let inode = self.inodes.get(inode)?;
        let name = self.host_name(name)?;
        get(inode.fd()?.as_fd(), &name, size)
    }

    pub(super) fn listxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.xattr_enabled(Opcode::Listxattr)?;
        let inode = self.inodes.get(inode)?;
        let Some(map) = &self.cfg.xattrmap else {
            return list(inode.fd()?.as_fd(), size);
        };
        let names = map.list_to_guest(&list_all(inode.fd()?.as_fd())?);
        match size as usize {
            0 => Ok(ListxattrReply::Count(names.len() as u32)),
            room if room < names.len() => Err(err(libc::ERANGE)),
            _ => Ok(ListxattrReply::Names(names)),
        }
    }

    pub(super) fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.xattr_enabled(Opcode::Removexattr)?;
        self.check_writable()?;
        let inode = self.inodes.get(inode)?;
        let name = self.host_name(name)?;
        remove(inode.fd()?.as_fd(), &name)
    }
}
