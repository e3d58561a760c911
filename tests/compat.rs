//! Drop-in compatibility: the virtiofsd command lines that libvirt, microvm.nix, NixOS and
//! people's scripts write, run against the vufsd binary. Each one must either start (listening,
//! with exactly the expected warnings) or be refused with one line and exit status 1, never
//! half-work. Sources of the invocations:
//! - libvirt src/qemu/qemu_virtiofs.c: `--fd=N -o source=...,cache=...,xattr,...` (before
//!   "separate-options"), `--fd=N --shared-dir D --cache C --xattr --thread-pool-size=N
//!   --rlimit-nofile=N --log-level debug` (after), `--uid-map=:0:UID:1:` in session mode;
//! - microvm.nix nixos-modules/microvm/virtiofsd: `--socket-path=S --socket-group=G
//!   --shared-dir=D --rlimit-nofile 1048576 --thread-pool-size N --posix-acl --xattr
//!   --cache=C --inode-file-handles=X [--tag=T] [--readonly]`;
//! - nixpkgs: vmTools' runInLinuxVM (pkgs/build-support/vm: `--xattr --socket-path S --sandbox
//!   none --seccomp none --shared-dir D`), and what vufsd's NixOS scripts run (nix/vm-scripts.nix);
//! - virtiofsd's own documentation and common scripts (`--sandbox none`, `-f`, `--syslog`, ...).
//!
//! One VM test at the end boots a guest against the libvirt-style invocation.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_vm, run_vm, vufsd_bin, TestDir, VmConfig};

#[path = "compat/cases.rs"]
mod cases;

use cases::{case, Accept, Case, Refuse, CASES};

const NOBODY: u32 = 65534;

struct Run {
    child: Child,
    log: std::path::PathBuf,
}

impl Run {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fill(arg: &str, share: &Path, sock: &Path, fd: Option<i32>) -> String {
    let mut a = arg
        .replace("{share}", share.to_str().unwrap())
        .replace("{sock}", sock.to_str().unwrap());
    if let Some(fd) = fd {
        a = a.replace("{fd}", &fd.to_string());
    }
    a
}

/// Start vufsd for `case`; an inherited listening socket is passed when it says `{fd}`.
fn start(case: &Case, dir: &TestDir) -> (Run, std::path::PathBuf, Option<UnixListener>) {
    let share = dir.mkdir("share");
    let sock = dir.path().join("vfs.sock");
    let wants_fd = case.args.iter().any(|a| a.contains("{fd}"));
    let inherited = wants_fd.then(|| UnixListener::bind(dir.path().join("fd.sock")).unwrap());
    let fd = inherited.as_ref().map(|l| l.as_raw_fd());
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| fill(a, &share, &sock, fd))
        .collect();
    let mut cmd = if case.unprivileged {
        dir.chown(NOBODY, NOBODY);
        std::os::unix::fs::chown(&share, Some(NOBODY), Some(NOBODY)).unwrap();
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            "--".into(),
        ])
        .arg(vufsd_bin());
        c
    } else {
        Command::new(vufsd_bin())
    };
    cmd.args(&args);
    if let Some(fd) = fd {
        // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe. It lets
        // the listening socket survive exec under its number, as libvirt's --fd=N does.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let log = dir.path().join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawning vufsd");
    (Run { child, log }, sock, inherited)
}

