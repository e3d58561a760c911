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

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
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
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
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
