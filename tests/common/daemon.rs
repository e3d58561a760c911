//! Spawning a vhost-user-fs daemon (vufsd, or upstream virtiofsd to check
//! the harness itself) and supervising it: wait for its socket, capture its
//! output, wait for or force its exit.

use super::{tail, vufsd_bin, Context, Result};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Which daemon the VM tests exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonKind {
    Vufsd,
    Virtiofsd,
}

impl DaemonKind {
    /// `VUFSD_TEST_DAEMON=vufsd|virtiofsd`, default vufsd. Any other value
    /// panics rather than silently testing the wrong daemon.
    pub fn from_env() -> DaemonKind {
        match std::env::var("VUFSD_TEST_DAEMON").as_deref() {
            Err(_) | Ok("") | Ok("vufsd") => DaemonKind::Vufsd,
            Ok("virtiofsd") => DaemonKind::Virtiofsd,
            Ok(other) => panic!("VUFSD_TEST_DAEMON={other}: expected vufsd or virtiofsd"),
        }
    }

    /// The binary to run; for virtiofsd, see [`find_virtiofsd`].
    pub fn program(self) -> Result<PathBuf> {
        match self {
            DaemonKind::Vufsd => Ok(vufsd_bin()),
            DaemonKind::Virtiofsd => find_virtiofsd(),
        }
    }
}

/// Upstream virtiofsd: `$VIRTIOFSD`, then `virtiofsd` on PATH, then
/// `~/.cargo/bin/virtiofsd` (`cargo install virtiofsd`), then Debian's
/// `/usr/libexec/virtiofsd` (apt package virtiofsd).
pub fn find_virtiofsd() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTIOFSD") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("VIRTIOFSD={} does not exist", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&path)
        .map(|d| d.join("virtiofsd"))
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/virtiofsd"));
    }
    candidates.push("/usr/libexec/virtiofsd".into());
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "virtiofsd not found in $VIRTIOFSD, PATH, ~/.cargo/bin or /usr/libexec \
         (cargo install virtiofsd --version 1.14.0, which needs libseccomp-dev libcap-ng-dev)"
            .to_string()
    })
}

/// How to start a daemon. Build with [`DaemonSpec::fs`] or
/// [`DaemonSpec::new`], then [`DaemonSpec::spawn`].
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The vhost-user socket the daemon listens on; spawn waits for it.
    pub socket: PathBuf,
    /// Run as this (uid, gid) with no supplementary groups, via setpriv.
    pub run_as: Option<(u32, u32)>,
    pub env: Vec<(OsString, OsString)>,
    /// How long spawn waits for the socket to appear.
    pub startup_timeout: Duration,
}

impl DaemonSpec {
    /// `program` with no arguments yet.
    pub fn new(program: impl Into<PathBuf>, socket: &Path) -> DaemonSpec {
        DaemonSpec {
            program: program.into(),
            args: Vec::new(),
            socket: socket.to_path_buf(),
            run_as: None,
            env: Vec::new(),
            startup_timeout: Duration::from_secs(10),
        }
    }

    /// The virtiofsd-compatible command line both daemons accept:
    /// `--socket-path SOCK --shared-dir DIR --sandbox none --seccomp kill`. Every VM test thus
    /// runs the daemon under its seccomp filter in kill mode: a system call missing from the
    /// allowlist kills the daemon and fails the test (see also `Drop for Daemon`).
    /// Panics (with the lookup error) if `program` is Err.
    pub fn fs(program: Result<PathBuf>, socket: &Path, shared_dir: &Path) -> DaemonSpec {
        let program = program.unwrap_or_else(|e| panic!("daemon binary: {e}"));
        DaemonSpec::new(program, socket)
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared_dir)
            .args(["--sandbox", "none"])
            .args(["--seccomp", "kill"])
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    /// Drop privileges to `uid`/`gid` (the socket's directory must be
    /// writable by them, see `TestDir::chown`).
    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.run_as = Some((uid, gid));
        self
    }

    /// Start the daemon, logging stdout+stderr to `log_dir/daemon-N.log`, and
    /// wait for its socket. Panics if it exits or times out first.
    pub fn spawn(self, log_dir: &Path) -> Daemon {
        self.try_spawn(log_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`spawn`](Self::spawn) but returns the error, for tests that
    /// expect a daemon to refuse to start; the error holds its log tail.
    pub fn try_spawn(self, log_dir: &Path) -> Result<Daemon> {
        let log = unused_path(log_dir, "daemon", "log");
        let mut daemon = self.start(&log)?;
        daemon.wait_for_socket()?;
        Ok(daemon)
    }

    fn command(&self) -> Command {
        let mut cmd = match self.run_as {
            None => Command::new(&self.program),
            Some((uid, gid)) => super::setpriv(uid, gid, &self.program),
        };
        cmd.args(&self.args).envs(self.env.iter().cloned());
        cmd
    }

    fn start(self, log: &Path) -> Result<Daemon> {
        // A stale socket would make us think the daemon is already up.
        let _ = std::fs::remove_file(&self.socket);
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("dup log fd")?;
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", self.describe()))?;
        Ok(Daemon {
            child,
            spec: self,
            log: log.to_path_buf(),
            status: None,
        })
    }

    fn describe(&self) -> String {
        format!("{:?}", self.command())
    }
}

/// A running (or exited) daemon. Dropping it kills it if still running.
pub struct Daemon {
    child: Child,
    spec: DaemonSpec,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> &Path {
        &self.spec.socket
    }

    /// Everything the daemon printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Wait up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for it to exit on its own (e.g. after the guest disconnected);
    /// panics with its output if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_timeout(timeout) {
            Some(s) => s,
            None => {
                self.kill();
                panic!(
                    "daemon still running {timeout:?} after it should have exited\n{}",
                    self.report()
                )
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if self.try_wait().is_none() {
            // SAFETY: plain kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        match self.wait_timeout(grace) {
            Some(s) => s,
            None => self.kill(),
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        let _ = self.child.kill();
        let s = self
            .child
            .wait()
            .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
        self.status = Some(s);
        s
    }

    /// The command line, exit status and output tail, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "--- daemon: {} (status {:?}) log {}:\n{}",
            self.spec.describe(),
            self.status,
            self.log.display(),
            tail(&self.output(), 40)
        )
    }

    fn wait_for_socket(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.spec.startup_timeout;
        loop {
            if is_socket(&self.spec.socket) {
                return Ok(());
            }
            if let Some(s) = self.try_wait() {
                return Err(format!(
                    "daemon exited ({s}) before creating {}\n{}",
                    self.spec.socket.display(),
                    self.report()
                ));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "daemon did not create {} within {:?}\n{}",
                    self.spec.socket.display(),
                    self.spec.startup_timeout,
                    self.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    /// Kills the daemon if it still runs, and fails the test if it had died of a seccomp kill
    /// (SIGSYS, or status 159 from vufsd's namespace supervisor), even when the test itself
    /// did not look at the daemon's exit.
    fn drop(&mut self) {
        let status = self.kill();
        let seccomp_kill =
            status.signal() == Some(libc::SIGSYS) || status.code() == Some(128 + libc::SIGSYS);
        if seccomp_kill && !std::thread::panicking() {
            panic!(
                "the daemon was killed by its seccomp filter (a system call missing from the \
                 allowlist: dmesg | grep type=1326 names it)\n{}",
                self.report()
            );
        }
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// `dir/stem-N.ext` for the first N not taken.
pub(crate) fn unused_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    (0..)
        .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists())
        .expect("some free name")
}