/// Wait until the daemon logs that it listens, or exits. Returns its exit code if it exited.
fn wait_listening_or_exit(run: &mut Run) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        if run.output().contains("listening on") {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "neither listening nor exited:\n{}",
            run.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Check one case; Err(description) on any mismatch.
fn check(case: &Case) -> Result<(), String> {
    let dir = TestDir::new("compat");
    let (mut run, sock, _inherited) = start(case, &dir);
    let exited = wait_listening_or_exit(&mut run);
    let log = run.output();
    let fail = |what: String| Err(format!("{what}\n--- log:\n{log}"));
    match case.expect {
        Refuse(needles) => {
            if exited != Some(1) {
                return fail(format!("expected exit status 1, got {exited:?}"));
            }
            let errors: Vec<&str> = log
                .lines()
                .filter(|l| l.starts_with("vufsd: error:"))
                .collect();
            if errors.len() != 1 || log.lines().count() != 1 {
                return fail("expected exactly one line, a `vufsd: error:` one".into());
            }
            if let Some(n) = needles.iter().find(|n| !errors[0].contains(*n)) {
                return fail(format!("'{n}' missing from the error line"));
            }
            if sock.exists() {
                return fail("a refused daemon must not leave a socket".into());
            }
        }
        Accept(needles) => {
            if let Some(code) = exited {
                return fail(format!("expected it to run, it exited with {code}"));
            }
            let mut needles = needles.to_vec();
            // An --rlimit-nofile this host does not let vufsd reach is served as far as the
            // hard limit allows, with a warning.
            if rlimit_arg(case.args).is_some_and(|n| !can_raise_nofile_to(n)) {
                needles.push("--rlimit-nofile=");
            }
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
            if let Some(n) = needles
                .iter()
                .find(|n| !warnings.iter().any(|w| w.contains(*n)))
            {
                return fail(format!("no warning mentions '{n}'"));
            }
            if warnings.len() != needles.len() {
                return fail(format!(
                    "expected {} warnings, got {}",
                    needles.len(),
                    warnings.len()
                ));
            }
            if log.contains("vufsd: error:") {
                return fail("an accepted invocation printed an error".into());
            }
            // SAFETY: plain kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(run.child.id() as libc::pid_t, libc::SIGTERM) };
            let status = run.child.wait().unwrap();
            if status.code() != Some(0) {
                return fail(format!("SIGTERM should exit 0, got {status}"));
            }
        }
    }
    Ok(())
}

/// The N of `--rlimit-nofile=N` / `--rlimit-nofile N`.
fn rlimit_arg(args: &[&str]) -> Option<u64> {
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--rlimit-nofile") {
            Some("") => args.get(i + 1)?.parse().ok(),
            Some(rest) => rest.strip_prefix('=')?.parse().ok(),
            None => None,
        })
}

/// Whether a root vufsd started from this test may set its open file limit to `n`: the hard
/// limit is already that high, or it may raise it (CAP_SYS_RESOURCE, which some containers and
/// VMs do not give even root).
fn can_raise_nofile_to(n: u64) -> bool {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u64 = 1 << 24;
    hard >= n || cap_eff & CAP_SYS_RESOURCE != 0
}

/// Every option upstream virtiofsd's `--help` lists has a verdict in [`CASES`] (accepted,
/// served, warned about, or refused with its reason): a new virtiofsd option shows up here.
#[test]
fn every_option_of_virtiofsds_help_has_a_verdict() {
    let Ok(virtiofsd) = common::find_virtiofsd() else {
        panic!(
            "virtiofsd not found (cargo install virtiofsd --version 1.14.0; scripts/install-deps)"
        );
    };
    let help = Command::new(virtiofsd).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    // The option lines: "  -d, --log-level ..." or "      --posix-acl[=<MODE>]".
    let options: std::collections::BTreeSet<&str> = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| {
            l.trim_start()
                .split([' ', '=', ',', '['])
                .find(|w| w.starts_with("--"))
        })
        .collect();
    assert!(options.len() > 30, "{options:?}");
    // Answered outside the table: --print-capabilities (its own test), --help and --version
    // (clap's, exit 0).
    let elsewhere = ["--print-capabilities", "--help", "--version"];
    let missing: Vec<&&str> = options
        .iter()
        .filter(|o| !elsewhere.contains(o))
        .filter(|o| {
            !CASES
                .iter()
                .any(|c| c.args.iter().any(|a| a.starts_with(**o)))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "virtiofsd options without a verdict: {missing:?}"
    );
    for o in ["--help", "--version"] {
        assert!(Command::new(vufsd_bin())
            .arg(o)
            .output()
            .unwrap()
            .status
            .success());
    }
}

