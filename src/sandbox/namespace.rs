//! `--sandbox=namespace`: new mount, pid and network namespaces (and a user namespace when the
//! daemon is not root), with the shared directory as the root of the new mount namespace.
//!
//! The pid namespace only applies to children, so the process forks: the child is pid 1 of the
//! new namespace and becomes the daemon; the parent stays outside as a supervisor that
//! forwards SIGTERM/SIGINT/SIGHUP (and SIGUSR1, which asks for the stats) to it and exits with its status. The child dies with its
//! parent (PR_SET_PDEATHSIG), and reaps nothing: it ignores SIGCHLD, so the kernel would reap
//! any child for it (it makes none).

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::{debug, info};

use super::sys::{self, ChildExit, Forked};
use super::{Entered, Jail, SandboxError};

/// Signals the supervisor passes on to the daemon.
pub const FORWARDED: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

/// The parent side: the sandboxed daemon's pid (in our pid namespace), the pipe whose closing
/// tells the child we are gone, and the pipe the child sends messages on (see
/// [`Jail::to_supervisor`]).
pub struct Supervisor {
    child: libc::pid_t,
    _lifeline: OwnedFd,
    messages: OwnedFd,
}

impl Supervisor {
    pub fn child_pid(&self) -> libc::pid_t {
        self.child
    }

    /// Send `sig` to the sandboxed daemon.
    pub fn signal_child(&self, sig: i32) -> io::Result<()> {
        signal(self.child, sig)
    }

    /// Forward the exit signals to the child until it ends; return how it ended, and pass
    /// each message the child sends to `on_message`. The signals and SIGCHLD are blocked
    /// (since before the fork), so none is lost in between. One thread, waiting in poll(2) on
    /// a signalfd and the message pipe: after unshare(CLONE_NEWPID) this process may not
    /// create threads.
    /// `on_signal` sees each signal before it is passed on.
    pub fn supervise(
        self,
        mut on_message: impl FnMut(&str),
        mut on_signal: impl FnMut(i32),
    ) -> io::Result<ChildExit> {
        let mut waited: Vec<i32> = FORWARDED.to_vec();
        waited.push(libc::SIGCHLD);
        let signals = sys::signalfd(&waited)?;
        let mut messages = Some(Messages::new(self.messages));
        loop {
            let pipe = messages.as_ref().map(|m| m.pipe.as_fd());
            let (signal_ready, pipe_ready) = sys::poll_two(signals.as_fd(), pipe)?;
            if pipe_ready {
                if let Some(m) = messages.as_mut() {
                    if !m.pass_on(&mut on_message)? {
                        // The child closed its end (it exited, or is about to).
                        messages = None;
                    }
                }
            }
            if !signal_ready {
                continue;
            }
            let sig = sys::read_signal(signals.as_fd())?;
            if sig == libc::SIGCHLD {
                if let Some(end) = sys::try_wait(self.child)? {
                    return Ok(end);
                }
                continue;
            }
            on_signal(sig);
            debug!("forwarding signal {sig} to the sandboxed daemon");
            signal(self.child, sig)?;
        }
    }
}

/// Send `sig` to `pid`; one that has already exited is no error (its SIGCHLD is on the way).
fn signal(pid: libc::pid_t, sig: i32) -> io::Result<()> {
    match sys::kill(pid, sig) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The supervisor's end of the message pipe: NUL-terminated messages, possibly split across
/// reads.
struct Messages {
    pipe: std::fs::File,
    pending: Vec<u8>,
}

impl Messages {
    fn new(fd: OwnedFd) -> Self {
        Self {
            pipe: fd.into(),
            pending: Vec::new(),
        }
    }

    /// Read what is there (the pipe is readable: one read does not block) and pass on every
    /// complete message. False at end of file.
    fn pass_on(&mut self, on_message: &mut impl FnMut(&str)) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        let n = match self.pipe.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            other => other?,
        };
        self.pending.extend_from_slice(&buf[..n]);
        while let Some(end) = self.pending.iter().position(|&b| b == 0) {
            let msg: Vec<u8> = self.pending.drain(..=end).collect();
            on_message(&String::from_utf8_lossy(&msg[..end]));
        }
        Ok(n > 0)
    }
}

/// A failed step of creating or entering the namespaces: the host may not allow them.
fn step(what: &'static str, unprivileged: bool) -> impl Fn(io::Error) -> SandboxError {
    move |err| SandboxError::Namespace {
        what,
        err,
        unprivileged,
    }
}

