//! One FUSE request in, one reply out: the seam between a descriptor chain and the filesystem.
//!
//! fuse-backend-rs's `Server` decodes most of the protocol. In front of it this module
//! - drops chains whose buffers are not guest memory, or too short to carry a header;
//! - answers opcodes the Server does not know (COPY_FILE_RANGE, SYNCFS, and anything newer or
//!   invalid) itself, so an unknown opcode is a clean ENOSYS rather than a trip through the
//!   Server's opcode table;
//! - refuses what the Server would serve wrongly: RENAME2 with flags it does not know (it
//!   would drop them and rename anyway) gets EINVAL;
//! - serves a request only if its reply will fit: a filesystem operation whose reply cannot be
//!   delivered (a node id, a handle, "the write happened") would leave the daemon holding what
//!   the guest never learnt of, or the guest believing the opposite of what happened;
//! - negotiates FUSE_SETXATTR_EXT and decodes SETXATTR in its longer form, which the Server
//!   does not know (`setxattr_ext`);
//! - guarantees a reply for every request that needs one: when the Server gives up on a
//!   malformed request without answering, the guest still gets EINVAL, and a chain whose
//!   buffers fuse-backend-rs cannot map (one spanning two guest memory regions) gets EIO,
//!   instead of waiting forever.

use std::io::{self, Read, Write};
use std::mem::size_of;
use std::ops::Deref;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CopyFileRangeIn, CreateIn, EntryOut, InHeader, IoctlIn, IoctlOut, LkIn, LkOut, Opcode,
    OpenOut, OutHeader, Rename2In, StatfsOut, WriteOut, LK_FLOCK,
};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use log::{debug, warn};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemory};

use crate::fs::Passthrough;
use crate::sys;

mod errno;
mod setxattr_ext;

pub use errno::note_error;
use errno::reply_errno;

/// Opcodes fuse-backend-rs 0.14 does not define.
const FUSE_SYNCFS: u32 = 50;
const FUSE_TMPFILE: u32 = 51;

/// Requests that never get a reply.
fn is_no_reply(opcode: u32) -> bool {
    opcode == Opcode::Forget as u32
        || opcode == Opcode::BatchForget as u32
        || opcode == Opcode::Interrupt as u32
        || opcode == Opcode::NotifyReply as u32
}

/// Opcodes handed to fuse-backend-rs's Server. Decoded here instead: the lock opcodes
/// (31-33; the Server 0.14 sends SETLKW down as a non-blocking SETLK), DESTROY (38; the
/// Server 0.14 writes its reply but returns a used length of 0) and IOCTL (39; its reply data
/// cannot outlive the FileSystem call in the Server's API).
fn server_handles(opcode: u32) -> bool {
    matches!(opcode, 1..=6 | 8..=18 | 20..=30 | 34..=35 | 37 | 40 | 42..=46)
}

/// The size of the reply to `opcode` when it is one of fixed size: what a guest must leave room
/// for before the request is served. None for variable-size replies (READ, READDIR, xattrs,
/// IOCTL, ...), which the Server and the filesystem fit into the buffer, and for INIT, whose
/// reply size depends on the protocol version.
fn fixed_reply_len(opcode: u32) -> Option<usize> {
    let entry = size_of::<OutHeader>() + size_of::<EntryOut>();
    let attr = size_of::<OutHeader>() + size_of::<AttrOut>();
    let open = size_of::<OutHeader>() + size_of::<OpenOut>();
    let header = size_of::<OutHeader>();
    Some(match opcode {
        1 | 6 | 8 | 9 | 13 => entry, // LOOKUP SYMLINK MKNOD MKDIR LINK
        3 | 4 => attr,               // GETATTR SETATTR
        14 | 27 => open,             // OPEN OPENDIR
        35 | FUSE_TMPFILE => entry + size_of::<OpenOut>(), // CREATE TMPFILE
        16 | 47 => header + size_of::<WriteOut>(), // WRITE COPY_FILE_RANGE
        17 => header + size_of::<StatfsOut>(),
        31 => header + size_of::<LkOut>(), // GETLK
        37 | 40 | 46 => header + 8,        // BMAP POLL LSEEK
        10..=12 | 18 | 20 | 21 | 24 | 25 | 29 | 30 | 32..=34 | 38 | 43 | 45 | FUSE_SYNCFS => header,
        _ => return None,
    })
}

