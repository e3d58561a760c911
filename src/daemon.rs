//! The daemon's life: check the inputs, get a listening socket, serve one frontend connection,
//! and exit — 0 when the frontend disconnects, 1 with one clear line when something is wrong.

use std::ffi::CString;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use log::{error, info, warn};
use vhost::vhost_user::{Error as VhostError, Listener};
use vhost_user_backend::{Error as BackendError, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;

use crate::cli::Opt;
use crate::device::{FsDevice, GuestRam};
use crate::fs::Passthrough;
use crate::lifeline::{self, Parent};
use crate::protocol::Dispatcher;
use crate::sandbox::{self, ChildExit, Entered, SandboxError, Supervisor};
use crate::sys;
use crate::systemd::{self, ActivationError};

/// Everything that stops the daemon with exit code 1. Each message names the cause and the fix.
#[derive(Debug)]
pub enum DaemonError {
    SharedDirMissing(PathBuf),
    SharedDirNotDir(PathBuf),
    SharedDirAccess(PathBuf, io::Error),
    SocketInUse(PathBuf),
    SocketNotASocket(PathBuf),
    SocketDirMissing(PathBuf),
    SocketDirNotWritable(PathBuf, u32),
    SocketBind(PathBuf, io::Error),
    BadFd(i32, io::Error),
    NoSocket,
    Activation(ActivationError),
    BadActivationFd(io::Error),
    SocketGroup(String, Option<io::Error>),
    Sandbox(SandboxError),
    NoSharedMemory,
    Options(String),
    Setup(String, io::Error),
    Frontend(String),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DaemonError::*;
        match self {
            SharedDirMissing(p) => write!(
                f,
                "shared directory {} does not exist: create it or point --shared-dir at an existing directory",
                p.display()
            ),
            SharedDirNotDir(p) => write!(
                f,
                "--shared-dir {} is not a directory: share a directory, not a file",
                p.display()
            ),
            SharedDirAccess(p, e) => write!(
                f,
                "cannot open shared directory {}: {e}: run vufsd as a user who can read it",
                p.display()
            ),
            SocketInUse(p) => write!(
                f,
                "socket {} is in use by a running daemon: stop that daemon or choose another --socket-path",
                p.display()
            ),
            SocketNotASocket(p) => write!(
                f,
                "{} exists and is not a socket: remove it or choose another --socket-path",
                p.display()
            ),
            SocketDirMissing(d) => write!(
                f,
                "cannot create the socket: directory {} does not exist: create it first",
                d.display()
            ),
            SocketDirNotWritable(d, uid) => write!(
                f,
                "cannot create the socket: directory {} is not writable by uid {uid}: choose a --socket-path in a directory you can write",
                d.display()
            ),
            SocketBind(p, e) => write!(
                f,
                "cannot listen on {}: {e}: choose another --socket-path",
                p.display()
            ),
            BadFd(fd, e) => write!(
                f,
                "--fd {fd} is not a listening unix socket ({e}): pass the fd of a socket that is bound and listening"
            ),
            NoSocket => write!(
                f,
                "no socket to listen on: give --socket-path PATH or --fd FD, or start vufsd from a systemd socket unit"
            ),
            Activation(e) => write!(f, "{e}"),
            BadActivationFd(e) => write!(
                f,
                "the socket passed by systemd (fd 3) is not a listening unix socket ({e}): use ListenStream= with a path in the socket unit"
            ),
            SocketGroup(g, None) => write!(
                f,
                "--socket-group {g}: no such group: name an existing group (or a numeric gid)"
            ),
            SocketGroup(g, Some(e)) => write!(
                f,
                "--socket-group {g}: cannot give the socket to that group: {e}: run vufsd as root or as a member of the group"
            ),
            Sandbox(e) => write!(f, "{e}"),
            NoSharedMemory => write!(
                f,
                "the frontend gave no shareable guest memory: start QEMU with \
                 `-object memory-backend-memfd,id=mem,size=<guest RAM>,share=on -numa node,memdev=mem` \
                 (or `-machine memory-backend=mem`); vhost-user needs guest RAM in a shared memfd or file"
            ),
            Setup(what, e) => write!(f, "{what}: {e}"),
            Options(msg) => write!(f, "{msg}"),
            Frontend(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for DaemonError {}

/// Check --shared-dir before anything else, so a typo gets a clear message.
fn check_shared_dir(dir: &Path) -> Result<(), DaemonError> {
    match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(DaemonError::SharedDirNotDir(dir.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(DaemonError::SharedDirMissing(dir.to_owned()))
        }
        Err(e) => Err(DaemonError::SharedDirAccess(dir.to_owned(), e)),
    }
}

/// Whether some process listens on the unix socket bound at `path` (in this network
/// namespace). Read from /proc/net/unix rather than by connecting: a vhost-user daemon serves
/// the first connection it accepts, so a probing connect would take a live daemon's one
/// connection and make it exit.
fn has_live_listener(path: &Path) -> bool {
    const SO_ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let abs = absolute(path);
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let listening = cols
            .get(3)
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .is_some_and(|flags| flags & SO_ACCEPTCON != 0);
        listening
            && cols
                .get(7)
                .is_some_and(|p| Path::new(p) == path || Some(Path::new(p)) == abs.as_deref())
    })
}

/// `path` made absolute through its (canonicalised) parent, without resolving the socket itself.
fn absolute(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(name))
}

fn socket_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Create the listening socket at `path`, replacing a stale socket file but never a live one.
fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if has_live_listener(path) {
                return Err(DaemonError::SocketInUse(path.to_owned()));
            }
            info!("replacing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|e| map_bind_error(path, e))?;
        }
        Ok(_) => return Err(DaemonError::SocketNotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(map_bind_error(path, e)),
    }
    UnixListener::bind(path).map_err(|e| map_bind_error(path, e))
}

