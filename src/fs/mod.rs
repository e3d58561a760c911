//! The passthrough filesystem: FUSE operations served from a host directory.
//!
//! Every host syscall is made relative to an fd we hold (`*at` calls on O_PATH fds, or
//! `/proc/self/fd/N` reopens), never through an absolute host path, and never following a
//! symlink on the host: a guest can only name inodes it reached by lookups from the root, one
//! component at a time.

mod attr;
mod creds;
mod dir;
mod handles;
pub mod idmap;
pub mod inodes;
mod locks;
pub mod open_flags;
mod xattr;

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, Opcode, OpenOptions};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};
use log::{debug, info};

use crate::sys::{self, Stat};
use creds::AsCaller;
use handles::{HandleData, HandleStore};
use inodes::{InodeData, InodeStore, NameKey, ROOT_ID};
use open_flags::{DaemonCreds, NoatimeCounters, NoatimePolicy, OpenRules};

pub use open_flags::Noatime;

/// How much the guest may cache, virtiofsd's `--cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CachePolicy {
    /// No caching: attributes and entries revalidated every time, file I/O direct.
    Never,
    /// Metadata cached for a long time, file data not cached.
    Metadata,
    /// Short (1 s) attribute/entry timeouts; data cache invalidated on change.
    #[default]
    Auto,
    /// Everything cached for a long time: only for a share nothing else modifies.
    Always,
}

impl CachePolicy {
    fn timeout(self) -> Duration {
        match self {
            Self::Never => Duration::ZERO,
            Self::Auto => Duration::from_secs(1),
            Self::Metadata | Self::Always => Duration::from_secs(86400),
        }
    }
}

impl std::str::FromStr for CachePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never" | "none" => Ok(Self::Never),
            "metadata" => Ok(Self::Metadata),
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            other => Err(format!(
                "invalid cache policy '{other}': use auto, always, metadata or never"
            )),
        }
    }
}

/// Everything the filesystem needs to know from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub cache: CachePolicy,
    pub writeback: bool,
    pub xattr: bool,
    pub readonly: bool,
    pub readdirplus: bool,
    pub allow_direct_io: bool,
    pub noatime: NoatimePolicy,
    /// Serve POSIX ACLs (implies xattrs): the guest checks permissions with them and leaves the
    /// umask to us, since only the host knows whether a default ACL replaces it.
    pub posix_acl: bool,
    /// uid and gid translation between guest and host (`--translate-uid/gid`).
    pub uid_map: idmap::IdMap,
    pub gid_map: idmap::IdMap,
    /// Hold inodes past the fd budget by file handle (`--inode-file-handles=prefer`).
    pub file_handles: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cache: CachePolicy::Auto,
            writeback: false,
            xattr: false,
            readonly: false,
            readdirplus: true,
            allow_direct_io: false,
            noatime: NoatimePolicy::Auto,
            posix_acl: false,
            uid_map: idmap::IdMap::default(),
            gid_map: idmap::IdMap::default(),
            file_handles: true,
        }
    }
}

