//! Blocking FUSE client: one request at a time on one request queue (FORGET and INTERRUPT on
//! the high-priority queue), every wait bounded by the device timeout.

use std::sync::Arc;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::fuse_abi::*;
use crate::fuse_req::{decode_reply, Creds, FuseReply, FuseRequest, Payload};
use crate::ops::{self, Call, DirEntry};
use crate::queue::{Chain, Completion};
use crate::virtqueue::{ChainMode, RawDesc};

/// What a FUSE_INIT asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// Protocol minor version announced.
    pub minor: u32,
    /// `max_readahead` announced.
    pub max_readahead: u32,
    /// Requested flags (flags2 in the high 32 bits).
    pub flags: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            minor: FUSE_KERNEL_MINOR_VERSION,
            max_readahead: 128 * 1024,
            flags: init_flags::LINUX_DEFAULT,
        }
    }
}

/// A blocking FUSE client bound to one request queue of a [`Device`].
#[derive(Debug, Clone)]
pub struct FuseClient {
    dev: Arc<Device>,
    queue: u16,
    creds: Creds,
}

impl FuseClient {
    /// A client using request queue 0 and root credentials.
    pub fn new(dev: Arc<Device>) -> Self {
        FuseClient {
            dev,
            queue: 0,
            creds: Creds::default(),
        }
    }

    /// Uses request queue `i` (0-based) instead.
    pub fn on_queue(mut self, i: u16) -> Self {
        self.queue = i;
        self
    }

    /// Sends requests with these credentials.
    pub fn with_creds(mut self, creds: Creds) -> Self {
        self.creds = creds;
        self
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// Runs a typed call: on the high-priority queue for no-reply requests (FORGET,
    /// INTERRUPT), else on this client's request queue.
    pub fn call<T>(&self, call: Call<T>) -> Result<T> {
        let reply = self.request(&call.req)?;
        match reply {
            Some(r) => (call.parse)(&r),
            None => (call.parse)(&FuseReply {
                header: OutHeader::default(),
                body: Vec::new(),
                body_len: 0,
            }),
        }
    }

    /// Sends one request and returns its validated reply (`None` for no-reply requests,
    /// which complete when the daemon returns their descriptors).
    pub fn request(&self, req: &FuseRequest) -> Result<Option<FuseReply>> {
        let unique = self.dev.next_unique();
        let chain = req.to_chain(unique, self.creds);
        if req.no_reply {
            let c = self.dev.hiprio()?.roundtrip(&chain)?;
            if c.used_len != 0 {
                return Err(Error::Protocol(format!(
                    "opcode {}: no-reply request completed with used length {}",
                    req.opcode, c.used_len
                )));
            }
            return Ok(None);
        }
        let c = self.dev.request_queue(self.queue)?.roundtrip(&chain)?;
        decode_reply(req, unique, &c).map(Some)
    }

    /// Raw access: submits an arbitrary chain on vhost-user queue `queue_index`
    /// (0 = high priority) and waits up to the device timeout. A daemon that never returns
    /// the chain yields [`Error::Timeout`].
    pub fn raw(&self, queue_index: usize, chain: &Chain) -> Result<Completion> {
        self.dev.queue(queue_index)?.roundtrip(chain)
    }

    /// Raw access with fully caller-built descriptors (flags and `next` as given, e.g. loops,
    /// nested INDIRECT, out-of-range `next`). Nothing is allocated or read back: point
    /// writable descriptors at a [`crate::GuestBuf`] to inspect what the daemon wrote.
    pub fn raw_descs(
        &self,
        queue_index: usize,
        descs: &[RawDesc],
        mode: ChainMode,
    ) -> Result<Completion> {
        let mut q = self.dev.queue(queue_index)?;
        let t = q.submit_raw(descs, mode)?;
        let timeout = q.timeout();
        q.wait_for(t, timeout)
    }

    /// True if the daemon still holds the vhost-user socket and answers GETATTR on the root.
    pub fn is_alive(&self) -> bool {
        self.dev.is_connected() && self.getattr(FUSE_ROOT_ID).is_ok()
    }

    /// FUSE_INIT with Linux's defaults.
    pub fn init(&self) -> Result<InitOut> {
        self.init_with(InitOptions::default())
    }

    /// FUSE_INIT with explicit options. Fails unless the daemon answers 7.x.
    pub fn init_with(&self, o: InitOptions) -> Result<InitOut> {
        let out = self.call(ops::init(o.minor, o.max_readahead, o.flags))?;
        if out.major != FUSE_KERNEL_VERSION {
            return Err(Error::Protocol(format!(
                "init: daemon speaks FUSE {}.{}",
                out.major, out.minor
            )));
        }
        Ok(out)
    }

    /// FUSE_LOOKUP.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<EntryOut> {
        self.call(ops::lookup(parent, name.as_bytes()))
    }