/// RENAME2 flags the filesystem implements (`renameat2`'s, less none).
const RENAME_FLAGS: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;

/// An errno for a request the Server would serve wrongly, read before it gets the request:
/// fuse-backend-rs 0.14 masks RENAME2's flags to the ones it knows before the filesystem sees
/// them, so an unknown flag would make a plain rename that replaces its target. None: the
/// request goes on (a body too short to read is the Server's to refuse).
fn refuse_before_server<S: vm_memory::bitmap::BitmapSlice>(
    opcode: u32,
    reader: &Reader<'_, S>,
) -> Option<i32> {
    if opcode != Opcode::Rename2 as u32 {
        return None;
    }
    let mut peek = reader.clone();
    peek.read_obj::<InHeader>().ok()?;
    let args = peek.read_obj::<Rename2In>().ok()?;
    (args.flags & !RENAME_FLAGS != 0).then_some(libc::EINVAL)
}

/// Requests that may block for as long as another guest process pleases (a lock wait): they
/// must not hold up the queue they came on.
pub fn may_block(opcode: u32) -> bool {
    opcode == Opcode::Setlkw as u32
}

pub struct Dispatcher {
    server: Server<Arc<Passthrough>>,
    fs: Arc<Passthrough>,
    tracer: Option<crate::trace::Tracer>,
    stats: crate::stats::Stats,
}

impl Dispatcher {
    pub fn new(fs: Arc<Passthrough>) -> Self {
        Self {
            server: Server::new(fs.clone()),
            fs,
            tracer: None,
            stats: crate::stats::Stats::default(),
        }
    }

    /// What has been served so far.
    pub fn stats(&self) -> &crate::stats::Stats {
        &self.stats
    }

    /// Record every request into `tracer` (`--trace`).
    pub fn with_tracer(mut self, tracer: crate::trace::Tracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// The trace, if one is being written.
    pub fn tracer(&self) -> Option<&crate::trace::Tracer> {
        self.tracer.as_ref()
    }

    /// [`handle_chain`](Self::handle_chain) for a chain taken off queue `queue`, recorded in
    /// the trace when there is one.
    ///
    /// `header` is the chain's FUSE header as [`peek_header`](Self::peek_header) read it (the
    /// caller needed it first, to decide where to serve the request): reading it once is one
    /// walk of the descriptor table fewer per request.
    pub fn serve<M>(
        &self,
        mem: &M::Target,
        chain: DescriptorChain<M>,
        header: Option<InHeader>,
        queue: u16,
    ) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let t0 = self.stats.begin();
        errno::forget_noted();
        let pending = self.tracer.as_ref().map(|t| t.begin(mem, &chain, queue));
        let used = match header {
            Some(h) => self.serve_request(mem, chain.clone(), h),
            None => {
                warn!("dropping a request without a readable FUSE header");
                0
            }
        };
        if let (Some(t), Some(p)) = (&self.tracer, pending) {
            t.end(p, mem, &chain, used);
        }
        let (opcode, in_len) = header.map_or((0, 0), |h| (h.opcode, h.len));
        let errno = reply_errno(mem, &chain, used);
        let (read, written) = match opcode {
            _ if errno != 0 => (0, 0),
            x if x == Opcode::Read as u32 => (u64::from(used.saturating_sub(16)), 0),
            // fuse_in_header + fuse_write_in, then the data.
            x if x == Opcode::Write as u32 => (0, u64::from(in_len.saturating_sub(80))),
            _ => (0, 0),
        };
        self.stats.end(t0, opcode, errno, read, written);
        used
    }

