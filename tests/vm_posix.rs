//! POSIX features beyond pjdfstest's reach, in a real guest: record locks and flock between
//! guest processes (including a blocked wait that must not stall other requests), O_TMPFILE,
//! inode flags through ioctl, syncfs, and POSIX ACLs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{require_vm, run_vm, vufsd_bin, Daemon, DaemonSpec, TestDir, VmConfig, VmOutcome};

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The daemon's log after it exited 0; also checks the guest never hit an opcode vufsd
/// answers ENOSYS.
fn finish(mut daemon: Daemon, out: &VmOutcome) -> String {
    let status = daemon.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "{status}\n{}\n{}",
        daemon.report(),
        out.report()
    );
    let log = daemon.output();
    let enosys = common::unexpected_enosys(&log);
    assert!(
        enosys.is_empty(),
        "the guest used unsupported opcodes {enosys:?}:\n{log}"
    );
    log
}

/// Two guest processes contend for locks. Process A holds, B first fails without waiting, then
/// waits; while B waits, other requests on the *same* request queue are served.
const LOCKS: &str = r#"
import fcntl, os, struct, sys, time, subprocess
mode = sys.argv[1]
path = '/mnt/lockfile'
def out(*a): print(*a, flush=True)
if mode == 'holder':
    f = open(path, 'r+')
    kind = sys.argv[2]
    if kind == 'posix': fcntl.lockf(f, fcntl.LOCK_EX)
    else: fcntl.flock(f, fcntl.LOCK_EX)
    open('/mnt/held-' + kind, 'w').close()
    # Hold until the busy work is done (or the cap): if the contender's wait stalled other
    # requests, that work cannot finish while the lock is held, and ends after RELEASED.
    cap = time.time() + float(sys.argv[3])
    while not os.path.exists('/mnt/busy-done-' + kind) and time.time() < cap: time.sleep(0.05)
    time.sleep(0.3)   # the contender has been waiting a while longer
    out('RELEASED', time.time())   # just before: the contender cannot get it earlier
    if sys.argv[4] == 'close': f.close()   # a close releases POSIX locks and flocks
    else:
        if kind == 'posix': fcntl.lockf(f, fcntl.LOCK_UN)
        else: fcntl.flock(f, fcntl.LOCK_UN)
elif mode == 'contender':
    kind = sys.argv[2]
    while not os.path.exists('/mnt/held-' + kind): time.sleep(0.05)
    f = open(path, 'r+')
    try:
        if kind == 'posix': fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out('NB-GOT-LOCK')
    except OSError as e:
        out('NB-REFUSED', e.errno)
    if kind == 'posix':
        # F_GETLK sees the holder's write lock.
        q = struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0)
        r = fcntl.fcntl(f, fcntl.F_GETLK, q)
        out('GETLK-TYPE', struct.unpack('hhqqi', r)[0] == fcntl.F_WRLCK)
    out('WAIT-START', time.time())
    open('/mnt/waiting-' + kind, 'w').close()
    if kind == 'posix': fcntl.lockf(f, fcntl.LOCK_EX)
    else: fcntl.flock(f, fcntl.LOCK_EX)
    out('ACQUIRED', time.time())
elif mode == 'busy':
    # Runs while the contender waits: must not be held up behind the lock wait.
    kind = sys.argv[2]
    while not os.path.exists('/mnt/waiting-' + kind): time.sleep(0.05)
    time.sleep(0.3)   # the contender's blocking request has reached the daemon
    for i in range(20):
        with open('/mnt/busy-%d' % i, 'w') as g: g.write('x')
        os.listdir('/mnt')
    out('BUSY-END', time.time())
    open('/mnt/busy-done-' + kind, 'w').close()
"#;

/// Write `body` to `/test/<name>` in the guest (the run's io directory on the host).
fn guest_file(name: &str, body: &str) -> String {
    format!("cat > /test/{name} <<'VUFS_EOF'\n{body}\nVUFS_EOF\n")
}

#[test]
fn locks_between_guest_processes() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("posix_locks");
    let share = dir.mkdir("share");
    std::fs::write(share.join("lockfile"), "0123456789").unwrap();
    let daemon =
        DaemonSpec::fs(Ok(vufsd_bin()), &dir.path().join("vfs.sock"), &share).spawn(dir.path());
    // One request queue: the blocked wait and the busy work share it.
    let script = guest_file("locks.py", LOCKS)
        + r#"
