//! Directories: OPENDIR, READDIR, READDIRPLUS (a lookup per entry), FSYNCDIR, RELEASEDIR.

use std::ffi::CString;
use std::io;

use fuse_backend_rs::abi::fuse_abi::OpenOptions;
use fuse_backend_rs::api::filesystem::{Context, DirEntry, Entry};

use super::{dir, err, CachePolicy, Passthrough};
use crate::sys;

impl Passthrough {
    fn do_readdir(
        &self,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        mut add: impl FnMut(&dir::RawDirEntry<'_>) -> io::Result<usize>,
    ) -> io::Result<()> {
        if size == 0 {
            return Ok(());
        }
        let h = self.handles.get(handle, inode)?;
        let mut stream = h.dir.lock().map_err(|_| err(libc::EBADF))?;
        stream.serve(
            offset,
            |off| {
                let off = i64::try_from(off).map_err(|_| err(libc::EINVAL))?;
                sys::lseek(h.fd(), off, libc::SEEK_SET).map(drop)
            },
            |buf| sys::getdents64_into(h.fd(), buf),
            |e| add(e),
        )
    }

    pub(super) fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let inode = self.dir_inode(inode)?;
        // Only O_NOATIME of the guest's flags matters for a directory we read with getdents.
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | (flags as i32 & libc::O_NOATIME);
        let handle = self.open_with_policy(&inode, flags)?;
        let fh = self.handles.insert(handle)?;
        let opts = if self.cfg.cache == CachePolicy::Always {
            OpenOptions::CACHE_DIR
        } else {
            OpenOptions::empty()
        };
        Ok((Some(fh), opts))
    }

    pub(super) fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(inode, handle, size, offset, |e| {
            add_entry(DirEntry {
                ino: e.ino,
                offset: e.next_off,
                type_: u32::from(e.d_type),
                name: e.name,
            })
        })
    }

    pub(super) fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir = self.dir_inode(inode)?;
        // Lookups counted for entries handed to the Server, undone if the call fails: the guest
        // then gets an error reply and learns of none of them.
        let mut counted = Vec::new();
        let result = self.do_readdir(inode, handle, size, offset, |e| {
            let dirent = DirEntry {
                ino: e.ino,
                offset: e.next_off,
                type_: u32::from(e.d_type),
                name: e.name,
            };
            if e.name == b"." || e.name == b".." {
                // Node id 0: the guest gets the name but no entry to cache.
                let mut entry = Entry::default();
                entry.attr.st_ino = e.ino;
                entry.attr.st_mode = u32::from(e.d_type) << 12;
                return add_entry(dirent, entry);
            }
            let Ok(name) = CString::new(e.name) else {
                return Ok(1); // cannot happen: getdents names have no NUL; skip it
            };
            let (child, st) = match self.do_lookup(&dir, &name) {
                Ok(found) => found,
                // Removed since getdents saw it: leave it out.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(1),
                Err(e) => return Err(e),
            };
            let added = add_entry(dirent, self.entry(&dir, &child, st));
            if matches!(added, Ok(n) if n > 0) {
                counted.push(child.id);
            } else {
                // Not in the reply (full, or unwritable): the guest will not learn of this
                // lookup, so undo it.
                self.inodes.forget(child.id, 1);
            }
            added
        });
        if result.is_err() {
            for id in counted {
                self.inodes.forget(id, 1);
            }
        }
        result
    }

    pub(super) fn fsyncdir(
        &self,
        _ctx: &Context,
        inode: u64,
        datasync: bool,
        handle: u64,
    ) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        sys::fsync(h.fd(), datasync)
    }

    pub(super) fn releasedir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
    ) -> io::Result<()> {
        self.handles.remove(handle, inode).map(drop)
    }
}