    pub fn fs(&self) -> &Arc<Passthrough> {
        &self.fs
    }

    /// Answer the request in `chain` with `errno` without serving it.
    pub fn refuse<M>(mem: &M::Target, chain: DescriptorChain<M>, errno: i32) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        match Self::peek_header(mem, &chain) {
            Some(header) => reply_error_direct(mem, &chain, header.unique, errno),
            None => 0,
        }
    }

    /// The FUSE header of the request in `chain`, if it has one, read straight from guest
    /// memory (Linux puts it in a descriptor of its own; a header split across descriptors is
    /// gathered from the readable ones in order, as the Server's Reader would see it).
    pub fn peek_header<M>(mem: &M::Target, chain: &DescriptorChain<M>) -> Option<InHeader>
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let first = chain.clone().next()?;
        if first.is_write_only() {
            return None;
        }
        if first.len() as usize >= size_of::<InHeader>() {
            return mem.read_obj::<InHeader>(first.addr()).ok();
        }
        let mut buf = [0u8; size_of::<InHeader>()];
        let mut done = 0;
        for desc in chain.clone().readable() {
            let take = (desc.len() as usize).min(buf.len() - done);
            mem.read_slice(&mut buf[done..done + take], desc.addr())
                .ok()?;
            done += take;
            if done == buf.len() {
                return InHeader::from_slice(&buf).copied();
            }
        }
        None
    }

    /// Serve one descriptor chain; returns the number of bytes written into it (the used
    /// length). Never panics on guest input.
    pub fn handle_chain<M>(&self, mem: &M::Target, chain: DescriptorChain<M>) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        self.handle(mem, chain).0
    }

    /// [`handle_chain`](Self::handle_chain), and the request's header if it had one.
    fn handle<M>(&self, mem: &M::Target, chain: DescriptorChain<M>) -> (u32, Option<InHeader>)
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let Some(header) = Self::peek_header(mem, &chain) else {
            warn!("dropping a request without a readable FUSE header");
            return (0, None);
        };
        (self.serve_request(mem, chain, header), Some(header))
    }

    fn serve_request<M>(&self, mem: &M::Target, chain: DescriptorChain<M>, header: InHeader) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let opcode = header.opcode;
        // fuse-backend-rs maps each buffer inside one memory region: one that is not guest
        // memory, or that spans two regions, fails here. Answer EIO where the reply buffer
        // still takes a header, so that the guest does not wait forever.
        let unusable = |what: &str, e: &dyn std::fmt::Display| {
            warn!("a request with unusable {what} buffers: {e}");
            if is_no_reply(opcode) {
                0
            } else {
                reply_error_direct(mem, &chain, header.unique, libc::EIO)
            }
        };
        let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => return unusable("readable", &e),
        };
        let writer = match VirtioFsWriter::new(mem, chain.clone()) {
            Ok(w) => w,
            Err(e) => return unusable("writable", &e),
        };
        if let Some(need) = fixed_reply_len(opcode) {
            if writer.available_bytes() < need {
                warn!(
                    "a request (opcode {opcode}) whose reply cannot fit: {} bytes for {need}; \
                     replying EINVAL without serving it",
                    writer.available_bytes()
                );
                return u32::try_from(reply_error(writer, header.unique, libc::EINVAL))
                    .unwrap_or(0);
            }
        }
        if let Some(errno) = refuse_before_server(opcode, &reader) {
            return u32::try_from(reply_error(writer, header.unique, errno)).unwrap_or(0);
        }
        let setxattr_ext = opcode == Opcode::Setxattr as u32 && self.fs.setxattr_ext();
        let init_offers_ext =
            opcode == Opcode::Init as u32 && setxattr_ext::init_offers_it(&reader);
        let written = if server_handles(opcode) && !setxattr_ext {
            match self
                .server
                .handle_message(reader, writer.into(), None, None)
            {
                Ok(n) => n,
                Err(e) if is_no_reply(opcode) => {
                    debug!("malformed no-reply request (opcode {opcode}): {e}");
                    0
                }
                Err(e) => {
                    warn!("malformed request (opcode {opcode}): {e}; replying EINVAL");
                    return reply_error_direct(mem, &chain, header.unique, libc::EINVAL);
                }
            }
        } else if is_no_reply(opcode) {
            0
        } else {
            log::trace!(
                "request {opcode} node {} unique {}",
                header.nodeid,
                header.unique
            );
            // Positioned after the header, for the requests decoded here.
            let mut peek = reader;
            if peek.read_obj::<InHeader>().is_err() {
                return 0;
            }
            match opcode {
                x if x == Opcode::CopyFileRange as u32 => {
                    self.copy_file_range(&header, &mut peek, writer)
                }
                FUSE_SYNCFS => match self.fs.syncfs(header.nodeid) {
                    Ok(()) => reply_ok(writer, header.unique, &[]),
                    Err(e) => reply_io_error(writer, header.unique, e),
                },
                x if x == Opcode::Getlk as u32
                    || x == Opcode::Setlk as u32
                    || x == Opcode::Setlkw as u32 =>
                {
                    self.lock(&header, &mut peek, writer)
                }
                FUSE_TMPFILE => self.tmpfile(&header, &mut peek, writer),
                x if x == Opcode::Setxattr as u32 => self.setxattr_ext(&header, &mut peek, writer),
                x if x == Opcode::Destroy as u32 => {
                    self.fs.destroy();
                    reply_ok(writer, header.unique, &[])
                }
                x if x == Opcode::Ioctl as u32 => self.ioctl(&header, &mut peek, writer),
                // What is left is a protocol feature we do not offer (DAX mappings, statx, ...)
                // or not an opcode at all.
                _ => {
                    self.fs.note_unsupported(opcode);
                    reply_error(writer, header.unique, libc::ENOSYS)
                }
            }
        };
        let used = u32::try_from(written).unwrap_or(0);
        if opcode == Opcode::Init as u32 {
            self.negotiate_setxattr_ext(mem, &chain, used, init_offers_ext);
        }
        used
    }

    /// Opcodes answered ENOSYS so far, with counts.
    pub fn unsupported_opcodes(&self) -> Vec<(u32, u64)> {
        self.fs.unsupported_opcodes()
    }

    fn lock<S: vm_memory::bitmap::BitmapSlice>(
        &self,
        header: &InHeader,
        r: &mut Reader<'_, S>,
        w: VirtioFsWriter<'_, S>,
    ) -> usize {
        let Ok(args) = r.read_obj::<LkIn>() else {
            return reply_error(w, header.unique, libc::EINVAL);
        };
        let result = if header.opcode == Opcode::Getlk as u32 {
            self.fs
                .do_getlk(header.nodeid, args.fh, args.owner, &args.lk)
                .map(|lk| LkOut { lk })
        } else {
            self.fs
                .do_setlk(
                    header.nodeid,
                    args.fh,
                    args.owner,
                    &args.lk,
                    args.lk_flags & LK_FLOCK != 0,
                    header.opcode == Opcode::Setlkw as u32,
                )
                .map(|()| LkOut::default())
        };
        match result {
            Ok(out) if header.opcode == Opcode::Getlk as u32 => {
                reply_ok(w, header.unique, out.as_slice())
            }
            Ok(_) => reply_ok(w, header.unique, &[]),
            Err(e) => reply_io_error(w, header.unique, e),
        }
    }

    fn ioctl<S: vm_memory::bitmap::BitmapSlice>(
        &self,
        header: &InHeader,
        r: &mut Reader<'_, S>,
        w: VirtioFsWriter<'_, S>,
    ) -> usize {
        let Ok(args) = r.read_obj::<IoctlIn>() else {
            return reply_error(w, header.unique, libc::EINVAL);
        };
        let out = IoctlOut::default();
        log::trace!(
            "ioctl node {} cmd {:#x} flags {:#x} in {} out {}",
            header.nodeid,
            args.cmd,
            args.flags,
            args.in_size,
            args.out_size
        );
        let Some((_, size, getter)) = sys::inode_ioctl(args.cmd) else {
            return reply_error(w, header.unique, libc::ENOTTY);
        };
        // The reply's size depends on the guest's out_size: it must fit before the ioctl runs.
        let reply_len = size_of::<OutHeader>()
            + size_of::<IoctlOut>()
            + if getter {
                size.min(args.out_size as usize)
            } else {
                0
            };
        if w.available_bytes() < reply_len {
            return reply_error(w, header.unique, libc::EINVAL);
        }
        let mut arg = vec![0u8; size];
        if !getter && ((args.in_size as usize) < size || r.read_exact(&mut arg).is_err()) {
            return reply_error(w, header.unique, libc::EINVAL);
        }
        match self
            .fs
            .inode_ioctl(header.nodeid, args.fh, args.cmd, &mut arg)
        {
            Ok(()) => {
                let mut body = out.as_slice().to_vec();
                if getter {
                    // No more than the guest's buffer holds.
                    body.extend_from_slice(&arg[..size.min(args.out_size as usize)]);
                }
                reply_ok(w, header.unique, &body)
            }
            Err(e) => reply_io_error(w, header.unique, e),
        }
    }

    fn tmpfile<S: vm_memory::bitmap::BitmapSlice>(
        &self,
        header: &InHeader,
        r: &mut Reader<'_, S>,
        w: VirtioFsWriter<'_, S>,
    ) -> usize {
        let Ok(args) = r.read_obj::<CreateIn>() else {
            return reply_error(w, header.unique, libc::EINVAL);
        };
        let ctx = Context {
            uid: header.uid,
            gid: header.gid,
            pid: header.pid as i32,
        };
        match self.fs.tmpfile(&ctx, header.nodeid, &args) {
            Ok((entry, fh, opts)) => {
                let entry = EntryOut::from(entry);
                let open = OpenOut {
                    fh,
                    open_flags: opts.bits(),
                    passthrough: 0,
                };
                let mut body = Vec::with_capacity(size_of::<EntryOut>() + size_of::<OpenOut>());
                body.extend_from_slice(entry.as_slice());
                body.extend_from_slice(open.as_slice());
                reply_ok(w, header.unique, &body)
            }
            Err(e) => reply_io_error(w, header.unique, e),
        }
    }

    fn copy_file_range<S: vm_memory::bitmap::BitmapSlice>(
        &self,
        header: &InHeader,
        r: &mut Reader<'_, S>,
        w: VirtioFsWriter<'_, S>,
    ) -> usize {
        let Ok(args) = r.read_obj::<CopyFileRangeIn>() else {
            return reply_error(w, header.unique, libc::EINVAL);
        };
        let result = self.fs.copy_file_range(
            header.nodeid,
            args.fh_in,
            args.offset_in,
            args.nodeid_out,
            args.fh_out,
            args.offset_out,
            args.len,
            args.flags,
        );
        match result {
            Ok(n) => {
                let out = WriteOut {
                    size: n as u32,
                    padding: 0,
                };
                reply_ok(w, header.unique, out.as_slice())
            }
            Err(e) => reply_io_error(w, header.unique, e),
        }
    }
}