#[test]
fn invocations_in_the_wild_are_accepted_or_refused_cleanly() {
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|c| {
            check(c)
                .err()
                .map(|e| format!("=== {}: {:?}\n{e}", c.source, c.args))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} invocations misbehaved:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn socket_group_gives_the_socket_to_the_group() {
    let dir = TestDir::new("compat_group");
    let case = case(
        "microvm.nix socket group",
        &[
            "--socket-path={sock}",
            "--socket-group=daemon",
            "--shared-dir={share}",
        ],
        Accept(&[]),
    );
    let (mut run, sock, _) = start(&case, &dir);
    assert_eq!(wait_listening_or_exit(&mut run), None, "{}", run.output());
    let md = std::fs::metadata(&sock).unwrap();
    assert_eq!(md.gid(), 1, "group 'daemon' is gid 1 on Debian");
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    let dir = TestDir::new("compat_group_bad");
    let out = Command::new(vufsd_bin())
        .arg(format!(
            "--socket-path={}",
            dir.path().join("s.sock").display()
        ))
        .arg("--socket-group=no-such-group-vufsd")
        .arg(format!("--shared-dir={}", dir.mkdir("share").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("vufsd: error: --socket-group no-such-group-vufsd: no such group"),
        "{stderr}"
    );
}

#[test]
fn print_capabilities_is_what_libvirt_reads() {
    // libvirt runs exactly this, with no other option, and parses stdout as JSON.
    let out = Command::new(vufsd_bin())
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success());
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(caps["type"], "fs");
    assert_eq!(
        caps["features"],
        serde_json::json!([
            "migrate-precopy",
            "posix-acl-negotiation-mode",
            "separate-options"
        ])
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn qemu_vhost_user_description_file() {
    // contrib/qemu/10-vufsd.json is what share/qemu/vhost-user/ holds for discovery
    // (QEMU docs/interop/vhost-user.json, struct VhostUserBackend).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/qemu/10-vufsd.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let obj = d.as_object().unwrap();
    assert_eq!(d["type"], "fs");
    assert!(d["description"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(d["binary"]
        .as_str()
        .is_some_and(|b| b.starts_with('/') && b.ends_with("/vufsd")));
    for key in obj.keys() {
        assert!(
            ["description", "type", "binary", "tags"].contains(&key.as_str()),
            "{key} is not a VhostUserBackend member"
        );
    }
}

/// The libvirt-style invocation (inherited fd, -o list) serving a real guest.
#[test]
fn libvirt_style_invocation_serves_a_guest() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("compat_vm");
    let share_dir = dir.path().join("share");
    let c = case(
        "libvirt",
        &[
            "--fd={fd}",
            "-o",
            "source={share},cache=always,xattr,posix_lock",
            "--thread-pool-size=2",
        ],
        Accept(&[]),
    );
    let (mut run, _, inherited) = start(&c, &dir);
    assert_eq!(wait_listening_or_exit(&mut run), None, "{}", run.output());
    std::fs::write(share_dir.join("host.txt"), "from the host").unwrap();
    let fd_sock = dir.path().join("fd.sock");
    let out = run_vm(
        &VmConfig::new(
            dir.path(),
            r#"
            expect_eq read "$(cat /mnt/host.txt)" "from the host"
            check write sh -c 'echo guest > /mnt/guest.txt'
            check setfattr hostrun setfattr -n user.k -v v /mnt/guest.txt
            expect_eq getfattr "$(hostrun getfattr --only-values -n user.k /mnt/guest.txt)" v
            "#,
        )
        .with_fs(&fd_sock, "libvirt"),
    );
    drop(inherited);
    out.assert_ok(&["read", "write", "setfattr", "getfattr"]);
    let status = run.child.wait().unwrap();
    assert!(status.success(), "{}", run.output());
    assert_eq!(
        std::fs::read_to_string(share_dir.join("guest.txt")).unwrap(),
        "guest\n"
    );
}