    /// Looks up a `/`-separated relative path from the root, returning the last entry.
    pub fn lookup_path(&self, path: &str) -> Result<EntryOut> {
        let mut cur: Option<EntryOut> = None;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            let parent = cur.map_or(FUSE_ROOT_ID, |e| e.nodeid);
            cur = Some(self.lookup(parent, comp)?);
        }
        cur.ok_or_else(|| Error::Config("empty path".into()))
    }

    /// FUSE_FORGET on the high-priority queue.
    pub fn forget(&self, nodeid: u64, nlookup: u64) -> Result<()> {
        self.call(ops::forget(nodeid, nlookup))
    }

    /// FUSE_BATCH_FORGET on the high-priority queue.
    pub fn batch_forget(&self, items: &[(u64, u64)]) -> Result<()> {
        self.call(ops::batch_forget(items))
    }

    /// FUSE_GETATTR.
    pub fn getattr(&self, nodeid: u64) -> Result<AttrOut> {
        self.call(ops::getattr(nodeid, None))
    }

    /// FUSE_SETATTR.
    pub fn setattr(&self, nodeid: u64, arg: &SetattrIn) -> Result<AttrOut> {
        self.call(ops::setattr(nodeid, arg))
    }

    /// FUSE_SETATTR of the size only (truncate).
    pub fn truncate(&self, nodeid: u64, size: u64) -> Result<AttrOut> {
        self.setattr(
            nodeid,
            &SetattrIn {
                valid: setattr_valid::SIZE,
                size,
                ..Default::default()
            },
        )
    }

    /// FUSE_OPEN.
    pub fn open(&self, nodeid: u64, flags: i32) -> Result<OpenOut> {
        self.call(ops::open_file(nodeid, flags as u32))
    }

    /// FUSE_CREATE (umask 022).
    pub fn create(
        &self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(EntryOut, OpenOut)> {
        self.call(ops::create(
            parent,
            name.as_bytes(),
            flags as u32,
            mode,
            0o022,
        ))
    }

    /// FUSE_READ.
    pub fn read(&self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.call(ops::read(nodeid, fh, offset, size))
    }

    /// FUSE_WRITE.
    pub fn write(&self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.call(ops::write(
            nodeid,
            fh,
            offset,
            Payload::Bytes(data.to_vec()),
        ))
    }

    /// FUSE_FLUSH.
    pub fn flush(&self, nodeid: u64, fh: u64) -> Result<()> {
        self.call(ops::flush(nodeid, fh, 0))
    }

    /// FUSE_FSYNC.
    pub fn fsync(&self, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        self.call(ops::fsync(nodeid, fh, datasync))
    }

    /// FUSE_RELEASE.
    pub fn release(&self, nodeid: u64, fh: u64) -> Result<()> {
        self.call(ops::release(nodeid, fh, 0))
    }

    /// FUSE_OPENDIR.
    pub fn opendir(&self, nodeid: u64) -> Result<OpenOut> {
        self.call(ops::opendir(nodeid, libc::O_RDONLY as u32))
    }

    /// One FUSE_READDIRPLUS of a page.
    pub fn readdirplus(&self, nodeid: u64, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        self.call(ops::readdirplus(nodeid, fh, offset, 4096))
    }

    /// One FUSE_READDIR of a page.
    pub fn readdir(&self, nodeid: u64, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        self.call(ops::readdir(nodeid, fh, offset, 4096))
    }

    /// OPENDIR, READDIRPLUS until empty, RELEASEDIR; then FORGETs the lookups the
    /// READDIRPLUS entries took. Returns every entry (including `.` and `..`).
    pub fn list_dir(&self, nodeid: u64) -> Result<Vec<DirEntry>> {
        let fh = self.opendir(nodeid)?.fh;
        let mut all = Vec::new();
        let mut off = 0;
        let res = loop {
            match self.readdirplus(nodeid, fh, off) {
                Ok(v) if v.is_empty() => break Ok(()),
                Ok(v) => {
                    off = v.last().map_or(off, |e| e.off);
                    all.extend(v);
                }
                Err(e) => break Err(e),
            }
        };
        self.releasedir(nodeid, fh)?;
        res?;
        for e in &all {
            if let Some(en) = e.entry.filter(|en| en.nodeid != 0) {
                self.forget(en.nodeid, 1)?;
            }
        }
        Ok(all)
    }

    /// FUSE_RELEASEDIR.
    pub fn releasedir(&self, nodeid: u64, fh: u64) -> Result<()> {
        self.call(ops::releasedir(nodeid, fh))
    }

    /// FUSE_UNLINK.
    pub fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        self.call(ops::unlink(parent, name.as_bytes()))
    }

    /// FUSE_MKDIR (umask 022).
    pub fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<EntryOut> {
        self.call(ops::mkdir(parent, name.as_bytes(), mode, 0o022))
    }

    /// FUSE_RMDIR.
    pub fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        self.call(ops::rmdir(parent, name.as_bytes()))
    }

    /// FUSE_RENAME2 with flags 0.
    pub fn rename(&self, parent: u64, name: &str, newparent: u64, newname: &str) -> Result<()> {
        self.call(ops::rename(
            parent,
            name.as_bytes(),
            newparent,
            newname.as_bytes(),
            0,
        ))
    }

    /// FUSE_SYMLINK.
    pub fn symlink(&self, parent: u64, name: &str, target: &str) -> Result<EntryOut> {
        self.call(ops::symlink(parent, name.as_bytes(), target.as_bytes()))
    }

    /// FUSE_READLINK.
    pub fn readlink(&self, nodeid: u64) -> Result<Vec<u8>> {
        self.call(ops::readlink(nodeid))
    }

    /// FUSE_LINK.
    pub fn link(&self, nodeid: u64, newparent: u64, newname: &str) -> Result<EntryOut> {
        self.call(ops::link(nodeid, newparent, newname.as_bytes()))
    }

    /// FUSE_STATFS.
    pub fn statfs(&self, nodeid: u64) -> Result<Kstatfs> {
        self.call(ops::statfs(nodeid))
    }

    /// FUSE_DESTROY.
    pub fn destroy(&self) -> Result<()> {
        self.call(ops::destroy())
    }
}
