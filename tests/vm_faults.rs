//! Faults from the host under a mounted guest (docs/reliability.md): a full filesystem, the
//! shared directory renamed, made unreadable and deleted, a file truncated under a guest's
//! mmap, and EIO from the storage. Each gives the guest an errno (or the signal a local
//! filesystem gives), never a hang or a panic, and the daemon goes on serving.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{require, require_vm, run_vm, vufsd_bin, DaemonSpec, HostAction, TestDir, VmConfig};

const NOBODY: u32 = 65534;

/// A filesystem mounted for one test, unmounted when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Mounted {
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "vufsd-test",
        ])
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs on {}", at.display());
    Mounted(at.to_path_buf())
}

/// The daemon is still there, and leaves cleanly when the guest is gone.
fn assert_daemon_served_to_the_end(daemon: &mut common::Daemon) {
    let st = daemon.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}\n{}", daemon.output());
    assert!(!daemon.output().contains("panicked"), "{}", daemon.output());
}

#[test]
fn a_full_share_gives_enospc_keeps_what_was_written_and_serves_on() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("fault_enospc");
    let share = dir.mkdir("share");
    let _fs = mount_tmpfs(&share, "8m");
    std::fs::write(share.join("before"), vec![7u8; 1 << 20]).unwrap();
    std::fs::write(share.join("spare"), vec![1u8; 1 << 20]).unwrap();
    let sock = dir.path().join("vfs.sock");
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share).spawn(dir.path());
    let out = run_vm(
        &VmConfig::new(
            dir.path(),
            r#"
dd if=/dev/zero of=/mnt/big bs=64k count=1000 2>/tmp/dd.err
echo "DD-EXIT $?"
grep -q 'No space left on device' /tmp/dd.err && ok enospc || fail enospc "$(cat /tmp/dd.err)"
sed 's/^/DD-ERR /' /tmp/dd.err
echo "BIG-SIZE $(stat -c %s /mnt/big)"
check_fails still-full sh -c 'echo x > /mnt/more'
check freed rm /mnt/spare
check writes-again sh -c 'echo after > /mnt/after && cat /mnt/after'
"#,
        )
        .with_daemon(&daemon, "share"),
    );
    out.assert_ok(&["enospc", "still-full", "freed", "writes-again"]);
    // What was there before the disk filled up is untouched.
    assert_eq!(
        std::fs::read(share.join("before")).unwrap(),
        vec![7u8; 1 << 20]
    );
    let g = &out.guest_output;
    // dd saw the error; the file holds exactly what the guest sees of it, all of it the zeros
    // dd wrote: the writes that failed left nothing behind (a short write is what POSIX
    // allows, garbage is not).
    assert!(g.contains("DD-EXIT 1"), "{}", out.report());
    let size: Option<u64> = g
        .lines()
        .find_map(|l| l.strip_prefix("BIG-SIZE "))
        .and_then(|v| v.trim().parse().ok());
    let on_host = std::fs::read(share.join("big")).unwrap_or_default();
    eprintln!(
        "dd: {}",
        g.lines()
            .filter(|l| l.starts_with("DD-ERR"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert_eq!(size, Some(on_host.len() as u64), "{}", out.report());
    assert!(on_host.len() > (4 << 20) && on_host.iter().all(|b| *b == 0));
    // And it is what dd counted as written, in whole 64 KiB records.
    let full: Option<u64> = g
        .lines()
        .find_map(|l| l.strip_prefix("DD-ERR ")?.strip_suffix("+0 records out"))
        .and_then(|n| n.parse().ok());
    assert_eq!(full.map(|n| n * 65536), size, "{}", out.report());
    assert_eq!(std::fs::read(share.join("after")).unwrap(), b"after\n");
    assert_daemon_served_to_the_end(&mut daemon);
    let log = daemon.output();
    assert!(
        log.contains("the host's filesystem failed a write") && log.contains("No space left"),
        "{log}"
    );
}

#[test]
fn the_shared_directory_renamed_made_unreadable_and_deleted_under_the_guest() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("fault_sharedir");
    let share = dir.mkdir("share");
    std::fs::write(share.join("f"), b"hello\n").unwrap();
    std::os::unix::fs::chown(&share, Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(share.join("f"), Some(NOBODY), Some(NOBODY)).unwrap();
    dir.chown(NOBODY, NOBODY);
    let moved = dir.path().join("share-moved");
    let sock = dir.path().join("vfs.sock");
    // Unprivileged, so that permissions apply to the daemon as to any user.
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share)
        .run_as(NOBODY, NOBODY)
        .spawn(dir.path());
    let (s, m) = (share.display().to_string(), moved.display().to_string());
    let out = run_vm(
        &VmConfig::new(
            dir.path(),
            r#"
host_do 0
check renamed-read grep -q hello /mnt/f
check renamed-create sh -c 'echo new > /mnt/g'
host_do 1
ls /mnt > /dev/null 2>/tmp/ls.err
grep -q 'Permission denied' /tmp/ls.err && ok unreadable-eacces || fail unreadable-eacces "$(cat /tmp/ls.err)"
host_do 2
check readable-again grep -q hello /mnt/f
host_do 3
sleep 1.2
ls /mnt/f > /dev/null 2>/tmp/ls2.err
grep -q 'No such file' /tmp/ls2.err && ok deleted-enoent || fail deleted-enoent "$(cat /tmp/ls2.err)"
touch /mnt/h 2>/tmp/touch.err
grep -q 'No such file' /tmp/touch.err && ok deleted-create-enoent || fail deleted-create-enoent "$(cat /tmp/touch.err)"
"#,
        )
        .with_daemon(&daemon, "share")
        .on_host_do(HostAction::run(&["mv", &s, &m]))
        .on_host_do(HostAction::run(&["chmod", "000", &m]))
        .on_host_do(HostAction::run(&["chmod", "755", &m]))
        .on_host_do(HostAction::run(&["rm", "-rf", &m])),
    );
    out.assert_ok(&[
        "renamed-read",
        "renamed-create",
        "unreadable-eacces",
        "readable-again",
        "deleted-enoent",
        "deleted-create-enoent",
    ]);
    for n in 0..4 {
        assert!(
            out.guest_output.contains(&format!("HOST-DONE {n} ok")),
            "{}",
            out.report()
        );
    }
    assert_daemon_served_to_the_end(&mut daemon);
    let log = daemon.output();
    assert!(
        log.contains("the shared directory was removed on the host"),
        "{log}"
    );
}

#[test]
fn a_file_truncated_by_the_host_under_a_guest_mmap_gives_sigbus_as_locally() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("fault_mmap");
    let share = dir.mkdir("share");
    std::fs::write(share.join("big"), vec![1u8; 1 << 20]).unwrap();
    let sock = dir.path().join("vfs.sock");
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share).spawn(dir.path());
    let big = share.join("big").display().to_string();
    // One Python process (the host's, through hostrun) maps the file and reads it, asks the
    // host to cut it to one page (host_do's protocol, by hand), stats it again once the
    // attributes have timed out (1 s), and touches a page past the new end.
    let script = r#"
