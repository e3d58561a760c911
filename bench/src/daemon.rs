//! Running a vhost-user-fs daemon under test: spawn it with the CLI virtiofsd and vufsd share
//! (`--socket-path S --shared-dir D`), wait for its socket, check it is alive, kill it on drop.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A daemon child process; killed and reaped on drop.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl DaemonProcess {
    /// Spawns `program --socket-path <socket> --shared-dir <shared> <extra...>` with stdout
    /// and stderr going to `<socket>.log`, and waits up to `timeout` for the socket to appear.
    pub fn spawn(
        program: &Path,
        shared: &Path,
        socket: &Path,
        extra: &[OsString],
        timeout: Duration,
    ) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let log = socket.with_extension("log");
        let out =
            File::create(&log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("dup daemon log", e))?;
        let child = Command::new(program)
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(format!("spawn {}", program.display()), e))?;
        let mut d = DaemonProcess {
            child,
            socket: socket.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let is_sock = std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket());
            if is_sock {
                return Ok(d);
            }
            if let Some(st) = d.exit_status() {
                return Err(Error::Config(format!(
                    "{} exited with {st} before creating its socket; log:\n{}",
                    program.display(),
                    d.log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} to create {}", program.display(), socket.display()),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Upstream virtiofsd: adds `--sandbox none` (we are not in a position to set up its
    /// namespaces in tests) to `extra`.
    pub fn virtiofsd(program: &Path, shared: &Path, socket: &Path, extra: &[&str]) -> Result<Self> {
        let mut args: Vec<OsString> = vec!["--sandbox".into(), "none".into()];
        args.extend(extra.iter().map(OsString::from));
        Self::spawn(program, shared, socket, &args, Duration::from_secs(10))
    }

    /// The vhost-user socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exit_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the daemon with SIGSTOP and returns once every one of its threads is stopped.
    ///
    /// `kill(2)` returns before a multi-threaded process is stopped: the kernel wakes one
    /// thread, which then stops the others. Until it runs, another thread (the vhost-user
    /// control loop, say) can still take a message and answer it, so a test that sends
    /// something right after `kill -STOP` races the group stop. Waiting for state `T` in every
    /// `/proc/PID/task/TID/stat` closes that race.
    pub fn freeze(&self, timeout: Duration) -> Result<()> {
        self.signal(libc::SIGSTOP)?;
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let deadline = Instant::now() + timeout;
        loop {
            if all_tasks_stopped(&tasks)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("every thread of pid {} to stop", self.pid()),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Resumes a daemon stopped by [`freeze`](Self::freeze).
    pub fn thaw(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid())
            .map_err(|_| Error::Config(format!("pid {} out of range", self.pid())))?;
        // SAFETY: kill(2) takes plain integers; the pid is our own unreaped child, so it
        // cannot name another process.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(Error::io(
                format!("kill({pid}, {sig})"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        // SIGTERM first, so that the daemon (or a wrapper around it: strace, perf) finishes
        // what it writes on exit; SIGKILL if it has not exited within 2 s.
        if self.is_running() {
            let _ = self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(2)).is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// True when every thread under `/proc/PID/task` is stopped (state `T`) or gone.
fn all_tasks_stopped(tasks: &Path) -> Result<bool> {
    let rd = std::fs::read_dir(tasks)
        .map_err(|e| Error::io(format!("readdir {}", tasks.display()), e))?;
    for entry in rd.flatten() {
        // A thread that exited between readdir and read has nothing left to race.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if task_state(&stat) != Some('T') {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The state letter of a `/proc/.../stat` line: the field after the `(comm)`, which may itself
/// hold spaces and parentheses, so it is found from the last `)`.
fn task_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Where upstream virtiofsd is: `$VIRTIOFSD`, `~/.cargo/bin/virtiofsd`, then `$PATH`.
pub fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTIOFSD") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let cargo = home.map(|h| h.join(".cargo/bin/virtiofsd"));
    if let Some(p) = cargo.filter(|p| p.is_file()) {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("virtiofsd"))
            .find(|p| p.is_file())
    })
}

/// A uniquely named directory under the system temp dir, removed recursively on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// Creates `<parent>/<prefix>-<pid>-<n>` (big trees go to /var/tmp, not a tmpfs /tmp).
    pub fn new_in(parent: &Path, prefix: &str) -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("mkdir {}", path.display()), e))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::task_state;

    #[test]
    fn task_state_skips_a_comm_with_spaces_and_parentheses() {
        assert_eq!(task_state("42 (vufsd) S 1 42"), Some('S'));
        assert_eq!(task_state("42 (a) b) (c) T 1 42"), Some('T'));
        assert_eq!(task_state("garbage"), None);
    }
}
