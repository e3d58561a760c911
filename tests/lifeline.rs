//! What ends a daemon that no frontend ever reaches: `--exit-with-parent` (the process that
//! started it exits, or the program it exec'd into does: the way a VM start script runs
//! `vufsd ... &` and then `exec qemu`) and `--connect-timeout`. Without them such a daemon is
//! orphaned and waits for ever (shown here too, so the tests prove something).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{vufsd_bin, TestDir};

/// Where a daemon started by a throwaway parent lives: its pid, socket and log.
struct Orphan {
    pid: u32,
    socket: PathBuf,
    log: PathBuf,
}

impl Orphan {
    fn alive(&self) -> bool {
        // A zombie has no cmdline; the reaper (init) removes it quickly.
        std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| !c.is_empty())
    }

    /// Wait up to `limit` for the daemon to be gone.
    fn gone_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.alive() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        if self.alive() {
            // The test must not leave daemons behind.
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// Run `sh -c`, as `run_as` when given, where the script starts vufsd in the background with
/// `args`, waits for its socket and prints its pid; once the daemon is seen running, the shell
/// goes on to `then` (e.g. `exit`, or `exec sleep 2`).
fn start_from_a_parent(
    dir: &TestDir,
    args: &[&str],
    then: &str,
    run_as: Option<(u32, u32)>,
) -> (Orphan, std::process::Child) {
    let share = dir.mkdir("share");
    let socket = dir.path().join("vfs.sock");
    let log = dir.path().join("vufsd.log");
    let script = format!(
        r#"bin="$0" sock="$1" share="$2"; shift 2
        "$bin" --socket-path="$sock" --shared-dir="$share" "$@" 2>"$LOG" &
        pid=$!
        for _ in $(seq 1 500); do [ -S "$sock" ] && break; sleep 0.02; done
        echo "$pid"
        read -r _ || true
        {then}"#
    );
    let mut cmd = match run_as {
        Some((uid, gid)) => {
            dir.chown(uid, gid);
            std::os::unix::fs::chown(&share, Some(uid), Some(gid)).unwrap();
            common::setpriv(uid, gid, "sh")
        }
        None => Command::new("sh"),
    };
    let mut child = cmd
        .arg("-c")
        .arg(script)
        .arg(vufsd_bin())
        .arg(&socket)
        .arg(&share)
        .args(args)
        .env("LOG", &log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sh");
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid: {line:?}"));
    let orphan = Orphan { pid, socket, log };
    assert!(orphan.alive(), "vufsd did not start:\n{}", orphan.log());
    assert!(
        orphan.socket.exists(),
        "vufsd did not listen:\n{}",
        orphan.log()
    );
    // End of input: the shell goes on.
    drop(child.stdin.take());
    (orphan, child)
}

fn assert_stopped_with_its_parent(orphan: &Orphan) {
    assert!(
        orphan.gone_within(Duration::from_secs(10)),
        "vufsd outlived its parent:\n{}",
        orphan.log()
    );
    let log = orphan.log();
    assert!(
        log.contains("the process that started vufsd (pid")
            && log.contains("exited: exiting too (--exit-with-parent)"),
        "{log}"
    );
    assert!(!orphan.socket.exists(), "socket left behind:\n{log}");
}

fn exits_with_a_parent_that_exits(sandbox: &str, run_as: Option<(u32, u32)>) {
    let dir = TestDir::new(&format!("lifeline_{sandbox}"));
    let args = ["--exit-with-parent", "--sandbox", sandbox, "--seccomp=kill"];
    let (orphan, mut parent) = start_from_a_parent(&dir, &args, "exit 0", run_as);
    assert!(parent.wait().unwrap().success());
    assert_stopped_with_its_parent(&orphan);
}

#[test]
fn exit_with_parent_outside_a_sandbox() {
    exits_with_a_parent_that_exits("none", None);
}

#[test]
fn exit_with_parent_in_the_namespace_sandbox() {
    // The supervisor is the parent's child: it passes the parent's exit on to the daemon.
    exits_with_a_parent_that_exits("namespace", None);
}

#[test]
fn exit_with_parent_in_a_chroot() {
    exits_with_a_parent_that_exits("chroot", None);
}

#[test]
fn exit_with_parent_unprivileged_in_a_user_namespace() {
    exits_with_a_parent_that_exits("namespace", Some((65534, 65534)));
}

#[test]
fn exit_with_parent_unprivileged_without_a_sandbox() {
    exits_with_a_parent_that_exits("none", Some((65534, 65534)));
}

#[test]
fn exit_with_parent_waits_for_the_program_the_parent_execs() {
    // A VM start script: `vufsd ... &`, then `exec qemu ...`. The daemon's parent is then QEMU
    // (here: sleep), and the daemon stays until that program ends.
    let dir = TestDir::new("lifeline_exec");
    let args = ["--exit-with-parent", "--sandbox=none"];
    let (orphan, mut parent) = start_from_a_parent(&dir, &args, "exec sleep 2", None);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        orphan.alive(),
        "vufsd exited while its parent ran:\n{}",
        orphan.log()
    );
    assert!(parent.wait().unwrap().success());
    assert_stopped_with_its_parent(&orphan);
}

#[test]
fn without_exit_with_parent_the_daemon_is_orphaned() {
    // What --exit-with-parent is for: the same start, without it, leaves the daemon behind.
    let dir = TestDir::new("lifeline_orphan");
    let (orphan, mut parent) = start_from_a_parent(&dir, &["--sandbox=none"], "exit 0", None);
    assert!(parent.wait().unwrap().success());
    assert!(
        !orphan.gone_within(Duration::from_secs(2)),
        "vufsd exited by itself without --exit-with-parent:\n{}",
        orphan.log()
    );
    // Dropping `orphan` kills it.
}

fn wait_status(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect_timeout(sandbox: &str) {
    let dir = TestDir::new(&format!("lifeline_timeout_{sandbox}"));
    let share = dir.mkdir("share");
    let socket = dir.path().join("vfs.sock");
    let started = Instant::now();
    let mut child = Command::new(vufsd_bin())
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", share.display()))
        .args(["--connect-timeout=1", "--sandbox", sandbox])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_status(&mut child, Duration::from_secs(20));
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "exited before its timeout:\n{log}"
    );
    assert!(
        log.contains("no frontend connected within 1 s: exiting (--connect-timeout)"),
        "{log}"
    );
    assert!(!socket.exists(), "socket left behind:\n{log}");
}

#[test]
fn connect_timeout_outside_a_sandbox() {
    connect_timeout("none");
}

#[test]
fn connect_timeout_in_the_namespace_sandbox() {
    connect_timeout("namespace");
}

#[test]
fn a_frontend_in_time_disarms_the_connect_timeout() {
    // Connected before the deadline: the daemon serves (here: until the frontend leaves, which
    // a bare connect does at once) and exits 0, not 1.
    let dir = TestDir::new("lifeline_in_time");
    let share = dir.mkdir("share");
    let socket = dir.path().join("vfs.sock");
    let mut child = Command::new(vufsd_bin())
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", share.display()))
        .args(["--connect-timeout=2", "--sandbox=none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("connect: {e}"),
        }
    };
    // Hold the connection past the deadline, then leave.
    std::thread::sleep(Duration::from_secs(3));
    drop(conn);
    let code = wait_status(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().unwrap();
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
