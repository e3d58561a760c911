//! Bad input gets one clear line naming the cause and the fix, and exit code 1.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{require_vm, try_run_vm, vufsd_bin, DaemonSpec, TestDir, VmConfig};

fn vufsd(args: &[&str]) -> Output {
    Command::new(vufsd_bin())
        .args(args)
        .output()
        .expect("running vufsd")
}

/// Exit code 1 and exactly one stderr line containing every one of `needles`.
fn assert_refused(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vufsd: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected; stderr:\n{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' missing from: {}", lines[0]);
    }
}

#[test]
fn shared_dir_missing() {
    let dir = TestDir::new("bad_missing");
    let sock = dir.path().join("s.sock");
    let out = vufsd(&[
        "--shared-dir",
        "/nonexistent/share",
        "--socket-path",
        sock.to_str().unwrap(),
    ]);
    assert_refused(
        &out,
        &["/nonexistent/share", "does not exist", "--shared-dir"],
    );
    assert!(!sock.exists(), "no socket is created when the share is bad");
}

#[test]
fn shared_dir_not_a_directory() {
    let dir = TestDir::new("bad_notdir");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let sock = dir.path().join("s.sock");
    let out = vufsd(&[
        "--shared-dir",
        file.to_str().unwrap(),
        "--socket-path",
        sock.to_str().unwrap(),
    ]);
    assert_refused(&out, &["not a directory"]);
}

#[test]
fn socket_in_use_by_a_live_daemon_is_refused_and_the_live_one_survives() {
    let dir = TestDir::new("bad_inuse");
    let share = dir.mkdir("share");
    let sock = dir.path().join("s.sock");
    let mut first = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share).spawn(dir.path());
    let out = vufsd(&[
        "--shared-dir",
        share.to_str().unwrap(),
        "--socket-path",
        sock.to_str().unwrap(),
    ]);
    assert_refused(&out, &["in use by a running daemon", "--socket-path"]);
    assert!(
        first.try_wait().is_none(),
        "the first daemon must keep running: {}",
        first.report()
    );
    assert!(
        sock.exists(),
        "the live daemon's socket must not be removed"
    );
    first.terminate(Duration::from_secs(5));
}

#[test]
fn stale_socket_is_replaced() {
    let dir = TestDir::new("bad_stale");
    let share = dir.mkdir("share");
    let sock = dir.path().join("s.sock");
    // A socket file nobody listens on any more. (Started by hand: the harness's spawn would
    // remove it first.)
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(vufsd_bin())
        .args([
            "--shared-dir",
            share.to_str().unwrap(),
            "--socket-path",
            sock.to_str().unwrap(),
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "{text}");
    assert!(text.contains("replacing stale socket"), "{text}");
    assert!(text.contains("listening on"), "{text}");
}

#[test]
fn socket_directory_not_writable() {
    let dir = TestDir::new("bad_sockdir");
    let share = dir.mkdir("share");
    let locked = dir.mkdir("locked"); // root-owned 0755: nobody cannot create files in it
    let sock = locked.join("s.sock");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(vufsd_bin())
        .args([
            "--shared-dir",
            share.to_str().unwrap(),
            "--socket-path",
            sock.to_str().unwrap(),
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert_refused(
        &out,
        &["not writable by uid 65534", locked.to_str().unwrap()],
    );
}

#[test]
fn socket_directory_missing() {
    let dir = TestDir::new("bad_sockdir_missing");
    let share = dir.mkdir("share");
    let out = vufsd(&[
        "--shared-dir",
        share.to_str().unwrap(),
        "--socket-path",
        "/nonexistent/dir/s.sock",
    ]);
    assert_refused(&out, &["/nonexistent/dir", "does not exist"]);
}

#[test]
fn fd_that_is_not_a_listening_socket() {
    let dir = TestDir::new("bad_fd");
    let share = dir.mkdir("share");
    let out = vufsd(&["--shared-dir", share.to_str().unwrap(), "--fd", "99"]);
    assert_refused(&out, &["--fd 99", "listening unix socket"]);
}

#[test]
fn unknown_flags_and_values_are_usage_errors() {
    let out = vufsd(&[
        "--shared-dir",
        "/tmp",
        "--socket-path",
        "/tmp/x",
        "--frobnicate",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
    let out = vufsd(&[
        "--shared-dir",
        "/tmp",
        "--socket-path",
        "/tmp/x",
        "--cache",
        "sometimes",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

/// QEMU started without shared guest memory: the daemon says exactly what to add.
#[test]
fn guest_without_shared_memory() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("bad_noshm");
    let share = dir.mkdir("share");
    let mut daemon =
        DaemonSpec::fs(Ok(vufsd_bin()), &dir.path().join("vfs.sock"), &share).spawn(dir.path());
    let cfg = VmConfig::new(dir.path(), "sleep 1")
        .with_daemon(&daemon, "vufs")
        .shared_mem(false)
        .auto_mount(false)
        .timeout(Duration::from_secs(40));
    let outcome = try_run_vm(&cfg).expect("running the guest");
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(1),
        "{}\n{}",
        daemon.report(),
        outcome.report()
    );
    let log = daemon.output();
    let line = log
        .lines()
        .find(|l| l.starts_with("vufsd: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(
        line.contains("memory-backend-memfd") && line.contains("share=on"),
        "{line}"
    );
}
