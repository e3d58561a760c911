//! The passthrough filesystem: FUSE operations served from a host directory.
//!
//! Every host syscall is made relative to an fd we hold (`*at` calls on O_PATH fds, or
//! `/proc/self/fd/N` reopens), never through an absolute host path, and never following a
//! symlink on the host: a guest can only name inodes it reached by lookups from the root, one
//! component at a time.
//!
//! One concern per module: `filesystem` is fuse-backend-rs's `FileSystem` trait, each method
//! handing over to the module of its concern — `entries` (lookup, forget, making, removing,
//! renaming and linking names), `open` (OPEN, CREATE, TMPFILE, RELEASE), `file_io` (READ,
//! WRITE, syncs, FALLOCATE, LSEEK, COPY_FILE_RANGE), `directories` (OPENDIR, READDIR(PLUS)),
//! `attr` (GETATTR, SETATTR, ACCESS, STATFS, inode ioctls), `xattr` and `locks`. Below them:
//! `inodes` (the node table), `handles` (open files), `open_flags` (which guest flags reach the
//! host), `dir` (getdents64), `creds` (acting as the caller), `idmap`, `config`. The few
//! operations fuse-backend-rs 0.14's Server does not decode (COPY_FILE_RANGE, SYNCFS, TMPFILE,
//! IOCTL, the locks) are `pub` methods that `crate::protocol` calls.

mod attr;
mod config;
mod creds;
mod dir;
mod directories;
mod entries;
mod faults;
mod file_io;
mod filesystem;
mod handles;
mod idhash;
pub mod idmap;
pub mod inodes;
mod locks;
mod migrate;
mod open;
pub mod open_flags;
mod read_ends;
mod xattr;
pub mod xattrmap;

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::Opcode;
use fuse_backend_rs::api::filesystem::{Context, Entry};
use log::{debug, info};

use crate::sys::{self, Stat};
use creds::AsCaller;
use handles::HandleStore;
use inodes::{InodeData, InodeStore};
use open_flags::{DaemonCreds, NoatimeCounters, OpenRules};

pub use config::{CachePolicy, Config, FileHandles};
pub use open_flags::Noatime;

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
    /// Set by FUSE_INIT when --announce-submounts met a guest that takes FUSE_ATTR_SUBMOUNT.
    submounts: AtomicBool,
    /// Set by FUSE_INIT when --killpriv-v2 met a guest that leaves killing privileges to us.
    killpriv_v2: AtomicBool,
    /// Set when FUSE_INIT negotiated FUSE_SETXATTR_EXT (the dispatcher patches it into the
    /// reply): SETXATTR then carries the guest's ACL_KILL_SGID decision.
    setxattr_ext: AtomicBool,
    counters: NoatimeCounters,
    /// Storage failures on the host, logged once per kind.
    faults: faults::HostFaults,
    /// Per host device, whether a short read means end of file.
    read_ends: read_ends::ReadEnds,
    /// RLIMIT_NOFILE as it was set up (read once: the seccomp filter has no getrlimit).
    fd_limit: u64,
    /// Paths and handles collected while a migration copies the guest's RAM (`migrate`).
    migration_prep: std::sync::Mutex<Option<migrate::Prepared>>,
    locks: locks::LockTable,
    /// FUSE opcodes answered ENOSYS, with counts, for the exit summary.
    unsupported: std::sync::Mutex<std::collections::BTreeMap<u32, u64>>,
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
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
        let hold = config::hold_policy(&cfg, caps, cwd.as_fd())?;
        info!(
            "serving {} (uid {euid}, CAP_FOWNER {}, O_NOATIME policy {})",
            shown.display(),
            if creds.cap_fowner { "yes" } else { "no" },
            cfg.noatime
        );
        let root_dir = sys::openat(cwd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let inodes = InodeStore::new(cwd, &root_st, hold);
        // Room for the first few thousand fds now, while the daemon is single-threaded: once
        // it has threads, every doubling of the fd table waits for an RCU grace period (a few
        // milliseconds each: a guest's first walk, a migration's restore). 32 KiB of kernel
        // memory.
        let fd_limit = sys::nofile_limit();
        sys::reserve_fds(proc_self_fd.as_fd(), 4096, fd_limit);
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
            submounts: AtomicBool::new(false),
            killpriv_v2: AtomicBool::new(false),
            setxattr_ext: AtomicBool::new(false),
            counters: NoatimeCounters::default(),
            faults: Default::default(),
            read_ends: Default::default(),
            fd_limit,
            migration_prep: Default::default(),
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

    /// What the daemon holds now, for `--stats-socket` and SIGUSR1.
    pub fn holdings(&self) -> crate::stats::Holdings {
        let (inodes, handles) = self.table_sizes();
        crate::stats::Holdings {
            inodes,
            handles,
            inode_fds: self.inodes.fds_held(),
            inode_fd_budget: self.inodes.fd_budget(),
            fds: self.open_fds().unwrap_or(0),
            fd_limit: self.fd_limit,
            noatime: self.noatime_counters(),
        }
    }

    /// Open fds of the process: the entries of /proc/self/fd (through our fd for it: inside a
    /// sandbox /proc has no path).
    fn open_fds(&self) -> io::Result<usize> {
        let dir = sys::openat(
            self.proc_self_fd.as_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut count = 0usize;
        loop {
            buf.clear();
            if sys::getdents64_into(dir.as_fd(), &mut buf)? == 0 {
                break;
            }
            count += dir::entries(&buf).count();
        }
        // Not ".", "..", nor the fd just opened to count them.
        Ok(count.saturating_sub(3))
    }

    /// Inodes and handles currently held, for diagnostics.
    /// Give back the memory of what the guest forgot, once its FORGETs stopped coming.
    pub fn settle_memory(&self) {
        self.inodes.settle_memory();
    }

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
        AsCaller::new(self.can_switch_creds, uid, gid)
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

    /// The entry for `inode` (stat `st`) found in directory `parent`: a directory on another
    /// device than its parent is a host mount point, announced as a submount when the guest
    /// agreed (the guest then gives it a device number of its own).
    fn entry(&self, parent: &InodeData, inode: &InodeData, st: Stat) -> Entry {
        let timeout = self.cfg.cache.timeout();
        let submount = self.submounts.load(Ordering::Relaxed)
            && st.st_mode & libc::S_IFMT == libc::S_IFDIR
            && st.st_dev != parent.key.dev;
        Entry {
            inode: inode.id,
            generation: 0,
            attr: self.guest_attr(st),
            attr_flags: if submount {
                fuse_backend_rs::abi::fuse_abi::ATTR_SUBMOUNT
            } else {
                0
            },
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
}
