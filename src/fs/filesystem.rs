//! The FUSE operations as fuse-backend-rs's `Server` calls them. Session-wide ones (INIT,
//! DESTROY, and the two answered ENOSYS) are served here; every other method calls the
//! inherent method of the same name in the module of its concern (`entries`, `open`, `file_io`,
//! `directories`, `attr`, `xattr`). Inherent methods take precedence over trait methods, so
//! these calls are not recursive (and rustc's `unconditional_recursion` lint would flag one
//! whose inherent twin went missing).

use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, Opcode, OpenOptions};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};
use log::info;

use super::{err, Passthrough};
use crate::protocol::note_error;

/// `r`, its error noted for the statistics (`protocol::errno`): the dispatcher then need not
/// read the reply back from guest memory to count it.
fn noted<T>(r: io::Result<T>) -> io::Result<T> {
    if let Err(e) = &r {
        note_error(e);
    }
    r
}

impl FileSystem for Passthrough {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut want = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::ATOMIC_O_TRUNC
            | FsOptions::AUTO_INVAL_DATA;
        if self.cfg.posix_locks {
            want |= FsOptions::POSIX_LOCKS;
        }
        if self.cfg.flock {
            want |= FsOptions::FLOCK_LOCKS;
        }
        if self.cfg.announce_submounts {
            want |= FsOptions::SUBMOUNTS;
        }
        if self.cfg.killpriv_v2 && !self.cfg.readonly {
            want |= FsOptions::HANDLE_KILLPRIV_V2;
        }
        if self.cfg.readdirplus {
            want |= FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO;
        }
        if self.cfg.writeback && !self.cfg.readonly {
            want |= FsOptions::WRITEBACK_CACHE;
        }
        if self.cfg.posix_acl {
            want |= FsOptions::POSIX_ACL | FsOptions::DONT_MASK;
            if !capable.contains(FsOptions::POSIX_ACL) {
                log::warn!("--posix-acl: the guest kernel does not support FUSE POSIX ACLs");
            }
        }
        // Never PERFILE_DAX: there is no DAX window.
        let enabled = capable & want;
        self.writeback.store(
            enabled.contains(FsOptions::WRITEBACK_CACHE),
            Ordering::Relaxed,
        );
        self.acl_negotiated.store(
            enabled.contains(FsOptions::POSIX_ACL | FsOptions::DONT_MASK),
            Ordering::Relaxed,
        );
        self.submounts
            .store(enabled.contains(FsOptions::SUBMOUNTS), Ordering::Relaxed);
        self.killpriv_v2.store(
            enabled.contains(FsOptions::HANDLE_KILLPRIV_V2),
            Ordering::Relaxed,
        );
        info!("guest connected; FUSE options {enabled:?}");
        Ok(want)
    }

    fn destroy(&self) {
        // The guest sends no RELEASE or FORGET for what it still held at unmount: drop it all
        // here, or unlinked files keep their space on the host (xfstests generic/103 and the
        // tests after it) and a later mount starts with a table full of stale nodes.
        let locks = self.drop_all_locks();
        let handles = self.handles.clear();
        let inodes = self.inodes.forget_all();
        self.inodes.settle_memory();
        info!(
            "guest unmounted the share (FUSE_DESTROY): dropped {inodes} inodes, {handles} open \
             handles and {locks} lock files it still held"
        );
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        noted(self.lookup(ctx, parent, name))
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        noted(self.getattr(ctx, inode, handle))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        noted(self.setattr(ctx, inode, attr, handle, valid))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        noted(self.readlink(ctx, inode))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        noted(self.symlink(ctx, linkname, parent, name))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        noted(self.mknod(ctx, parent, name, mode, rdev, umask))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        noted(self.mkdir(ctx, parent, name, mode, umask))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        noted(self.unlink(ctx, parent, name))
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        noted(self.rmdir(ctx, parent, name))
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        noted(self.rename(ctx, olddir, oldname, newdir, newname, flags))
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        noted(self.link(ctx, inode, newparent, newname))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        noted(self.open(ctx, inode, flags, fuse_flags))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        noted(self.create(ctx, parent, name, args))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        noted(self.read(ctx, inode, handle, w, size, offset, lock_owner, flags))
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        noted(self.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        ))
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        noted(self.flush(ctx, inode, handle, lock_owner))
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        noted(self.fsync(ctx, inode, datasync, handle))
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        noted(self.fallocate(ctx, inode, handle, mode, offset, length))
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        noted(self.release(ctx, inode, flags, handle, flush, flock_release, lock_owner))
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        noted(self.statfs(ctx, inode))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        noted(self.setxattr(ctx, inode, name, value, flags))
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        noted(self.getxattr(ctx, inode, name, size))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        noted(self.listxattr(ctx, inode, size))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        noted(self.removexattr(ctx, inode, name))
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        noted(self.opendir(ctx, inode, flags))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        noted(self.readdir(ctx, inode, handle, size, offset, add_entry))
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        noted(self.readdirplus(ctx, inode, handle, size, offset, add_entry))
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        noted(self.fsyncdir(ctx, inode, datasync, handle))
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        noted(self.releasedir(ctx, inode, flags, handle))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        noted(self.access(ctx, inode, mask))
    }

    fn bmap(&self, _ctx: &Context, _inode: u64, _block: u64, _blocksize: u32) -> io::Result<u64> {
        // Block mapping is for fuseblk filesystems; a virtiofs guest never needs it.
        self.note_unsupported(Opcode::Bmap as u32);
        Err(err(libc::ENOSYS))
    }

    fn poll(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _khandle: u64,
        _flags: u32,
        _events: u32,
    ) -> io::Result<u32> {
        // Regular files are always ready; ENOSYS tells the guest so once and for all.
        self.note_unsupported(Opcode::Poll as u32);
        Err(err(libc::ENOSYS))
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        noted(self.lseek(ctx, inode, handle, offset, whence))
    }
}