/// Create the namespaces and fork. `shared_dir` becomes the child's root. The caller must be
/// single-threaded and have SIGCHLD and [`FORWARDED`] blocked.
pub fn enter(
    shared_dir: &Path,
    as_root: bool,
    id_maps: &super::userns::NsIdMaps,
) -> Result<Entered, SandboxError> {
    // In a user namespace of our own: mounts follow its rules.
    let unprivileged = !as_root || id_maps.is_set();
    // Resolved now: after the mount namespace changes, relative paths and symlinks would be
    // resolved against a different tree.
    let shared_dir = shared_dir
        .canonicalize()
        .map_err(|e| SandboxError::Process("resolve --shared-dir", e))?;
    if id_maps.is_set() {
        super::userns::enter(id_maps)?;
    } else if unprivileged {
        // Read before unsharing: until the map is written, they read as the overflow id.
        let ids = (crate::sys::geteuid(), sys::getegid());
        sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID)
            .map_err(step("create a user namespace", unprivileged))?;
        map_own_ids(ids).map_err(step("map our uid and gid into the user namespace", true))?;
    } else {
        sys::unshare(libc::CLONE_NEWPID).map_err(step("create a pid namespace", false))?;
    }
    let (lifeline_r, lifeline_w) =
        sys::pipe().map_err(|e| SandboxError::Process("create a pipe", e))?;
    let (messages_r, messages_w) =
        sys::pipe().map_err(|e| SandboxError::Process("create a pipe", e))?;
    match sys::fork().map_err(|e| SandboxError::Process("fork", e))? {
        Forked::Parent { child } => {
            drop(lifeline_r);
            drop(messages_w);
            Ok(Entered::Supervisor(Supervisor {
                child,
                _lifeline: lifeline_w,
                messages: messages_r,
            }))
        }
        Forked::Child => {
            drop(lifeline_w);
            drop(messages_r);
            crate::sys::set_parent_death_signal(libc::SIGKILL)
                .map_err(|e| SandboxError::Process("set the parent death signal", e))?;
            // The parent may have died before the line above: then nothing would kill us.
            if sys::pipe_hung_up(lifeline_r.as_fd())
                .map_err(|e| SandboxError::Process("check on the supervisor", e))?
            {
                return Err(SandboxError::Process(
                    "start",
                    io::Error::other("the supervising process has exited"),
                ));
            }
            drop(lifeline_r);
            sys::ignore_signal(libc::SIGCHLD)
                .map_err(|e| SandboxError::Process("ignore SIGCHLD", e))?;
            let mut jail = build_root(&shared_dir, unprivileged)?;
            jail.to_supervisor = Some(messages_w);
            info!(
                "sandbox: namespace (mount, pid, net{}); {} is /",
                if unprivileged { ", user" } else { "" },
                shared_dir.display()
            );
            Ok(Entered::Jail(jail))
        }
    }
}

/// Map our own uid and gid to themselves: all an unprivileged process may map by itself. Other
/// owners show up as the overflow id (65534).
fn map_own_ids((uid, gid): (u32, u32)) -> io::Result<()> {
    // Before gid_map: an unprivileged process may only write it once setgroups is denied.
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

/// In the child: a private mount namespace whose root is `shared_dir`, and an fd for
/// `/proc/self/fd` from a proc of our own pid namespace that shows nothing else.
fn build_root(shared_dir: &Path, unprivileged: bool) -> Result<Jail, SandboxError> {
    let at = |what| step(what, unprivileged);
    sys::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET)
        .map_err(at("create mount and network namespaces"))?;
    // Slave, not private: mounts the host adds below the share still reach us, ours never
    // reach the host.
    sys::mount(None, Path::new("/"), None, libc::MS_SLAVE | libc::MS_REC)
        .map_err(at("stop mount propagation to the host"))?;
    let proc_self_fd = private_proc_self_fd(unprivileged)?;
    if shared_dir != Path::new("/") {
        pivot_to(shared_dir, unprivileged)?;
    }
    forbid_devices()?;
    Ok(Jail {
        root: PathBuf::from("/"),
        proc_self_fd,
        to_supervisor: None,
    })
}

/// Make every device node in the share unopenable for the daemon: its mounts, in our mount
/// namespace only, become nodev. The filesystem never opens a device node (the guest opens its
/// own), but a daemon taken over by the guest could make one (CAP_MKNOD, kept for the guest's
/// mknod) or find one in the share, and open it: a disk, /dev/mem. Kernels before 5.12 have no
/// mount_setattr; there the share keeps the host's mount flags, and vufsd says so.
fn forbid_devices() -> Result<(), SandboxError> {
    match sys::mount_setattr_recursive(Path::new("/"), sys::MOUNT_ATTR_NODEV) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            log::warn!(
                "this kernel has no mount_setattr (Linux < 5.12): device nodes in the share stay \
                 openable by the daemon (only a daemon taken over by the guest would open one)"
            );
            Ok(())
        }
        Err(e) => Err(SandboxError::Process("make the share's mounts nodev", e)),
    }
}

/// A fresh proc for our pid namespace (so `self` is us), with `/proc/self/fd` bind-mounted over
/// it: the fd we keep then has no parent directory to climb to once the old root is gone.
fn private_proc_self_fd(unprivileged: bool) -> Result<OwnedFd, SandboxError> {
    let at = |what| step(what, unprivileged);
    let proc = Path::new("/proc");
    sys::mount(
        Some(Path::new("proc")),
        proc,
        Some(c"proc"),
        libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_RELATIME,
    )
    .map_err(at("mount a proc for the new pid namespace"))?;
    sys::mount(Some(Path::new("/proc/self/fd")), proc, None, libc::MS_BIND)
        .map_err(at("bind-mount /proc/self/fd"))?;
    sys::open_dir_path(proc).map_err(at("open /proc/self/fd"))
}

/// Make `new_root` the root: bind it onto itself (pivot_root wants a mount point), pivot, and
/// detach the old root so nothing of the host's tree stays reachable.
fn pivot_to(new_root: &Path, unprivileged: bool) -> Result<(), SandboxError> {
    let at = |what| step(what, unprivileged);
    sys::mount(Some(new_root), new_root, None, libc::MS_BIND | libc::MS_REC)
        .map_err(at("bind-mount the shared directory"))?;
    let old_root = sys::open_dir_path(Path::new("/")).map_err(at("open the old root"))?;
    sys::chdir(new_root).map_err(at("enter the shared directory"))?;
    sys::pivot_root_to_cwd().map_err(at("pivot_root into the shared directory"))?;
    // The old root now sits on top of the new one; unmount it from there.
    crate::sys::fchdir(old_root.as_fd()).map_err(at("enter the old root"))?;
    sys::mount(None, Path::new("."), None, libc::MS_SLAVE | libc::MS_REC)
        .map_err(at("stop mount propagation from the old root"))?;
    sys::umount_detach(Path::new(".")).map_err(at("unmount the old root"))?;
    sys::chdir(Path::new("/")).map_err(at("enter the new root"))?;
    Ok(())
}