L="hostrun python3 /test/locks.py"
for kind in posix flock; do
  for how in unlock close; do
    rm -f /mnt/held-$kind /mnt/waiting-$kind /mnt/busy-done-$kind
    $L holder $kind 60 $how > /tmp/h.out &
    $L busy $kind > /tmp/b.out &
    $L contender $kind > /tmp/c.out
    wait
    expect_eq $kind-$how-nonblocking-refused "$(grep -c NB-REFUSED /tmp/c.out)" 1
    s=$(sed -n 's/^WAIT-START //p' /tmp/c.out)
    r=$(sed -n 's/^RELEASED //p' /tmp/h.out)
    a=$(sed -n 's/^ACQUIRED //p' /tmp/c.out)
    # It started waiting while the lock was held, and got it only once it was released.
    check $kind-$how-blocked-until-release awk "BEGIN{exit !($s < $r && $a >= $r)}"
    w=$(awk "BEGIN{printf \"%.1f\", $a - $s}")
    b=$(sed -n 's/^BUSY-END //p' /tmp/b.out)
    # The same queue's other requests were served while the contender waited: they ended
    # before the lock was released (an ordering, not a time limit).
    check $kind-$how-other-requests-not-stalled awk "BEGIN{exit !($b < $r)}"
    if [ $kind = posix ]; then expect_eq posix-$how-getlk-sees-holder "$(grep -c 'GETLK-TYPE True' /tmp/c.out)" 1; fi
    echo "$kind $how waited=$w"
  done
done
"#;
    let out = run_vm(
        &VmConfig::new(dir.path(), script)
            .with_daemon(&daemon, "vufs")
            .request_queues(1)
            .timeout(Duration::from_secs(120)),
    );
    let mut expected = vec![
        "posix-unlock-getlk-sees-holder".to_string(),
        "posix-close-getlk-sees-holder".to_string(),
    ];
    for kind in ["posix", "flock"] {
        for how in ["unlock", "close"] {
            for check in [
                "nonblocking-refused",
                "blocked-until-release",
                "other-requests-not-stalled",
            ] {
                expected.push(format!("{kind}-{how}-{check}"));
            }
        }
    }
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    out.assert_ok(&expected);
    for line in out.guest_output.lines().filter(|l| l.contains("waited=")) {
        eprintln!("{line}");
    }
    finish(daemon, &out);
}

/// O_TMPFILE (FUSE_TMPFILE) made permanent with linkat, inode flags through FS_IOC_*FLAGS,
/// syncfs, copy_file_range and SEEK_DATA/SEEK_HOLE.
#[test]
fn tmpfile_ioctl_syncfs_copy_range_seek() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("posix_misc");
    let share = dir.mkdir("share");
    std::fs::write(share.join("flags"), "x").unwrap();
    let daemon =
        DaemonSpec::fs(Ok(vufsd_bin()), &dir.path().join("vfs.sock"), &share).spawn(dir.path());
    let script = guest_file(
        "misc.py",
        r#"
import os, sys
op = sys.argv[1]
if op == 'tmpfile':
    fd = os.open('/mnt', os.O_TMPFILE | os.O_RDWR, 0o640)
    os.write(fd, b'born unnamed')
    assert not [n for n in os.listdir('/mnt') if n.startswith('fromtmp')]
    # linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH): what `ln` of an O_TMPFILE file does.
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b'', -100, b'/mnt/fromtmp', 0x1000) != 0:
        print('linkat errno', ctypes.get_errno()); sys.exit(1)
    print('TMPFILE-LINKED')
elif op == 'copy':
    with open('/mnt/src', 'wb') as f: f.write(b'abcdefghij' * 1000)
    i = os.open('/mnt/src', os.O_RDONLY); o = os.open('/mnt/dst', os.O_WRONLY | os.O_CREAT, 0o644)
    n = os.copy_file_range(i, o, 5000, 0, 0)
    print('COPIED', n)
elif op == 'seek':
    fd = os.open('/mnt/sparse', os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b'data', 1 << 20)
    print('DATA', os.lseek(fd, 0, os.SEEK_DATA), 'HOLE', os.lseek(fd, 0, os.SEEK_HOLE))
