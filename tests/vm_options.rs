//! virtiofsd options vufsd serves, seen from a guest.

mod common;

use std::process::Command;

use common::{require_vm, run_vm, vufsd_bin, DaemonSpec, TestDir, VmConfig};

/// `--announce-submounts`: a host filesystem mounted inside the share gets a device number of
/// its own in the guest, so `find -xdev` stops at it, as on the host; without the option the
/// whole share is one device.
#[test]
fn announced_submounts_have_their_own_device_in_the_guest() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("submounts");
    let share = dir.mkdir("share");
    std::fs::write(share.join("top"), b"top").unwrap();
    let m = share.join("m");
    std::fs::create_dir(&m).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "vufsd-sub"])
        .arg(&m)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(m.clone());
    std::fs::write(m.join("inner"), b"inner").unwrap();
    let script = r#"
echo "DEVS $(stat -c %d /mnt) $(stat -c %d /mnt/m/.) $(stat -c %d /mnt/m/inner)"
echo "XDEV $(find /mnt -xdev -type f | sort | tr '\n' ' ')"
check inner-readable grep -q inner /mnt/m/inner
"#;
    for announce in [true, false] {
        let sock = dir.path().join("vfs.sock");
        let mut spec = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share);
        if announce {
            spec = spec.arg("--announce-submounts");
        }
        let daemon = spec.spawn(dir.path());
        let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "share"));
        out.assert_ok(&["inner-readable"]);
        let devs: Vec<String> = out
            .guest_output
            .lines()
            .find_map(|l| l.strip_prefix("DEVS "))
            .unwrap()
            .split(' ')
            .map(String::from)
            .collect();
        let xdev = out
            .guest_output
            .lines()
            .find_map(|l| l.strip_prefix("XDEV "))
            .unwrap();
        if announce {
            assert_ne!(devs[0], devs[1], "{}", out.report());
            assert_eq!(devs[1], devs[2], "{}", out.report());
            assert_eq!(xdev.trim(), "/mnt/top", "{}", out.report());
        } else {
            assert!(devs[0] == devs[1] && devs[1] == devs[2], "{}", out.report());
            assert_eq!(xdev.trim(), "/mnt/m/inner /mnt/top", "{}", out.report());
        }
    }
}

/// `--xattrmap=/map/trusted./user.virtiofs./`: the guest's trusted.* lives under
/// user.virtiofs. on the host, the host's own trusted.* is hidden, the guest cannot write
/// user.virtiofs.* directly, and other names pass unchanged.
#[test]
fn mapped_xattr_names_between_guest_and_host() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("xattrmap");
    let share = dir.mkdir("share");
    let f = share.join("f");
    std::fs::write(&f, b"x").unwrap();
    let setfattr = |name: &str, value: &str| {
        let st = Command::new("setfattr")
            .args(["-n", name, "-v", value])
            .arg(&f)
            .status()
            .unwrap();
        assert!(st.success());
    };
    setfattr("trusted.hostonly", "h");
    let sock = dir.path().join("vfs.sock");
    let daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share)
        .arg("--xattrmap=/map/trusted./user.virtiofs./")
        .spawn(dir.path());
    let script = r#"
check set-trusted hostrun setfattr -n trusted.guest -v g /mnt/f
check set-user hostrun setfattr -n user.plain -v p /mnt/f
check_fails set-alias hostrun setfattr -n user.virtiofs.sneaky -v s /mnt/f
expect_eq get-trusted "$(hostrun getfattr --only-values -n trusted.guest /mnt/f)" g
echo "LIST $(hostrun getfattr -m - -d /mnt/f 2>/dev/null | grep = | cut -d= -f1 | sort | tr '\n' ' ')"
"#;
    let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "share"));
    out.assert_ok(&["set-trusted", "set-user", "set-alias", "get-trusted"]);
    let list = out
        .guest_output
        .lines()
        .find_map(|l| l.strip_prefix("LIST "))
        .unwrap();
    assert_eq!(list.trim(), "trusted.guest user.plain", "{}", out.report());
    let host = Command::new("getfattr")
        .args(["-m", "-", "-d"])
        .arg(&f)
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    assert!(host.contains("user.virtiofs.trusted.guest=\"g\""), "{host}");
    assert!(host.contains("user.plain=\"p\""), "{host}");
    assert!(host.contains("trusted.hostonly=\"h\""), "{host}");
    assert!(!host.contains("sneaky"), "{host}");
}

/// Writing or truncating a setuid/setgid file as a user without CAP_FSETID clears the bits,
/// as on a local filesystem — done by the guest's own SETATTR by default, by the daemon with
/// `--killpriv-v2`.
#[test]
fn setuid_and_setgid_bits_are_cleared_on_write_with_and_without_killpriv_v2() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("killpriv");
    let share = dir.mkdir("share");
    let script = r#"
for f in w t; do
    echo data > /mnt/$f && chmod 6777 /mnt/$f
done
hostrun setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo more >> /mnt/w'
hostrun setpriv --reuid=65534 --regid=65534 --clear-groups truncate -s 1 /mnt/t
echo "MODES $(stat -c %a /mnt/w) $(stat -c %a /mnt/t)"
"#;
    for killpriv in [false, true] {
        let sock = dir.path().join("vfs.sock");
        let mut spec = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share);
        if killpriv {
            spec = spec.arg("--killpriv-v2");
        }
        let daemon = spec.spawn(dir.path());
        let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "share"));
        out.assert_ok(&[]);
        let modes = out
            .guest_output
            .lines()
            .find_map(|l| l.strip_prefix("MODES "))
            .unwrap();
        assert_eq!(
            modes.trim(),
            "777 777",
            "killpriv_v2 {killpriv}\n{}",
            out.report()
        );
        for f in ["w", "t"] {
            let m = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(share.join(f)).unwrap().permissions(),
            );
            assert_eq!(m & 0o7777, 0o777, "{f} on the host, killpriv_v2 {killpriv}");
        }
    }
}

/// `--poll-us`: a polling daemon (offering two request queues) serves a real guest with two
/// processes writing at once: every byte arrives, reads see them, and the daemon exits
/// cleanly with the guest. (Polling itself is tested at the protocol level in
/// tests/protocol.rs; here it meets the guest kernel's own notification suppression.)
#[test]
fn a_polling_daemon_serves_a_guest_on_two_queues() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("poll");
    let share = dir.mkdir("share");
    let sock = dir.path().join("vfs.sock");
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share)
        .arg("--poll-us=50")
        .spawn(dir.path());
    let script = r#"
w() { mkdir /mnt/$1; for i in $(seq 1 200); do echo "$1 $i" > /mnt/$1/f$i; done; }
w a & w b & wait
expect_eq files "$(ls /mnt/a /mnt/b | grep -c '^f')" 400
expect_eq content-a "$(cat /mnt/a/f17)" "a 17"
expect_eq content-b "$(cat /mnt/b/f200)" "b 200"
"#;
    let out = run_vm(
        &VmConfig::new(dir.path(), script)
            .with_daemon(&daemon, "share")
            .request_queues(2),
    );
    out.assert_ok(&["files", "content-a", "content-b"]);
    for d in ["a", "b"] {
        for i in 1..=200 {
            let got = std::fs::read_to_string(share.join(d).join(format!("f{i}"))).unwrap();
            assert_eq!(got, format!("{d} {i}\n"), "{}", out.report());
        }
    }
    let status = daemon.wait_exit(std::time::Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", daemon.report());
}
