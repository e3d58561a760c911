//! Names in directories: lookup and forget, making and removing nodes, renames and links.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{Context, Entry};

use super::inodes::{Found, InodeData, InodeKey, NameKey, ROOT_ID};
use super::{check_name, err, Passthrough};
use crate::sys::{self, Stat};

impl Passthrough {
    /// Look `name` up in `parent` and count a reference to it.
    pub(super) fn do_lookup(
        &self,
        parent: &Arc<InodeData>,
        name: &CStr,
    ) -> io::Result<(Arc<InodeData>, Stat)> {
        // ".." of the root is the root: the guest must not climb out of the share.
        let name = if parent.id == ROOT_ID && name.to_bytes() == b".." {
            c"."
        } else {
            name
        };
        let dir = parent.fd()?;
        let hint = NameKey::new(parent.id, name);
        if self.inodes.has_hint(&hint) {
            let st = sys::fstatat(dir.as_fd(), name, libc::AT_SYMLINK_NOFOLLOW)?;
            if let Some(inode) = self.inodes.add_ref_hinted(&hint, &st) {
                inode.note_location(parent, name);
                return Ok((inode, st));
            }
        }
        let fd = sys::openat(dir.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::stat_fd(fd.as_fd())?;
        let inode = self.inodes.add_ref(fd, &st, Some(Found { parent, name }))?;
        Ok((inode, st))
    }

    /// After a rename: the inode now at `name` in `dir` is reopened from there once evicted.
    fn moved_to(&self, dir: &Arc<InodeData>, dir_fd: BorrowedFd<'_>, name: &CStr) {
        if let Ok(st) = sys::fstatat(dir_fd, name, libc::AT_SYMLINK_NOFOLLOW) {
            if let Some(inode) = self.inodes.find(InodeKey::of(&st)) {
                inode.note_location(dir, name);
            }
        }
    }

    /// Create `name` in the directory `parent` as the caller — `make` does the host call,
    /// relative to the parent's fd — and answer with the entry for what it made.
    fn make_node(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        make: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
    ) -> io::Result<Entry> {
        check_name(name)?;
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        {
            let _as = self.as_caller(ctx)?;
            make(parent.fd()?.as_fd()).inspect_err(|e| self.note_failure(&parent, "create", e))?;
        }
        let (inode, st) = self.do_lookup(&parent, name)?;
        Ok(self.entry(&parent, &inode, st))
    }

    pub(super) fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        let parent = self.dir_inode(parent)?;
        let (inode, st) = self
            .do_lookup(&parent, name)
            .inspect_err(|e| self.note_failure(&parent, "lookup", e))?;
        Ok(self.entry(&parent, &inode, st))
    }

    /// Log what a failure in directory `parent` says about the host (see `faults`).
    pub(super) fn note_failure(&self, parent: &InodeData, what: &str, e: &io::Error) {
        self.faults.note(what, parent.id, e);
        if parent.id == ROOT_ID && e.raw_os_error() == Some(libc::ENOENT) {
            let gone = parent
                .fd()
                .and_then(|fd| sys::stat_fd(fd.as_fd()))
                .is_ok_and(|st| st.st_nlink == 0);
            if gone {
                self.faults.note_root_gone();
            }
        }
    }

    pub(super) fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        if self.inodes.forget(inode, count) {
            self.forget_locks(inode);
        }
    }

    pub(super) fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget(ctx, inode, count);
        }
    }

    pub(super) fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let inode = self.inodes.get(inode)?;
        if !inode.is_symlink() {
            return Err(err(libc::EINVAL));
        }
        sys::readlinkat(inode.fd()?.as_fd(), sys::EMPTY)
    }

    pub(super) fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.make_node(ctx, parent, name, |dir| sys::symlinkat(linkname, dir, name))
    }

    pub(super) fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.make_node(ctx, parent, name, |dir| {
            self.with_umask(umask, || sys::mknodat(dir, name, mode, u64::from(rdev)))
        })
    }

    pub(super) fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.make_node(ctx, parent, name, |dir| {
            self.with_umask(umask, || sys::mkdirat(dir, name, mode & 0o7777))
        })
    }

    pub(super) fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        check_name(name)?;
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        sys::unlinkat(parent.fd()?.as_fd(), name, 0)
    }

    pub(super) fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        check_name(name)?;
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        sys::unlinkat(parent.fd()?.as_fd(), name, libc::AT_REMOVEDIR)
    }

    pub(super) fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        check_name(oldname)?;
        check_name(newname)?;
        self.check_writable()?;
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !known != 0 {
            return Err(err(libc::EINVAL));
        }
        let old = self.dir_inode(olddir)?;
        let new = self.dir_inode(newdir)?;
        let (old_fd, new_fd) = (old.fd()?, new.fd()?);
        sys::renameat2(old_fd.as_fd(), oldname, new_fd.as_fd(), newname, flags)?;
        self.moved_to(&new, new_fd.as_fd(), newname);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.moved_to(&old, old_fd.as_fd(), oldname);
        }
        Ok(())
    }

    pub(super) fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        check_name(newname)?;
        self.check_writable()?;
        let inode = self.inodes.get(inode)?;
        let parent = self.dir_inode(newparent)?;
        // linkat(fd, "", AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; following the /proc magic
        // link names the same inode and works for an unprivileged daemon too.
        let ifd = inode.fd()?;
        let src = sys::fd_name(ifd.as_raw_fd());
        sys::linkat(
            self.proc_self_fd.as_fd(),
            &src,
            parent.fd()?.as_fd(),
            newname,
            libc::AT_SYMLINK_FOLLOW,
        )?;
        let st = sys::stat_fd(inode.fd()?.as_fd())?;
        self.inodes.add_ref_existing(&inode);
        Ok(self.entry(&parent, &inode, st))
    }
}
