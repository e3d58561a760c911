//! A vufsd serving a share to vufsd-bench (no guest), started the way a test needs it: under a
//! given open-file limit (the fd budget is half of it, taken at start), as an unprivileged user,
//! in a sandbox. Shared by tests/hardening.rs and tests/fd_budget.rs.

#![allow(dead_code)]

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vufsd_bench::{DaemonProcess, Device, DeviceConfig, FuseClient};

pub const NOBODY: u32 = 65534;

/// How to start the daemon.
#[derive(Clone, Default)]
pub struct Start<'a> {
    /// RLIMIT_NOFILE (soft and hard) to start under.
    pub nofile: Option<u64>,
    /// Run as nobody (when the test runs as root; otherwise the daemon is unprivileged anyway).
    pub unprivileged: bool,
    /// Options after --socket-path/--shared-dir; `--sandbox none` unless they name a sandbox.
    pub args: &'a [&'a str],
}

pub struct Served {
    // Drop order: the client, then the daemon.
    pub client: FuseClient,
    pub daemon: DaemonProcess,
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Start vufsd on `share`, with its socket, log and wrapper in `dir`, and connect to it.
pub fn serve(dir: &Path, share: &Path, how: Start<'_>) -> Served {
    let mut line = String::from("#!/bin/sh\nexec");
    if let Some(n) = how.nofile {
        line.push_str(&format!(" prlimit --nofile={n}:{n}"));
    }
    if how.unprivileged && is_root() {
        line.push_str(&format!(
            " setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups --"
        ));
    }
    line.push_str(&format!(" {} \"$@\"\n", env!("CARGO_BIN_EXE_vufsd")));
    let wrapper = dir.join("vufsd-wrapper");
    std::fs::write(&wrapper, line).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The daemon (perhaps nobody) creates its socket here.
    let sock_dir = dir.join("sock");
    std::fs::create_dir_all(&sock_dir).unwrap();
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = sock_dir.join("vufsd.sock");
    let mut args: Vec<OsString> = Vec::new();
    if !how.args.iter().any(|a| a.starts_with("--sandbox")) {
        args.extend(["--sandbox".into(), "none".into()]);
    }
    args.extend(how.args.iter().map(Into::into));
    let daemon =
        DaemonProcess::spawn(&wrapper, share, &sock, &args, Duration::from_secs(10)).unwrap();
    let mut config = DeviceConfig::new(&sock);
    config.memory_size = 64 << 20;
    config.timeout = Duration::from_secs(10);
    let dev = Device::connect(config)
        .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", daemon.log()));
    let client = FuseClient::new(Arc::new(dev));
    client.init().unwrap();
    Served { client, daemon }
}

impl Served {
    /// The process that serves the guest: the daemon, or in the namespace sandbox the
    /// supervisor's child.
    pub fn server_pid(&self) -> u32 {
        let pid = self.daemon.pid();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .find_map(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(pid)
    }

    /// The server's open fds.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.server_pid()))
            .unwrap()
            .count()
    }

    /// A field of the server's /proc/PID/status.
    pub fn status(&self, key: &str) -> String {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.server_pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {key} in /proc/PID/status"))
            .trim()
            .to_string()
    }

    /// The server's fds open on `path`, each with its open flags (from fdinfo).
    pub fn fds_on(&self, path: &Path) -> Vec<(PathBuf, i32)> {
        let pid = self.server_pid();
        let want = std::fs::canonicalize(path).unwrap();
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                (target == want).then_some(())?;
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    e.file_name().to_string_lossy()
                ))
                .ok()?;
                let flags = info
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())?;
                Some((e.path(), flags))
            })
            .collect()
    }
}

/// The errno of a request expected to fail.
pub fn errno_of<T: std::fmt::Debug>(r: vufsd_bench::Result<T>) -> Option<i32> {
    match r {
        Err(e) => e.errno(),
        Ok(v) => panic!("expected an error reply, got {v:?}"),
    }
}