pub struct Passthrough {
    cfg: Config,
    inodes: InodeStore,
    handles: HandleStore,
    /// `/proc/self/fd`, opened once: reopening an O_PATH fd through it gives a real fd for the
    /// same inode without resolving any path inside the share.
    proc_self_fd: OwnedFd,
    creds: DaemonCreds,
    /// Root can act as the guest caller for creations; an unprivileged daemon cannot.
    can_switch_creds: bool,
    /// Set by FUSE_INIT when the guest accepted the writeback cache.
    writeback: AtomicBool,
    /// Set by FUSE_INIT when the guest accepted POSIX ACLs (and so sends unmasked modes).
    acl_negotiated: AtomicBool,
    counters: NoatimeCounters,
    locks: locks::LockTable,
    /// FUSE opcodes answered ENOSYS, with counts, for the exit summary.
    unsupported: std::sync::Mutex<std::collections::BTreeMap<u32, u64>>,
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// Move `size` bytes at `offset` between a host file and the guest, one `step(count, offset)`
/// (a preadv/pwritev straight to or from guest memory) at a time, until done or the file ends.
/// An error after some bytes moved ends the transfer short, as read(2) and write(2) do.
fn transfer(
    size: u32,
    offset: u64,
    mut step: impl FnMut(usize, u64) -> io::Result<usize>,
) -> io::Result<usize> {
    let size = size as usize;
    let mut done = 0usize;
    while done < size {
        let off = offset.checked_add(done as u64).ok_or(err(libc::EINVAL))?;
        match step(size - done, off) {
            Ok(0) => break,
            Ok(n) => done += n,
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

/// How to hold inodes: O_PATH fds up to half the open-file limit (the rest is for open files,
/// locks and the device), then file handles if the daemon may open them (CAP_DAC_READ_SEARCH)
/// and the shared filesystem has them.
fn hold_policy(cfg: &Config, caps: u64, root: BorrowedFd<'_>) -> inodes::HoldPolicy {
    let fd_budget = usize::try_from(sys::nofile_limit() / 2)
        .unwrap_or(usize::MAX)
        .max(64);
    let may = cfg.file_handles && caps & (1 << sys::CAP_DAC_READ_SEARCH) != 0;
    let handles = may && sys::name_to_handle(root).is_ok();
    info!(
        "inodes held by O_PATH fd up to {fd_budget}, then {}",
        if handles {
            "by file handle"
        } else if may {
            "still by fd (the shared filesystem has no file handles)"
        } else {
            "still by fd (file handles need CAP_DAC_READ_SEARCH)"
        }
    );
    inodes::HoldPolicy { fd_budget, handles }
}

fn is_xattr_opcode(opcode: u32) -> bool {
    (Opcode::Setxattr as u32..=Opcode::Removexattr as u32).contains(&opcode)
}

/// Names from the guest are single path components: a '/' would let `*at` calls walk.
fn check_name(name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    if bytes.len() > 255 {
        return Err(err(libc::ENAMETOOLONG));
    }
    Ok(())
}

impl Passthrough {
    /// Open `shared_dir` as the root of the share.
    pub fn new(shared_dir: &std::path::Path, cfg: Config) -> io::Result<Self> {
        let proc_dir = std::fs::File::open("/proc")?;
        let proc_self_fd = sys::openat(
            proc_dir.as_fd(),
            c"self/fd",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        Self::with_proc_fd(shared_dir, shared_dir, proc_self_fd, cfg)
    }

    /// Open `root` as the root of the share, with `proc_self_fd` (an fd for this process's
    /// `/proc/self/fd`) opened by the caller: inside a sandbox, `/proc` is not reachable by path.
    /// `shown` names the share in the log. Makes `/proc/self/fd` the working directory, for
    /// the xattr calls (see `sys::proc_fd_path`).
    pub fn with_proc_fd(
        root: &std::path::Path,
        shown: &std::path::Path,
        proc_self_fd: OwnedFd,
        cfg: Config,
    ) -> io::Result<Self> {
        let path =
            CString::new(root.as_os_str().as_encoded_bytes()).map_err(|_| err(libc::EINVAL))?;
        let cwd = sys::openat(
            // AT_FDCWD is not an fd we own; open "." to have one.
            std::fs::File::open(".")?.as_fd(),
            &path,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        let root_st = sys::stat_fd(cwd.as_fd())?;
        // After the root is open: a relative --shared-dir is relative to the old directory.
        sys::fchdir(proc_self_fd.as_fd())?;
        let euid = sys::geteuid();
        let caps = sys::effective_caps().unwrap_or(0);
        let creds = DaemonCreds {
            fsuid: euid,
            cap_fowner: caps & (1 << sys::CAP_FOWNER) != 0,
        };
        // The guest kernel already applied the caller's umask; ours must not apply twice.
        sys::umask(0);
        let hold = hold_policy(&cfg, caps, cwd.as_fd());
        info!(
            "serving {} (uid {euid}, CAP_FOWNER {}, O_NOATIME policy {})",
            shown.display(),
            if creds.cap_fowner { "yes" } else { "no" },
            cfg.noatime
        );
        let root_dir = sys::openat(cwd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let inodes = InodeStore::new(cwd, &root_st, hold);
        if hold.handles {
            inodes.add_mount(root_dir)?;
        }
        Ok(Self {
            cfg,
            inodes,
            handles: HandleStore::default(),
            proc_self_fd,
            creds,
            can_switch_creds: euid == 0,
            writeback: AtomicBool::new(false),
            acl_negotiated: AtomicBool::new(false),
            counters: NoatimeCounters::default(),
            locks: locks::LockTable::default(),
            unsupported: Default::default(),
        })
    }

    /// O_NOATIME decisions so far: (honoured, masked, retried).
    pub fn noatime_counters(&self) -> (u64, u64, u64) {
        self.counters.snapshot()
    }

    /// Remember an opcode answered ENOSYS (logged the first time: a guest feature we do not
    /// serve is worth knowing about).
    pub fn note_unsupported(&self, opcode: u32) {
        let Ok(mut seen) = self.unsupported.lock() else {
            return;
        };
        let count = seen.entry(opcode).or_insert(0);
        if *count == 0 {
            if is_xattr_opcode(opcode) {
                debug!("the guest asked for extended attributes, which are off (--xattr serves them): ENOSYS");
            } else {
                info!("the guest sent FUSE opcode {opcode}, which vufsd does not serve: ENOSYS");
            }
        }
        *count += 1;
    }

    /// Opcodes answered ENOSYS so far, with counts; the xattr opcodes answered so because
    /// xattrs are off are left out (that is configuration, not a missing feature).
    pub fn unsupported_opcodes(&self) -> Vec<(u32, u64)> {
        self.unsupported
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !is_xattr_opcode(**k))
                    .map(|(k, v)| (*k, *v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Inodes and handles currently held, for diagnostics.
    pub fn table_sizes(&self) -> (usize, usize) {
        (self.inodes.len(), self.handles.len())
    }

    fn open_rules(&self) -> OpenRules {
        OpenRules {
            writeback: self.writeback.load(Ordering::Relaxed),
            allow_direct_io: self.cfg.allow_direct_io,
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.cfg.readonly {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Act as the guest caller (its ids translated to the host's) for a creating syscall.
    fn as_caller(&self, ctx: &Context) -> io::Result<AsCaller> {
        let uid = self
            .cfg
            .uid_map
            .to_host(ctx.uid)
            .ok_or_else(|| err(libc::EPERM))?;
        let gid = self
            .cfg
            .gid_map
            .to_host(ctx.gid)
            .ok_or_else(|| err(libc::EPERM))?;
        Ok(AsCaller::new(self.can_switch_creds, uid, gid))
    }

    /// Attributes as the guest sees them: owners translated from host ids.
    fn guest_attr(&self, mut st: Stat) -> Stat {
        st.st_uid = self.cfg.uid_map.to_guest(st.st_uid);
        st.st_gid = self.cfg.gid_map.to_guest(st.st_gid);
        st
    }

    /// Run a creating syscall under the guest caller's umask when the guest left it to us
    /// (POSIX ACLs negotiated); otherwise the mode arrives already masked.
    fn with_umask<R>(&self, umask: u32, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        if self.acl_negotiated.load(Ordering::Relaxed) {
            creds::with_thread_umask(umask, f)
        } else {
            f()
        }
    }

    /// A real fd for the inode behind an O_PATH fd, opened with `flags`.
    fn reopen(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        let name = sys::fd_name(fd.as_raw_fd());
        sys::openat(
            self.proc_self_fd.as_fd(),
            &name,
            flags & !libc::O_NOFOLLOW,
            0,
        )
    }

    fn entry(&self, inode: &InodeData, st: Stat) -> Entry {
        let timeout = self.cfg.cache.timeout();
        Entry {
            inode: inode.id,
            generation: 0,
            attr: self.guest_attr(st),
            attr_flags: 0,
            attr_timeout: timeout,
            entry_timeout: timeout,
        }
    }

    fn dir_inode(&self, id: u64) -> io::Result<Arc<InodeData>> {
        let inode = self.inodes.get(id)?;
        if !inode.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        Ok(inode)
    }

    /// Look `name` up in `parent` and count a reference to it.
    fn do_lookup(&self, parent: &InodeData, name: &CStr) -> io::Result<(Arc<InodeData>, Stat)> {
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
                return Ok((inode, st));
            }
        }
        let fd = sys::openat(dir.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::stat_fd(fd.as_fd())?;
        let inode = self.inodes.add_ref(fd, &st, Some(hint))?;
        Ok((inode, st))
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
            make(parent.fd()?.as_fd())?;
        }
        let (inode, st) = self.do_lookup(&parent, name)?;
        Ok(self.entry(&inode, st))
    }

    /// Open an existing regular file for the guest, applying the O_NOATIME policy.
    fn open_file(&self, inode: &InodeData, guest_flags: u32) -> io::Result<HandleData> {
        if !inode.is_reg() {
            // Device nodes, fifos and sockets are opened by the guest kernel itself; a request
            // to open one here can only come from a misbehaving guest, and opening a device node
            // on the host would reach a host device.
            return Err(err(if inode.is_dir() {
                libc::EISDIR
            } else if inode.is_symlink() {
                libc::ELOOP
            } else {
                libc::ENXIO
            }));
        }
        let flags = open_flags::file_open_flags(guest_flags, self.open_rules());
        if self.cfg.readonly && open_flags::writes(flags) {
            return Err(err(libc::EROFS));
        }
        self.open_with_policy(inode, flags)
    }

    /// CREATE without O_EXCL of a name that exists: open it as OPEN would, through an O_PATH
    /// lookup that never follows a symlink, so that only a regular file inside the share is ever
    /// opened.
    fn open_existing(
        &self,
        parent: &InodeData,
        name: &CStr,
        guest_flags: u32,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (inode, _) = self.do_lookup(parent, name)?;
        let opened = self.open_file(&inode, guest_flags).and_then(|h| {
            // After the open: O_TRUNC may have changed the size.
            let st = sys::stat_fd(h.fd())?;
            Ok((st, self.handles.insert(h)?))
        });
        match opened {
            Ok((st, fh)) => Ok((self.entry(&inode, st), Some(fh), self.open_options(), None)),
            Err(e) => {
                // The guest gets an error, so it will never forget this lookup.
                if self.inodes.forget(inode.id, 1) {
                    self.forget_locks(inode.id);
                }
                Err(e)
            }
        }
    }

    /// Reopen `inode` with host `flags`, applying the O_NOATIME policy: mask the flag where the
    /// host would refuse it, retry once without it if the host refuses anyway, and count what
    /// happened. Used for files and directories alike.
    fn open_with_policy(&self, inode: &InodeData, mut flags: i32) -> io::Result<HandleData> {
        // Would the policy pass O_NOATIME for this inode? Decides this open, and whether a
        // later F_SETFL from the guest may set it on the handle.
        let allowed = open_flags::decide_noatime(
            self.cfg.noatime,
            self.creds,
            libc::O_NOATIME,
            inode.owner(),
        ) == Noatime::Honoured;
        let mut decision = match flags & libc::O_NOATIME {
            0 => Noatime::NotRequested,
            _ if allowed => Noatime::Honoured,
            _ => Noatime::Masked,
        };
        if decision == Noatime::Masked {
            flags &= !libc::O_NOATIME;
        }
        let result = match inode.open(self.proc_self_fd.as_fd(), flags) {
            Err(e) if open_flags::retry_without_noatime(self.cfg.noatime, flags, &e) => {
                flags &= !libc::O_NOATIME;
                decision = Noatime::Retried;
                inode.open(self.proc_self_fd.as_fd(), flags)
            }
            other => other,
        };
        // Counted whatever the open's outcome: the counters describe what was asked of the host.
        self.counters.record(decision);
        if decision != Noatime::NotRequested {
            debug!("open node {}: O_NOATIME {decision:?}", inode.id);
        }
        let fd = result?;
        let on = flags & libc::O_NOATIME != 0;
        Ok(HandleData::new(
            inode.id,
            fd,
            on,
            allowed && decision != Noatime::Retried,
        ))
    }

    fn open_options(&self) -> OpenOptions {
        match self.cfg.cache {
            CachePolicy::Never | CachePolicy::Metadata => OpenOptions::DIRECT_IO,
            CachePolicy::Always => OpenOptions::KEEP_CACHE,
            CachePolicy::Auto => OpenOptions::empty(),
        }
    }

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

    fn stat_inode(&self, inode: &InodeData, handle: Option<u64>) -> io::Result<Stat> {
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
            |buf| sys::getdents64(h.fd(), buf),
            |e| add(e),
        )
    }

    // --- operations fuse-backend-rs 0.14's Server does not decode; see crate::protocol ---

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

    /// FUSE_TMPFILE: an unnamed regular file in `parent` (O_TMPFILE), opened for the guest.
    pub fn tmpfile(
        &self,
        ctx: &Context,
        parent: u64,
        args: &CreateIn,
    ) -> io::Result<(Entry, u64, OpenOptions)> {
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        let mut flags =
            open_flags::file_open_flags(args.flags, self.open_rules()) & !libc::O_NOATIME;
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            // O_TMPFILE requires write access.
            flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        let fd = {
            let _as = self.as_caller(ctx)?;
            self.with_umask(args.umask, || {
                sys::openat(
                    parent.fd()?.as_fd(),
                    c".",
                    flags | libc::O_TMPFILE,
                    args.mode & 0o7777,
                )
            })?
        };
        let path_fd = self.reopen(fd.as_fd(), libc::O_PATH)?;
        let st = sys::stat_fd(fd.as_fd())?;
        let inode = self.inodes.add_ref(path_fd, &st, None)?;
        let fh = self
            .handles
            .insert(HandleData::new(inode.id, fd, false, false))?;
        Ok((self.entry(&inode, st), fh, self.open_options()))
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

    /// FUSE_SYNCFS.
    pub fn syncfs(&self, inode: u64) -> io::Result<()> {
        let inode = self.inodes.get(inode)?;
        let f = inode.open(
            self.proc_self_fd.as_fd(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        sys::syncfs(f.as_fd())
    }
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
            | FsOptions::AUTO_INVAL_DATA
            | FsOptions::POSIX_LOCKS
            | FsOptions::FLOCK_LOCKS;
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
        info!("guest connected; FUSE options {enabled:?}");
        Ok(want)
    }

    fn destroy(&self) {
        info!("guest unmounted the share (FUSE_DESTROY)");
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        let parent = self.dir_inode(parent)?;
        let (inode, st) = self.do_lookup(&parent, name)?;
        Ok(self.entry(&inode, st))
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        if self.inodes.forget(inode, count) {
            self.forget_locks(inode);
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget(ctx, inode, count);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let inode = self.inodes.get(inode)?;
        let st = self.stat_inode(&inode, handle)?;
        Ok((self.guest_attr(st), self.cfg.cache.timeout()))
    }

    fn setattr(
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

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let inode = self.inodes.get(inode)?;
        if !inode.is_symlink() {
            return Err(err(libc::EINVAL));
        }
        sys::readlinkat(inode.fd()?.as_fd(), sys::EMPTY)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.make_node(ctx, parent, name, |dir| sys::symlinkat(linkname, dir, name))
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
        self.make_node(ctx, parent, name, |dir| {
            self.with_umask(umask, || sys::mknodat(dir, name, mode, u64::from(rdev)))
        })
    }

    fn mkdir(
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

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        check_name(name)?;
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        sys::unlinkat(parent.fd()?.as_fd(), name, 0)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        check_name(name)?;
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        sys::unlinkat(parent.fd()?.as_fd(), name, libc::AT_REMOVEDIR)
    }

    fn rename(
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
        sys::renameat2(
            old.fd()?.as_fd(),
            oldname,
            new.fd()?.as_fd(),
            newname,
            flags,
        )
    }

    fn link(
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
        Ok(self.entry(&inode, st))
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let inode = self.inodes.get(inode)?;
        let handle = self.open_file(&inode, flags)?;
        let fh = self.handles.insert(handle)?;
        Ok((Some(fh), self.open_options(), None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        check_name(name)?;
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        // Only ever a new file: O_CREAT without O_EXCL would open whatever the name already is,
        // following a symlink out of the share or opening a fifo (blocking this thread) or a
        // device node. An existing name is opened below as OPEN would open it.
        let mut flags = open_flags::file_open_flags(args.flags, self.open_rules())
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOFOLLOW;
        // A file we create is ours, so `auto` passes the flag and falls back on EPERM (a
        // caller we act as may not own it after all); `strip` removes it up front.
        if self.cfg.noatime == NoatimePolicy::Strip {
            flags &= !libc::O_NOATIME;
        }
        let create = |flags: i32| {
            let _as = self.as_caller(ctx)?;
            self.with_umask(args.umask, || {
                sys::openat(parent.fd()?.as_fd(), name, flags, args.mode & 0o7777)
            })
        };
        let created = match create(flags) {
            Err(e) if open_flags::retry_without_noatime(self.cfg.noatime, flags, &e) => {
                flags &= !libc::O_NOATIME;
                self.counters.record(Noatime::Retried);
                create(flags)
            }
            other => other,
        };
        let fd = match created {
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && args.flags as i32 & libc::O_EXCL == 0 =>
            {
                return self.open_existing(&parent, name, args.flags);
            }
            other => other?,
        };
        if flags & libc::O_NOATIME != 0 {
            self.counters.record(Noatime::Honoured);
        } else if args.flags as i32 & libc::O_NOATIME != 0
            && self.cfg.noatime == NoatimePolicy::Strip
        {
            self.counters.record(Noatime::Masked);
        }
        // An O_PATH fd for the inode table, taken from the open file itself so that a rename
        // racing with us cannot swap in another inode.
        let path_fd = self.reopen(fd.as_fd(), libc::O_PATH)?;
        let st = sys::stat_fd(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(err(libc::EISDIR));
        }
        let inode = self
            .inodes
            .add_ref(path_fd, &st, Some(NameKey::new(parent.id, name)))?;
        let on = flags & libc::O_NOATIME != 0;
        let fh = self.handles.insert(HandleData::new(inode.id, fd, on, on))?;
        Ok((self.entry(&inode, st), Some(fh), self.open_options(), None))
    }

    fn read(
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
        transfer(size, offset, |count, off| w.write_from(&mut io, count, off))
    }

    fn write(
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
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        self.check_writable()?;
        let h = self.handles.get(handle, inode)?;
        self.follow_noatime(&h, flags);
        let mut io = sys::HostIo(h.fd());
        transfer(size, offset, |count, off| r.read_to(&mut io, count, off))
    }

    fn flush(&self, _ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        // Nothing is buffered in the daemon. A close releases the closing owner's POSIX locks.
        self.handles.get(handle, inode)?;
        self.release_owner_locks(inode, lock_owner);
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        sys::fsync(h.fd(), datasync)
    }

    fn fallocate(
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

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.handles.remove(handle, inode).map(drop)
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let inode = self.inodes.get(inode)?;
        sys::fstatvfs(inode.fd()?.as_fd())
    }

    fn setxattr(
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
        xattr::set(inode.fd()?.as_fd(), name, value, flags)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.xattr_enabled(Opcode::Getxattr)?;
        let inode = self.inodes.get(inode)?;
        xattr::get(inode.fd()?.as_fd(), name, size)
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.xattr_enabled(Opcode::Listxattr)?;
        let inode = self.inodes.get(inode)?;
        xattr::list(inode.fd()?.as_fd(), size)
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.xattr_enabled(Opcode::Removexattr)?;
        self.check_writable()?;
        let inode = self.inodes.get(inode)?;
        xattr::remove(inode.fd()?.as_fd(), name)
    }

    fn opendir(
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

    fn readdir(
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

    fn readdirplus(
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
            let added = add_entry(dirent, self.entry(&child, st));
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

    fn fsyncdir(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        sys::fsync(h.fd(), datasync)
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.handles.remove(handle, inode).map(drop)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let inode = self.inodes.get(inode)?;
        let st = self.stat_inode(&inode, None)?;
        if mask & libc::W_OK as u32 != 0 && self.cfg.readonly {
            return Err(err(libc::EROFS));
        }
        attr::check_access(&self.guest_attr(st), ctx.uid, ctx.gid, mask)
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

impl Passthrough {
    fn xattr_enabled(&self, opcode: Opcode) -> io::Result<()> {
        if self.cfg.xattr || self.cfg.posix_acl {
            Ok(())
        } else {
            // ENOSYS makes the guest stop asking.
            self.note_unsupported(opcode as u32);
            Err(err(libc::ENOSYS))
        }
    }
}