/// Answer with `errno` by writing the out header straight into the chain's writable buffers
/// (in order, across regions if need be): for chains the Server's Writer cannot map, and
/// requests it gave up on. All or nothing: returns the used length, 0 if the header does not fit
/// in guest memory.
fn reply_error_direct<M>(
    mem: &M::Target,
    chain: &DescriptorChain<M>,
    unique: u64,
    errno: i32,
) -> u32
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let header = OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    let bytes = header.as_slice();
    let Some(parts) = writable_at(mem, chain, 0, bytes.len()) else {
        return 0;
    };
    for (addr, range) in parts {
        if let Err(e) = mem.write_slice(&bytes[range], addr) {
            warn!("cannot write an error reply into the guest's buffer: {e}");
            return 0;
        }
    }
    header.len
}

/// Where bytes `offset..offset + len` of the reply go in `chain`'s writable buffers: each
/// piece's guest address and its range within those `len` bytes. None when the buffers are
/// shorter or not guest memory.
fn writable_at<M>(
    mem: &M::Target,
    chain: &DescriptorChain<M>,
    offset: usize,
    len: usize,
) -> Option<Vec<(GuestAddress, std::ops::Range<usize>)>>
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let mut parts = Vec::new();
    let mut skip = offset;
    let mut done = 0;
    for desc in chain.clone().writable() {
        if done == len {
            break;
        }
        let dlen = desc.len() as usize;
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let take = (dlen - skip).min(len - done);
        let addr = desc.addr().checked_add(skip as u64)?;
        if !mem.check_range(addr, take) {
            return None;
        }
        parts.push((addr, done..done + take));
        done += take;
        skip = 0;
    }
    (done == len).then_some(parts)
}