fn map_bind_error(path: &Path, e: io::Error) -> DaemonError {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            DaemonError::SocketDirNotWritable(socket_dir(path), sys::geteuid())
        }
        Some(libc::ENOENT) if !socket_dir(path).is_dir() => {
            DaemonError::SocketDirMissing(socket_dir(path))
        }
        Some(libc::EADDRINUSE) => DaemonError::SocketInUse(path.to_owned()),
        _ => DaemonError::SocketBind(path.to_owned(), e),
    }
}

/// The socket file we created, removable from inside the sandbox (where its path means
/// nothing): by name, in its directory, held open since before the sandbox was entered. Held
/// only until the frontend has connected, so the daemon keeps no handle on the host's tree while
/// it serves the guest.
struct SocketFile {
    dir: OwnedFd,
    name: CString,
    path: PathBuf,
}

impl SocketFile {
    fn new(path: &Path) -> Result<Self, DaemonError> {
        let setup = |e| {
            DaemonError::Setup(
                format!("cannot open the directory of {}", path.display()),
                e,
            )
        };
        let dir = CString::new(socket_dir(path).as_os_str().as_encoded_bytes())
            .map_err(|_| setup(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let name = path
            .file_name()
            .and_then(|n| CString::new(n.as_encoded_bytes()).ok())
            .ok_or_else(|| setup(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let cwd = std::fs::File::open(".").map_err(setup)?;
        let dir =
            sys::openat(cwd.as_fd(), &dir, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(setup)?;
        Ok(Self {
            dir,
            name,
            path: path.to_owned(),
        })
    }

    fn remove(self) {
        if let Err(e) = sys::unlinkat(self.dir.as_fd(), &self.name, 0) {
            warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// The socket file, shared by the serving path and the signal thread: whoever comes first
/// removes it.
type SocketSlot = Arc<Mutex<Option<SocketFile>>>;

fn remove_socket(slot: &SocketSlot) {
    if let Some(file) = slot.lock().ok().and_then(|mut s| s.take()) {
        file.remove();
    }
}

/// The listening socket, from (in this order) --fd, systemd socket activation, or
/// --socket-path; the socket file is returned when we created it, so it can be removed once
/// served.
fn listener(opt: &Opt) -> Result<(UnixListener, Option<SocketFile>), DaemonError> {
    // Always read (and clear) the activation variables, so that they cannot leak even when an
    // explicit --fd wins (and then their content does not matter).
    let activated = systemd::take_activation_fd();
    if let Some(fd) = opt.fd {
        let l = sys::take_listening_socket(fd).map_err(|e| DaemonError::BadFd(fd, e))?;
        return Ok((l, None));
    }
    if let Some(fd) = activated.map_err(DaemonError::Activation)? {
        if let Some(p) = opt.socket_path() {
            // The unit's ListenStream= decides where QEMU connects; a --socket-path left in
            // the configuration must not make us bind a second, unused socket.
            info!(
                "using the socket passed by systemd; --socket-path {} is not used",
                p.display()
            );
        }
        let l = sys::take_listening_socket(fd).map_err(DaemonError::BadActivationFd)?;
        return Ok((l, None));
    }
    let path = opt.socket_path().ok_or(DaemonError::NoSocket)?;
    let l = bind_socket(path)?;
    if let Some(group) = &opt.socket_group {
        give_socket_to_group(path, group)?;
    }
    Ok((l, Some(SocketFile::new(path)?)))
}

/// `--stats-socket`: its owner only (0600), or also `group` (0660).
fn restrict_stats_socket(path: &Path, group: Option<&str>) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    match group {
        Some(g) => give_socket_to_group(path, g),
        None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| DaemonError::Setup(format!("cannot restrict {}", path.display()), e)),
    }
}

/// `--socket-group`: let members of `group` connect (QEMU often runs as another user in the
/// `kvm` group), and nobody else.
fn give_socket_to_group(path: &Path, group: &str) -> Result<(), DaemonError> {
    let gid = match group.parse::<u32>() {
        Ok(gid) => gid,
        Err(_) => sys::group_id(group)
            .map_err(|e| DaemonError::SocketGroup(group.to_owned(), Some(e)))?
            .ok_or_else(|| DaemonError::SocketGroup(group.to_owned(), None))?,
    };
    std::os::unix::fs::chown(path, None, Some(gid))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        })
        .map_err(|e| DaemonError::SocketGroup(group.to_owned(), Some(e)))
}

/// The signals the signal thread waits for: the exit signals, and SIGUSR1 (log the stats).
const HANDLED_SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

/// Handle SIGTERM/SIGINT/SIGHUP on a thread of their own: log, clean up, exit 0. With
/// `--exit-with-parent`, the parent's exit arrives here as a SIGTERM too.
fn spawn_signal_thread(
    dispatcher: Arc<Dispatcher>,
    socket: SocketSlot,
    stats_socket: SocketSlot,
    parent: Option<Parent>,
) -> Result<(), DaemonError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = sys::wait_signal(&HANDLED_SIGNALS) {
                if sig == libc::SIGUSR1 {
                    info!(
                        "{}",
                        dispatcher.stats().summary(&dispatcher.fs().holdings())
                    );
                    continue;
                }
                match parent.filter(|p| sig == libc::SIGTERM && p.is_gone()) {
                    Some(p) => warn!("{}", p.exit_message()),
                    None => info!("received signal {sig}, exiting"),
                }
                log_summary(&dispatcher);
                remove_socket(&socket);
                remove_socket(&stats_socket);
                std::process::exit(0);
            }
        })
        .map(drop)
        .map_err(|e| DaemonError::Setup("cannot start the signal thread".into(), e))
}

/// Where the daemon tells a service manager how it is doing (sd_notify): nowhere, straight to
/// `$NOTIFY_SOCKET` (connected before entering the sandbox, which cuts the way there), or, from
/// inside the namespace sandbox, through the supervisor: it is the process the service manager
/// started (its main PID), and it can still reach the socket.
enum StatusSink {
    Nobody,
    Manager(systemd::Notifier),
    Supervisor(std::fs::File),
}

impl StatusSink {
    /// A failure is logged, not fatal: the daemon works the same without a manager watching.
    fn notify(&self, state: &str) {
        let sent = match self {
            StatusSink::Nobody => Ok(()),
            StatusSink::Manager(n) => n.send(state),
            // One write, so the message arrives whole (see sandbox::Jail::to_supervisor).
            StatusSink::Supervisor(pipe) => (&*pipe).write_all(format!("{state}\0").as_bytes()),
        };
        if let Err(e) = sent {
            warn!("cannot notify the service manager ({state:?}): {e}");
        }
    }
}

/// `$NOTIFY_SOCKET`, connected now while it can be reached.
fn connect_notifier() -> Option<systemd::Notifier> {
    systemd::Notifier::connect().unwrap_or_else(|e| {
        warn!("cannot notify the service manager: NOTIFY_SOCKET: {e}");
        None
    })
}

fn log_summary(dispatcher: &Dispatcher) {
    let fs = dispatcher.fs();
    let (honoured, masked, retried) = fs.noatime_counters();
    let (inodes, handles) = fs.table_sizes();
    info!(
        "O_NOATIME opens: {honoured} honoured, {masked} masked, {retried} retried; \
         {inodes} inodes and {handles} handles still held"
    );
    let unsupported = dispatcher.unsupported_opcodes();
    if !unsupported.is_empty() {
        info!("FUSE opcodes answered ENOSYS (opcode x count): {unsupported:?}");
    }
    if let Some(t) = dispatcher.tracer() {
        t.flush();
    }
}

/// The namespace sandbox's parent: wait for the sandboxed daemon and exit as it did.
fn supervise(
    supervisor: Supervisor,
    notifier: Option<systemd::Notifier>,
    parent: Option<Parent>,
) -> Result<ExitCode, DaemonError> {
    let pid = supervisor.child_pid();
    let sink = notifier.map_or(StatusSink::Nobody, StatusSink::Manager);
    // The supervisor is the process the parent started: it watches the parent, and passes the
    // SIGTERM of the parent's exit on to the sandboxed daemon like any other.
    if let Some(p) = parent {
        if !arm(&p)? {
            // Gone already: stop the daemon as the parent's SIGTERM would have.
            supervisor
                .signal_child(libc::SIGTERM)
                .map_err(|e| DaemonError::Sandbox(SandboxError::Supervise(e)))?;
        }
    }
    let on_signal = move |sig| {
        if let Some(p) = parent.filter(|p| sig == libc::SIGTERM && p.is_gone()) {
            warn!("{}", p.exit_message());
        }
    };
    match supervisor
        .supervise(move |state| sink.notify(state), on_signal)
        .map_err(|e| DaemonError::Sandbox(SandboxError::Supervise(e)))?
    {
        ChildExit::Code(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        ChildExit::Signal(sig) => {
            let why = if sig == libc::SIGSYS {
                ": it made a system call outside the seccomp allowlist; the kernel log names \
                 it (dmesg | grep type=1326), see docs/security.md"
            } else {
                ""
            };
            error!("the sandboxed daemon (pid {pid}) was killed by signal {sig}{why}");
            Ok(ExitCode::from(128u8.saturating_add(sig as u8)))
        }
    }
}

/// Run the daemon to completion; the exit code is the sandboxed daemon's when this process
/// only supervises it.
pub fn run(opt: &Opt) -> Result<ExitCode, DaemonError> {
    // First, so that a parent exiting while we start is noticed (see Parent::arm).
    let parent = opt.exit_with_parent.then(Parent::record);
    // Before any thread exists, so that every thread inherits the mask.
    sys::block_signals(&HANDLED_SIGNALS)
        .map_err(|e| DaemonError::Setup("cannot block signals".into(), e))?;
    // So that the memory a large tree's inodes took is given back once they are forgotten.
    sys::fix_trim_threshold();

    let sandbox_cfg = opt.sandbox_config();
    sandbox::check(&sandbox_cfg).map_err(DaemonError::Sandbox)?;
    check_shared_dir(&opt.shared_dir)?;
    // Options that cannot go together are refused before a socket exists.
    let fs_config = opt.fs_config().map_err(DaemonError::Options)?;
    check_file_handles(&fs_config, &sandbox_cfg, &opt.shared_dir)?;
    // The socket is created outside the sandbox: its path may be anywhere on the host.
    let (unix_listener, socket_file) = listener(opt)?;
    let created = socket_file.as_ref().map(|s| s.path.clone());
    let socket_file: SocketSlot = Arc::new(Mutex::new(socket_file));
    let served = serve(
        opt,
        &sandbox_cfg,
        fs_config,
        Listening {
            listener: unix_listener,
            created,
            socket_file: &socket_file,
        },
        parent,
    );
    if served.is_err() {
        // A daemon that failed to start (here, or as the sandboxed child) leaves no socket
        // file for QEMU to wait on.
        remove_socket(&socket_file);
    }
    served
}

/// `--inode-file-handles=mandatory` where file handles cannot be used is refused before anything
/// is set up: the daemon would not keep CAP_DAC_READ_SEARCH, or the shared filesystem has no
/// handles. (The filesystem checks again with the capabilities it ends up with.)
fn check_file_handles(
    fs: &crate::fs::Config,
    sandbox_cfg: &sandbox::Config,
    dir: &Path,
) -> Result<(), DaemonError> {
    if fs.file_handles != crate::fs::FileHandles::Mandatory {
        return Ok(());
    }
    let why = if !sandbox::keeps_dac_read_search(sandbox_cfg) {
        "file handles need CAP_DAC_READ_SEARCH: run as root (and keep dac_read_search in --modcaps)"
    } else if std::fs::File::open(dir)
        .and_then(|d| crate::sys::name_to_handle(d.as_fd()))
        .is_err()
    {
        "the shared filesystem has no file handles"
    } else {
        return Ok(());
    };
    Err(DaemonError::Options(format!(
        "--inode-file-handles=mandatory: {why}; use --inode-file-handles=never (the default: \
         inodes are reopened by name)"
    )))
}

/// `--exit-with-parent`: have the parent's exit arrive as SIGTERM; false (logged) when it has
/// already exited, and the daemon should stop now.
fn arm(parent: &Parent) -> Result<bool, DaemonError> {
    let alive = parent
        .arm()
        .map_err(|e| DaemonError::Setup("cannot watch the parent process".into(), e))?;
    if !alive {
        warn!("{}", parent.exit_message());
    }
    Ok(alive)
}

/// The socket the daemon listens on, and the file it created for it (if it did).
struct Listening<'a> {
    listener: UnixListener,
    created: Option<PathBuf>,
    socket_file: &'a SocketSlot,
}

/// Everything after the socket exists: enter the sandbox, open the share, serve the frontend.
fn serve(
    opt: &Opt,
    sandbox_cfg: &sandbox::Config,
    fs_config: crate::fs::Config,
    listening: Listening<'_>,
    parent: Option<Parent>,
) -> Result<ExitCode, DaemonError> {
    let Listening {
        listener: unix_listener,
        created,
        socket_file,
    } = listening;
    // Before the sandbox: inside it, these paths may not exist.
    let stats_listener = match &opt.stats_socket {
        None => None,
        Some(p) => {
            let l = bind_socket(p)?;
            restrict_stats_socket(p, opt.stats_group.as_deref())?;
            Some((l, SocketFile::new(p)?))
        }
    };
    let (stats_listener, stats_socket): (Option<UnixListener>, SocketSlot) = match stats_listener {
        Some((l, f)) => (Some(l), Arc::new(Mutex::new(Some(f)))),
        None => (None, Arc::new(Mutex::new(None))),
    };
    let trace = opt
        .trace
        .as_ref()
        .map(|p| {
            std::fs::File::create(p)
                .and_then(crate::trace::Tracer::new)
                .map_err(|e| {
                    DaemonError::Setup(format!("cannot create the trace {}", p.display()), e)
                })
        })
        .transpose()?;
    sandbox::prepare(sandbox_cfg).map_err(DaemonError::Sandbox)?;
    let notifier = connect_notifier();
    let jail = match sandbox::enter(sandbox_cfg, &opt.shared_dir).map_err(DaemonError::Sandbox)? {
        Entered::Supervisor(supervisor) => {
            // Only the sandboxed daemon accepts (a frontend must not queue on our copy), and
            // only it removes the socket file.
            drop(unix_listener);
            drop(socket_file.lock().ok().and_then(|mut s| s.take()));
            return supervise(supervisor, notifier, parent);
        }
        Entered::Jail(jail) => jail,
    };
    // Outside the namespace sandbox this process is the one the parent started, and watches
    // it (inside, the supervisor does).
    let parent = parent.filter(|_| jail.to_supervisor.is_none());
    let status = match jail.to_supervisor {
        Some(pipe) => StatusSink::Supervisor(pipe.into()),
        None => notifier.map_or(StatusSink::Nobody, StatusSink::Manager),
    };

    // After the capabilities were reduced, so that it sees the ones it will have.
    let fs = Arc::new(
        Passthrough::with_proc_fd(&jail.root, &opt.shared_dir, jail.proc_self_fd, fs_config)
            .map_err(|e| match e.kind() {
                // --inode-file-handles=mandatory where handles cannot be used.
                io::ErrorKind::Unsupported => DaemonError::Options(e.to_string()),
                _ => DaemonError::SharedDirAccess(opt.shared_dir.clone(), e),
            })?,
    );
    if opt.migration_options().mode == crate::migration::Mode::FileHandles
        && crate::sys::effective_caps().unwrap_or(0) & (1 << crate::sys::CAP_DAC_READ_SEARCH) == 0
    {
        warn!(
            "--migration-mode=file-handles: this daemon may not open file handles (no \
             CAP_DAC_READ_SEARCH: add --inode-file-handles=prefer as root, or \
             --modcaps=+dac_read_search); as a migration destination it finds inodes by path"
        );
    }
    // From this thread, whose credentials no longer change; before the seccomp filter, which
    // allows no such prctl.
    if let Some(p) = parent {
        if !arm(&p)? {
            remove_socket(socket_file);
            return Ok(ExitCode::SUCCESS);
        }
    }
    // Before the first thread (the pool's, the signal thread): every thread inherits the filter.
    sandbox::restrict_syscalls(sandbox_cfg).map_err(DaemonError::Sandbox)?;
    let device = Arc::new(
        FsDevice::new(
            match trace {
                Some(t) => Dispatcher::new(fs).with_tracer(t),
                None => Dispatcher::new(fs),
            },
            opt.thread_pool_size,
            opt.migration_options(),
        )
        .map(|d| d.with_poll(std::time::Duration::from_micros(opt.poll_us)))
        .map_err(|e| DaemonError::Setup("cannot start the thread pool".into(), e))?,
    );
    spawn_signal_thread(
        device.dispatcher().clone(),
        socket_file.clone(),
        stats_socket.clone(),
        parent,
    )?;
    if let Some(l) = stats_listener {
        let d = device.dispatcher().clone();
        crate::stats::serve(l, move || d.stats().openmetrics(&d.fs().holdings()))
            .map_err(|e| DaemonError::Setup("cannot start the stats thread".into(), e))?;
    }
    let mut daemon = VhostUserDaemon::new(
        "vufsd".to_string(),
        device.clone(),
        GuestMemoryAtomic::new(GuestRam::new()),
    )
    .map_err(|e| {
        DaemonError::Setup(
            "cannot create the vhost-user daemon".into(),
            io::Error::other(e.to_string()),
        )
    })?;

    match &created {
        Some(p) => info!("listening on {}", p.display()),
        None => info!("listening on the inherited socket"),
    }
    // Type=notify: the socket is listening, so a frontend connecting now will be served.
    status.notify("READY=1\nSTATUS=waiting for the frontend");
    let mut listener = Listener::from(unix_listener);
    let expired_socket = socket_file.clone();
    let deadline = lifeline::connect_deadline(opt.connect_timeout, move || {
        remove_socket(&expired_socket);
        std::process::exit(1);
    })
    .map_err(|e| DaemonError::Setup("cannot start the connect timeout".into(), e))?;
    let started = daemon.start(&mut listener);
    drop(deadline);
    // One connection is all we serve: the socket file has done its job.
    remove_socket(socket_file);
    started.map_err(|e| DaemonError::Frontend(format!("cannot accept the frontend: {e}")))?;
    info!("frontend connected");
    status.notify("STATUS=serving the frontend");

    let result = daemon.wait();
    log_summary(device.dispatcher());
    remove_socket(&stats_socket);
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(BackendError::HandleRequest(
            VhostError::Disconnected | VhostError::PartialMessage | VhostError::SocketBroken(_),
        )) => {
            info!("frontend disconnected, exiting");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if !device.memory_mapped() => {
            warn!("vhost-user handshake failed: {e}");
            Err(DaemonError::NoSharedMemory)
        }
        Err(e) => {
            error!("vhost-user connection failed: {e}");
            Err(DaemonError::Frontend(format!(
                "the vhost-user connection failed: {e}"
            )))
        }
    }
}
