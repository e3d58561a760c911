//! Looking into a running daemon: `--stats-socket`, `vufsd --print-stats`, SIGUSR1
//! (docs/stats.md).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vufsd_bench::fuse_abi::FUSE_ROOT_ID;
use vufsd_bench::{DaemonProcess, Device, DeviceConfig, FuseClient, TempDir};

const NOBODY: u32 = 65534;

fn vufsd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vufsd"))
}

/// A metric's value from OpenMetrics text (the first sample whose name and labels start so).
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn print_stats(socket: &Path, as_nobody: bool) -> std::process::Output {
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(vufsd());
        c
    } else {
        Command::new(vufsd())
    };
    c.arg("--print-stats").arg(socket).output().unwrap()
}

fn exercise(sandbox: &str) {
    let dir = TempDir::new("vufsd-stats").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f"), vec![1u8; 8192]).unwrap();
    let sock = dir.path().join("vfs.sock");
    let stats = dir.path().join("stats.sock");
    let args: Vec<std::ffi::OsString> = vec![
        "--sandbox".into(),
        sandbox.into(),
        "--seccomp".into(),
        "kill".into(),
        "--stats-socket".into(),
        stats.clone().into(),
    ];
    let daemon =
        DaemonProcess::spawn(vufsd(), &share, &sock, &args, Duration::from_secs(10)).unwrap();
    let dev = Arc::new(Device::connect(DeviceConfig::new(&sock)).unwrap());
    let c = FuseClient::new(dev);
    c.init().unwrap();
    let e = c.lookup(FUSE_ROOT_ID, "f").unwrap();
    assert_eq!(
        c.lookup(FUSE_ROOT_ID, "missing").unwrap_err().errno(),
        Some(libc::ENOENT)
    );
    let fh = c.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(c.read(e.nodeid, fh, 0, 8192).unwrap().len(), 8192);

    let mode = std::fs::metadata(&stats).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the stats socket is the daemon user's alone");
    let out = print_stats(&stats, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        metric(&text, "vufsd_requests_total{opcode=\"lookup\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "vufsd_errors_total{errno=\"2\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "vufsd_read_bytes_total"),
        Some(8192.0),
        "{text}"
    );
    assert_eq!(metric(&text, "vufsd_handles"), Some(1.0), "{text}");
    assert!(metric(&text, "vufsd_inodes").unwrap() >= 2.0, "{text}");
    assert!(metric(&text, "vufsd_open_fds").unwrap() > 3.0, "{text}");
    assert!(metric(&text, "vufsd_request_seconds_count{opcode=\"read\"}") == Some(1.0));
    assert!(text.ends_with("# EOF\n"));

    // Another user is turned away by the socket's mode.
    let out = print_stats(&stats, true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");

    // SIGUSR1: the same, in the log; the daemon goes on.
    assert_eq!(unsafe { libc::kill(daemon.pid() as i32, libc::SIGUSR1) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains("stats: ") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = daemon.log();
    assert!(
        log.contains("stats: 5 requests, 1 errors, 8192 bytes read"),
        "{log}"
    );
    assert!(c.getattr(e.nodeid).is_ok());
    drop(c);
    drop(daemon);
    assert!(
        !stats.exists() || sandbox == "namespace",
        "the stats socket is removed at exit"
    );
}

#[test]
fn stats_of_a_running_daemon_without_a_sandbox() {
    exercise("none");
}

#[test]
fn stats_of_a_running_daemon_in_the_default_sandbox() {
    exercise("namespace");
}

#[test]
fn print_stats_of_nothing_is_one_clear_error() {
    let out = Command::new(vufsd())
        .args(["--print-stats", "/nonexistent/stats.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("vufsd: error: cannot read the stats of /nonexistent/stats.sock"),
        "{err}"
    );
    let _ = NOBODY;
}