hostrun python3 -c '
import mmap, os, time
f = open("/mnt/big", "rb")
m = mmap.mmap(f.fileno(), 1 << 20, prot=mmap.PROT_READ)
print("FIRST", m[0], m[(1 << 20) - 1], flush=True)
print("HOST-DO 0", flush=True)
while not os.path.exists("/test/ack.0"):
    time.sleep(0.1)
time.sleep(1.2)
print("SIZE", os.stat("/mnt/big").st_size, flush=True)
print("PAGE0", m[0], flush=True)
print("BEYOND", m[512 * 1024], flush=True)
'
echo "PY-EXIT $?"
check after-sigbus sh -c 'test "$(stat -c %s /mnt/big)" = 4096'
"#;
    let out = run_vm(
        &VmConfig::new(dir.path(), script)
            .with_daemon(&daemon, "share")
            .on_host_do(HostAction::run(&["truncate", "-s", "4096", &big])),
    );
    out.assert_ok(&["after-sigbus"]);
    assert!(out.guest_output.contains("FIRST 1 1"), "{}", out.report());
    let g = &out.guest_output;
    assert!(g.contains("SIZE 4096"), "{}", out.report());
    assert!(g.contains("PAGE0 1"), "{}", out.report());
    // 128 + SIGBUS: as on a local filesystem, the page past the end is not there.
    assert!(
        g.contains("PY-EXIT 135") && !g.contains("BEYOND"),
        "{}",
        out.report()
    );
    assert_daemon_served_to_the_end(&mut daemon);
}

/// The storage fails reads and writes of some files (tests/faultfs.py, a FUSE filesystem on
/// the host standing in for a failing block device).
struct FaultFs {
    child: Child,
    _mount: Mounted,
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg(&self._mount.0)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn faultfs(backing: &Path, at: &Path) -> Result<FaultFs, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faultfs.py");
    let child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(backing)
        .arg(at)
        .spawn()
        .map_err(|e| format!("/usr/bin/python3 tests/faultfs.py: {e}"))?;
    let mut fs = FaultFs {
        child,
        _mount: Mounted(at.to_path_buf()),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let target = at.display().to_string();
    loop {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        if mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(target.as_str()))
        {
            return Ok(fs);
        }
        if let Ok(Some(st)) = fs.child.try_wait() {
            return Err(format!(
                "faultfs exited with {st} (apt packages python3-fusepy, fuse3)"
            ));
        }
        if Instant::now() >= deadline {
            return Err("faultfs did not mount within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn eio_from_the_storage_reaches_the_guest_as_eio_for_that_file_alone() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("fault_eio");
    let backing = dir.mkdir("backing");
    let share = dir.mkdir("share");
    std::fs::write(backing.join("good"), b"fine\n").unwrap();
    std::fs::write(backing.join("bad-sectors"), b"unreadable\n").unwrap();
    let Some(_fs) = require("faultfs (tests/faultfs.py)", faultfs(&backing, &share)) else {
        return;
    };
    let sock = dir.path().join("vfs.sock");
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share).spawn(dir.path());
    let out = run_vm(
        &VmConfig::new(
            dir.path(),
            r#"
cat /mnt/bad-sectors > /dev/null 2>/tmp/r.err
grep -q 'Input/output error' /tmp/r.err && ok read-eio || fail read-eio "$(cat /tmp/r.err)"
echo more >> /mnt/bad-sectors 2>/tmp/w.err
grep -q 'Input/output error' /tmp/w.err && ok write-eio || fail write-eio "$(cat /tmp/w.err)"
check good-read grep -q fine /mnt/good
check good-write sh -c 'echo ok > /mnt/new && cat /mnt/new'
check listing sh -c 'ls /mnt | grep -q bad-sectors'
"#,
        )
        .with_daemon(&daemon, "share"),
    );
    out.assert_ok(&[
        "read-eio",
        "write-eio",
        "good-read",
        "good-write",
        "listing",
    ]);
    assert_eq!(std::fs::read(backing.join("new")).unwrap(), b"ok\n");
    assert_daemon_served_to_the_end(&mut daemon);
    let log = daemon.output();
    assert!(
        log.contains("the host's filesystem failed a read") && log.contains("Input/output error"),
        "{log}"
    );
}
