//! Keeping a guest in: what the daemon process itself may reach, beyond the filesystem's own
//! rule of never leaving the shared directory (fs/). Should a hostile guest find a bug that lets
//! it run code in vufsd, the sandbox decides what that code finds:
//!
//! - [`namespace`] (the default): new mount, pid and network namespaces, plus a user namespace
//!   when not root; the shared directory is the root; no host files, processes or network;
//! - chroot(2) into the shared directory, for hosts that forbid namespaces (root only);
//! - none, for a daemon that already runs inside someone else's sandbox.
//!
//! Then, whatever the mode: supplementary groups dropped (root), capabilities reduced to what
//! the passthrough filesystem needs ([`caps`]), RLIMIT_NOFILE raised ([`rlimit`]), and a seccomp
//! allowlist ([`seccomp`]). The order matters and is the daemon's (see daemon::run):
//! socket → [`prepare`] → [`enter`] → filesystem → [`restrict_syscalls`] → threads.
//! See docs/security.md for the threat model.

pub mod caps;
pub mod namespace;
pub mod rlimit;
pub mod seccomp;
mod sys;
pub mod userns;

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use log::info;

pub use caps::{CapChanges, CapSet};
pub use namespace::Supervisor;
pub use sys::ChildExit;

/// `--sandbox`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Namespace,
    Chroot,
    None,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Namespace => "namespace",
            Mode::Chroot => "chroot",
            Mode::None => "none",
        })
    }
}

/// Everything the sandbox takes from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    /// None: no seccomp filter (`--seccomp=none`).
    pub seccomp: Option<seccomp::Action>,
    pub modcaps: CapChanges,
    /// `--rlimit-nofile`; None: the default raise.
    pub rlimit_nofile: Option<u64>,
    /// Keep CAP_DAC_READ_SEARCH for opening file handles (`--inode-file-handles=prefer` or
    /// `mandatory`; not by default).
    pub file_handles: bool,
    /// `--uid-map` / `--gid-map`: the user namespace to run in (namespace mode only).
    pub id_maps: userns::NsIdMaps,
}

/// Where the filesystem finds its root and `/proc/self/fd` once the sandbox is entered.
pub struct Jail {
    /// The shared directory as the daemon now sees it (`/` inside a namespace or chroot).
    pub root: PathBuf,
    /// `/proc/self/fd` of this process, opened where the sandbox still allowed it.
    pub proc_self_fd: OwnedFd,
    /// In the namespace sandbox: a pipe to the supervisor, for messages it should pass on
    /// (see [`Supervisor::supervise`]), each one write(2) of text ending in a NUL byte.
    pub to_supervisor: Option<OwnedFd>,
}

/// Why the sandbox could not be set up. Each message names the cause and what to do instead.
#[derive(Debug)]
pub enum SandboxError {
    ChrootNeedsRoot,
    Namespace {
        what: &'static str,
        err: io::Error,
        unprivileged: bool,
    },
    /// A step of the namespace sandbox that namespaces being forbidden cannot explain.
    Process(&'static str, io::Error),
    Chroot(&'static str, io::Error),
    Proc(io::Error),
    Groups(io::Error),
    Caps(io::Error),
    Rlimit(String),
    Seccomp(String),
    Supervise(io::Error),
    /// `--uid-map` / `--gid-map` that cannot be used, or could not be set up.
    IdMap(String),
}

impl fmt::Display for SandboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SandboxError::ChrootNeedsRoot => write!(
                f,
                "--sandbox=chroot needs root: use --sandbox=namespace (which adds a user namespace \
                 for an unprivileged user), or --sandbox=none inside a sandbox of your own"
            ),
            SandboxError::Namespace {
                what,
                err,
                unprivileged: true,
            } => write!(
                f,
                "cannot set up --sandbox=namespace (the default): {what}: {err}: this host does \
                 not let unprivileged users create user namespaces (sysctl \
                 user.max_user_namespaces or kernel.unprivileged_userns_clone, or an AppArmor \
                 policy): use --sandbox=none, inside a sandbox of your own"
            ),
            SandboxError::Namespace { what, err, .. } => write!(
                f,
                "cannot set up --sandbox=namespace (the default): {what}: {err}: namespaces are \
                 not allowed here (a container without CAP_SYS_ADMIN?): use --sandbox=chroot, \
                 or --sandbox=none inside a sandbox of your own"
            ),
            SandboxError::Process(what, err) => {
                write!(f, "cannot set up --sandbox=namespace: {what}: {err}")
            }
            SandboxError::Chroot(what, err) => write!(
                f,
                "cannot set up --sandbox=chroot: {what}: {err}: use --sandbox=none inside a \
                 sandbox of your own"
            ),
            SandboxError::Proc(err) => write!(
                f,
                "cannot open /proc/self/fd: {err}: vufsd needs /proc mounted (for --sandbox=none \
                 and chroot)"
            ),
            SandboxError::Groups(err) => write!(f, "cannot drop supplementary groups: {err}"),
            SandboxError::Caps(err) => write!(f, "cannot drop capabilities: {err}"),
            SandboxError::Rlimit(msg) => f.write_str(msg),
            SandboxError::Seccomp(msg) => write!(
                f,
                "cannot install the seccomp filter: {msg}: use --seccomp=none if this kernel \
                 has no seccomp"
            ),
            SandboxError::Supervise(err) => {
                write!(f, "lost track of the sandboxed daemon: {err}")
            }
            SandboxError::IdMap(msg) => write!(f, "cannot set up --uid-map/--gid-map: {msg}"),
        }
    }
}

