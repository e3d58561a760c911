//! Self-test of the VM harness in tests/common: boot, mount, I/O in both
//! directions, host tools through `hostrun`, manual (re)mounts, timeouts.
//! Runs against vufsd; `VUFSD_TEST_DAEMON=virtiofsd` runs it against
//! upstream virtiofsd instead, to tell a harness bug from a daemon bug.
//!
//! Needs qemu-system-x86, linux-image-amd64 and busybox-static; a missing
//! one fails the test unless VUFSD_VM_TESTS=skip (see tests/vm/README.md).

mod common;

use common::{require, require_vm, run_vm, try_run_vm, DaemonSpec, TestDir, VmConfig, VmOutcome};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

/// The daemon under test (vufsd unless VUFSD_TEST_DAEMON=virtiofsd) serving `share`, or None
/// (loudly) when skipping.
fn daemon_under_test(dir: &TestDir, share: &Path) -> Option<common::Daemon> {
    let program = require(
        "the daemon under test",
        common::DaemonKind::from_env().program(),
    )?;
    let sock = dir.path().join("vfs.sock");
    Some(
        DaemonSpec::fs(Ok(program), &sock, share)
            .arg("--xattr")
            .spawn(dir.path()),
    )
}

/// Deterministic, not very compressible test data.
fn test_data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn host_sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum on the host");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length we pass.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| {
        buf.truncate(len as usize);
        buf
    })
}

const IO_SCRIPT: &str = r#"
expect_eq read-host-file "$(cat /mnt/hello.txt)" "hello from the host"
check write sh -c 'echo from-guest > /mnt/guest.txt'
check mkdir mkdir /mnt/gdir
check write-in-dir sh -c 'seq 1 1000 > /mnt/gdir/seq.txt'
expect_eq py-size "$(hostrun python3 -c 'import os; print(os.path.getsize("/mnt/data.bin"))')" 100000
echo "SHA256 $(hostrun sha256sum /mnt/data.bin | cut -d' ' -f1)"
check setfattr hostrun setfattr -n user.vufs -v 42 /mnt/hello.txt
expect_eq getfattr "$(hostrun getfattr --only-values -n user.vufs /mnt/hello.txt)" 42
check host-view-has-test-dir hostrun test -f /test/script.sh
check host-view-has-share hostrun test -f /mnt/guest.txt
"#;

#[test]
fn io_and_host_tools() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("selftest_io");
    let share = dir.mkdir("share");
    std::fs::write(share.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(share.join("data.bin"), test_data(100_000)).unwrap();
    let Some(mut daemon) = daemon_under_test(&dir, &share) else {
        return;
    };

    let out = run_vm(&VmConfig::new(dir.path(), IO_SCRIPT).with_daemon(&daemon, "selftest"));
    out.assert_ok(&[
        "read-host-file",
        "write",
        "mkdir",
        "write-in-dir",
        "py-size",
        "setfattr",
        "getfattr",
        "host-view-has-test-dir",
        "host-view-has-share",
    ]);

    let guest_sha = out
        .guest_output
        .lines()
        .find_map(|l| l.strip_prefix("SHA256 "))
        .unwrap_or_default();
    assert_eq!(
        guest_sha,
        host_sha256(&share.join("data.bin")),
        "{}",
        out.report()
    );
    assert_eq!(
        std::fs::read_to_string(share.join("guest.txt")).unwrap(),
        "from-guest\n"
    );
    let seq = std::fs::read_to_string(share.join("gdir/seq.txt")).unwrap();
    assert_eq!(seq.lines().count(), 1000);
    assert_eq!(
        host_xattr(&share.join("hello.txt"), "user.vufs").as_deref(),
        Some(&b"42"[..])
    );

    let boot_to_mount = out.boot_to_mount.expect("auto-mount reports VUFS-MOUNTED");
    eprintln!(
        "selftest: boot-to-mount {boot_to_mount:?}, whole run {:?}",
        out.elapsed
    );
    // The daemon exits by itself once QEMU has gone away.
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "daemon: {status}\n{}", daemon.report());
}

const MOUNT_SCRIPT: &str = r#"
if share_is_mounted; then fail not-auto-mounted "share mounted with auto_mount off"; else ok not-auto-mounted; fi
check mount share_mount
check host-view-sees-mount hostrun test -f /mnt/hello.txt
check umount share_umount
check_fails host-view-sees-umount hostrun test -f /mnt/hello.txt
check remount-with-opts share_mount ro
check_fails write-on-ro sh -c 'echo x > /mnt/nope.txt'
check mount-inside-chroot sh -c 'umount /mnt && hostrun mount -t virtiofs "$VUFS_TAG" /mnt && test -f /mnt/hello.txt'
"#;