fn reply_ok<S: vm_memory::bitmap::BitmapSlice>(
    mut w: VirtioFsWriter<'_, S>,
    unique: u64,
    body: &[u8],
) -> usize {
    let len = size_of::<OutHeader>() + body.len();
    if w.available_bytes() < len {
        // Callers check before acting; should one not, the guest still gets a whole reply
        // rather than a header with no used length.
        warn!(
            "a {len}-byte reply does not fit in the guest's {}-byte buffer; replying EINVAL",
            w.available_bytes()
        );
        return reply_error(w, unique, libc::EINVAL);
    }
    let header = OutHeader {
        len: len as u32,
        error: 0,
        unique,
    };
    match w
        .write_all(header.as_slice())
        .and_then(|()| w.write_all(body))
    {
        Ok(()) => len,
        Err(e) => {
            warn!("cannot write a reply into the guest's buffer: {e}");
            0
        }
    }
}

fn reply_io_error<S: vm_memory::bitmap::BitmapSlice>(
    w: VirtioFsWriter<'_, S>,
    unique: u64,
    e: io::Error,
) -> usize {
    reply_error(w, unique, e.raw_os_error().unwrap_or(libc::EIO))
}

fn reply_error<S: vm_memory::bitmap::BitmapSlice>(
    mut w: VirtioFsWriter<'_, S>,
    unique: u64,
    errno: i32,
) -> usize {
    let header = OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    match w.write_all(header.as_slice()) {
        Ok(()) => size_of::<OutHeader>(),
        Err(e) => {
            warn!("cannot write an error reply into the guest's buffer: {e}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_routing_covers_the_protocol() {
        // Gaps in the FUSE opcode space (7, 19) and unknown/new opcodes never reach the Server.
        for op in [
            0,
            7,
            19,
            31,
            32,
            33,
            38,
            39,
            47,
            48,
            49,
            50,
            51,
            52,
            4096,
            u32::MAX,
        ] {
            assert!(!server_handles(op), "opcode {op}");
        }
        for op in [1, 3, 14, 15, 16, 26, 37, 40, 44, 46] {
            assert!(server_handles(op), "opcode {op}");
        }
        assert!(!server_handles(Opcode::Interrupt as u32));
        assert!(!server_handles(Opcode::NotifyReply as u32));
        assert!(is_no_reply(Opcode::Forget as u32));
        assert!(!is_no_reply(Opcode::Init as u32));
    }
}