"#,
    ) + r#"
M="hostrun python3 /test/misc.py"
expect_eq tmpfile "$($M tmpfile)" TMPFILE-LINKED
expect_eq tmpfile-content "$(cat /mnt/fromtmp)" "born unnamed"
check chattr hostrun chattr +d /mnt/flags
check lsattr sh -c 'hostrun lsattr /mnt/flags | cut -d" " -f1 | grep -q d'
check chattr-clear hostrun chattr -d /mnt/flags
check syncfs hostrun sync -f /mnt/flags
expect_eq copy-file-range "$($M copy)" "COPIED 5000"
expect_eq copied-bytes "$(head -c 10 /mnt/dst)" "abcdefghij"
expect_eq seek-data-hole "$($M seek)" "DATA 1048576 HOLE 0"
"#;
    let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "vufs"));
    out.assert_ok(&[
        "tmpfile",
        "tmpfile-content",
        "chattr",
        "lsattr",
        "chattr-clear",
        "syncfs",
        "copy-file-range",
        "copied-bytes",
        "seek-data-hole",
    ]);
    finish(daemon, &out);
    let md = std::fs::metadata(share.join("fromtmp")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    assert_eq!(
        std::fs::read(share.join("fromtmp")).unwrap(),
        b"born unnamed"
    );
    assert_eq!(std::fs::metadata(share.join("dst")).unwrap().len(), 5000);
}

/// --posix-acl: ACLs set in the guest are the host's, the guest enforces them, a default ACL
/// replaces the umask for new files, and setgid directories pass on their group.
#[test]
fn posix_acls() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("posix_acl");
    let share = dir.mkdir("share");
    let daemon = DaemonSpec::fs(Ok(vufsd_bin()), &dir.path().join("vfs.sock"), &share)
        .arg("--posix-acl")
        .spawn(dir.path());
    let script = r#"
umask 022
cd /mnt
echo secret > private; chmod 0600 private
AS1000="hostrun setpriv --reuid=1000 --regid=1000 --clear-groups"
check_fails no-acl-no-read $AS1000 cat /mnt/private
check setfacl hostrun setfacl -m u:1000:r /mnt/private
expect_eq getfacl "$(hostrun getfacl -cpn /mnt/private | grep -c '^user:1000:r--')" 1
expect_eq acl-grants-read "$($AS1000 cat /mnt/private)" secret
mkdir dacl plain
check default-acl hostrun setfacl -d -m u::rwx,g::rwx,o::rwx /mnt/dacl
touch dacl/f plain/f
expect_eq default-acl-replaces-umask "$(stat -c %a dacl/f)" 666
expect_eq umask-applies-without-default-acl "$(stat -c %a plain/f)" 644
mkdir dacl/sub
expect_eq default-acl-inherited-by-subdir "$(hostrun getfacl -cp /mnt/dacl/sub | grep -c '^default:other::rwx')" 1
mkdir sg; chgrp 1234 sg; chmod 2775 sg
touch sg/f; mkdir sg/d
expect_eq setgid-dir-group-file "$(stat -c %g sg/f)" 1234
expect_eq setgid-dir-group-subdir "$(stat -c %g sg/d)" 1234
expect_eq setgid-dir-subdir-keeps-bit "$(stat -c %a sg/d | cut -c1)" 2
"#;
    let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "vufs"));
    out.assert_ok(&[
        "no-acl-no-read",
        "setfacl",
        "getfacl",
        "acl-grants-read",
        "default-acl",
        "default-acl-replaces-umask",
        "umask-applies-without-default-acl",
        "default-acl-inherited-by-subdir",
        "setgid-dir-group-file",
        "setgid-dir-group-subdir",
        "setgid-dir-subdir-keeps-bit",
    ]);
    finish(daemon, &out);
    // The host sees the same ACL.
    let acl = std::process::Command::new("getfacl")
        .args(["-cpn"])
        .arg(share.join("private"))
        .output()
        .expect("getfacl (package acl)");
    assert!(String::from_utf8_lossy(&acl.stdout).contains("user:1000:r--"));
    assert_eq!(std::fs::metadata(share.join("sg/f")).unwrap().gid(), 1234);
}