#[test]
fn manual_mounts_propagate_to_host_view() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("selftest_mounts");
    let share = dir.mkdir("share");
    std::fs::write(share.join("hello.txt"), "hi\n").unwrap();
    let Some(mut daemon) = daemon_under_test(&dir, &share) else {
        return;
    };

    let out = run_vm(
        &VmConfig::new(dir.path(), MOUNT_SCRIPT)
            .with_daemon(&daemon, "selftest")
            .auto_mount(false),
    );
    out.assert_ok(&[
        "not-auto-mounted",
        "mount",
        "host-view-sees-mount",
        "umount",
        "host-view-sees-umount",
        "remount-with-opts",
        "write-on-ro",
        "mount-inside-chroot",
    ]);
    assert!(out.boot_to_mount.is_none());
    assert!(!share.join("nope.txt").exists());
    daemon.wait_exit(Duration::from_secs(10));
}

/// `DaemonSpec::run_as`: the daemon runs as nobody (via setpriv) and files
/// the guest creates belong to nobody on the host.
#[test]
fn unprivileged_via_setpriv() {
    use std::os::unix::fs::MetadataExt;
    const NOBODY: u32 = 65534;
    let Some(()) = require_vm() else { return };
    let Some(program) = require(
        "the daemon under test",
        common::DaemonKind::from_env().program(),
    ) else {
        return;
    };
    let dir = TestDir::new("selftest_setpriv");
    dir.chown(NOBODY, NOBODY);
    let share = dir.mkdir("share");
    std::os::unix::fs::chown(&share, Some(NOBODY), Some(NOBODY)).unwrap();
    let sock = dir.path().join("vfs.sock");
    let mut daemon = DaemonSpec::fs(Ok(program), &sock, &share)
        .run_as(NOBODY, NOBODY)
        .spawn(dir.path());

    let script = "check write sh -c 'echo x > /mnt/by-guest.txt'";
    let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "selftest"));
    out.assert_ok(&["write"]);
    let md = std::fs::metadata(share.join("by-guest.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "{}", out.report());
    daemon.wait_exit(Duration::from_secs(10));
}

/// A guest that never powers off is killed at the timeout and reported,
/// and the daemon notices the disconnect.
#[test]
fn hung_guest_is_killed_at_timeout() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("selftest_timeout");
    let share = dir.mkdir("share");
    let Some(mut daemon) = daemon_under_test(&dir, &share) else {
        return;
    };

    let cfg = VmConfig::new(dir.path(), "echo sleeping; sleep 600")
        .with_daemon(&daemon, "selftest")
        // Long enough for the guest to boot and start the script on a loaded host (boot to
        // mount is ~2 s on an idle one, over 20 s was seen with other VMs running).
        .timeout(Duration::from_secs(30));
    let out = try_run_vm(&cfg).expect("the harness itself works");
    assert!(out.timed_out, "{}", out.report());
    assert!(out.guest_output.contains("sleeping"), "{}", out.report());
    assert!(out.problems(&[])[0].contains("timed out"));
    daemon.wait_exit(Duration::from_secs(10));
}

/// The outcome parser, on made-up guest output (no VM needed).
#[test]
fn outcome_protocol() {
    use std::os::unix::process::ExitStatusExt;
    let outcome = |guest: &str| VmOutcome {
        guest_output: guest.to_string(),
        console: String::new(),
        qemu_stderr: String::new(),
        qemu_status: ExitStatus::from_raw(0),
        elapsed: Duration::ZERO,
        boot_to_mount: None,
        timed_out: false,
        run_dir: "/nonexistent".into(),
        daemon_log: None,
    };
    let good = outcome("noise\nOK a\nOK b extra words\nDONE rc=0\n");
    assert!(good.problems(&["a", "b"]).is_empty());
    assert_eq!(good.oks(), ["a", "b"]);

    let bad = outcome("OK a\nFAIL b got=[1] want=[2]\nDONE rc=3\n");
    let problems = bad.problems(&["a", "c"]);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("status 3"));
    assert!(problems[1].starts_with("FAIL b"));
    assert!(problems[2].contains("OK c"));

    let unfinished = outcome("OK a\n");
    assert!(unfinished.problems(&["a"])[0].contains("DONE"));
}

/// The entry point of scripts/demo-vm, which starts the daemon and passes
/// its socket, tag and the guest commands in the environment.
#[test]
#[ignore = "interactive demo: run scripts/demo-vm"]
fn demo_vm() {
    let env = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run scripts/demo-vm"))
    };
    let socket = env("VUFSD_DEMO_SOCKET");
    let dir = TestDir::new("demo");
    let cfg = VmConfig::new(dir.path(), env("VUFSD_DEMO_SCRIPT"))
        .with_fs(Path::new(&socket), &env("VUFSD_DEMO_TAG"))
        .timeout(Duration::from_secs(180))
        .echo(true);
    let out = run_vm(&cfg);
    out.assert_ok(&[]);
    eprintln!(
        "demo: boot-to-mount {:?}, whole run {:?}",
        out.boot_to_mount.unwrap_or_default(),
        out.elapsed
    );
}