impl std::error::Error for SandboxError {}

/// What [`enter`] leaves this process as.
pub enum Entered {
    /// The namespace sandbox's parent: supervise the daemon, then exit with its status.
    Supervisor(Supervisor),
    /// The daemon, inside the sandbox.
    Jail(Jail),
}

fn is_root() -> bool {
    crate::sys::geteuid() == 0
}

/// Checks that need no side effect, made before the socket is created so that a refusal leaves
/// nothing behind.
pub fn check(cfg: &Config) -> Result<(), SandboxError> {
    if cfg.mode == Mode::Chroot && !is_root() {
        return Err(SandboxError::ChrootNeedsRoot);
    }
    if cfg.id_maps.is_set() {
        cfg.id_maps.validate().map_err(SandboxError::IdMap)?;
        if cfg.mode != Mode::Namespace {
            return Err(SandboxError::IdMap(format!(
                "they need --sandbox=namespace (the default), not --sandbox={}: the maps \
                 belong to the daemon's user namespace",
                cfg.mode
            )));
        }
        if cfg.file_handles {
            return Err(SandboxError::IdMap(
                "--inode-file-handles=prefer or mandatory cannot be used with them: \
                 open_by_handle_at needs CAP_DAC_READ_SEARCH outside any user namespace"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Whether the daemon will keep CAP_DAC_READ_SEARCH (and so may open file handles) once
/// [`enter`] reduced its capabilities: root, file handles chosen or the capability added with
/// `--modcaps` (and not removed), and held now. Unprivileged, capabilities in a user namespace
/// of our own would not count for open_by_handle_at.
pub fn keeps_dac_read_search(cfg: &Config) -> bool {
    let base = if cfg.file_handles {
        CapSet::PASSTHROUGH_WITH_HANDLES
    } else {
        CapSet::PASSTHROUGH
    };
    is_root()
        && !cfg.id_maps.is_set()
        && cfg.modcaps.apply(base).contains(caps::CAP_DAC_READ_SEARCH)
        && sys::capget().is_ok_and(|c| CapSet(c.permitted).contains(caps::CAP_DAC_READ_SEARCH))
}

/// Steps that need privileges the sandbox takes away, done while the daemon still has them:
/// the open file limit (its hard limit needs CAP_SYS_RESOURCE) and root's supplementary groups
/// (which the guest's users would otherwise borrow whenever the daemon acts as them).
pub fn prepare(cfg: &Config) -> Result<(), SandboxError> {
    let nofile = rlimit::apply_nofile(cfg.rlimit_nofile).map_err(SandboxError::Rlimit)?;
    info!("open file limit: {nofile}");
    if is_root() && sys::supplementary_groups().map_err(SandboxError::Groups)? > 0 {
        match sys::clear_groups() {
            // Root of a user namespace where setgroups(2) is denied: the groups cannot change,
            // for us or for anyone we could act as.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && setgroups_denied() => {
                info!("supplementary groups kept: setgroups is denied in this user namespace");
            }
            other => other.map_err(SandboxError::Groups)?,
        }
    }
    Ok(())
}

/// Enter the sandbox `cfg.mode` with `shared_dir` as its root, then reduce capabilities. Must
/// be called while the process is single-threaded, with the exit signals blocked; in the
/// namespace mode it also blocks SIGCHLD and forks.
pub fn enter(cfg: &Config, shared_dir: &Path) -> Result<Entered, SandboxError> {
    let as_root = is_root();
    let jail = match cfg.mode {
        Mode::Namespace => {
            crate::sys::block_signals(&[libc::SIGCHLD]).map_err(SandboxError::Supervise)?;
            match namespace::enter(shared_dir, as_root, &cfg.id_maps)? {
                Entered::Supervisor(sup) => {
                    // The supervisor needs no privilege to wait and forward signals.
                    caps::restrict_to(CapSet::EMPTY).map_err(SandboxError::Caps)?;
                    return Ok(Entered::Supervisor(sup));
                }
                Entered::Jail(jail) => jail,
            }
        }
        Mode::Chroot => {
            // Opened while /proc is still reachable.
            let proc_self_fd = open_proc_self_fd()?;
            sys::chroot(shared_dir)
                .map_err(|e| SandboxError::Chroot("chroot into the shared directory", e))?;
            sys::chdir(Path::new("/")).map_err(|e| SandboxError::Chroot("chdir /", e))?;
            info!("sandbox: chroot; {} is /", shared_dir.display());
            Jail {
                root: PathBuf::from("/"),
                proc_self_fd,
                to_supervisor: None,
            }
        }
        Mode::None => {
            info!("sandbox: none");
            Jail {
                root: shared_dir.to_owned(),
                proc_self_fd: open_proc_self_fd()?,
                to_supervisor: None,
            }
        }
    };
    // Root keeps what passthrough needs. In a user namespace of our own, capabilities would
    // only cover files of the daemon's own user, which it owns anyway: keep none by default,
    // so the daemon behaves exactly as with --sandbox=none.
    // With --uid-map the daemon is root of its user namespace: passthrough's capabilities
    // there cover the mapped ids only.
    let base = match (as_root || cfg.id_maps.is_set(), cfg.file_handles) {
        (true, true) => CapSet::PASSTHROUGH_WITH_HANDLES,
        (true, false) => CapSet::PASSTHROUGH,
        (false, _) => CapSet::EMPTY,
    };
    let r = caps::restrict_to(cfg.modcaps.apply(base)).map_err(SandboxError::Caps)?;
    if !r.missing.is_empty() {
        // Often on purpose (a service manager's bounding set); worth a line, not a warning.
        info!("capabilities not held, so not kept: {}", r.missing);
    }
    info!("capabilities: {}", r.kept);
    Ok(Entered::Jail(jail))
}

fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

fn open_proc_self_fd() -> Result<OwnedFd, SandboxError> {
    sys::open_dir_path(Path::new("/proc/self/fd")).map_err(SandboxError::Proc)
}

/// Install the seccomp filter (unless `--seccomp=none`). After this, no new kind of system call:
/// call it once everything that needs one is set up, before the first thread.
pub fn restrict_syscalls(cfg: &Config) -> Result<(), SandboxError> {
    match cfg.seccomp {
        None => {
            info!("seccomp: none");
            Ok(())
        }
        Some(action) => {
            // open_by_handle_at only for a daemon that kept the capability it needs: one that
            // gets it back some other way still cannot open a forged handle.
            let handles = sys::capget()
                .is_ok_and(|c| CapSet(c.effective).contains(caps::CAP_DAC_READ_SEARCH));
            let allowed = seccomp::install(action, handles).map_err(SandboxError::Seccomp)?;
            info!(
                "seccomp: {action} on calls outside an allowlist of {allowed}{}",
                if handles {
                    ""
                } else {
                    "; open_by_handle_at refused (EPERM)"
                }
            );
            Ok(())
        }
    }
}
