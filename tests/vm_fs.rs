//! The foundation, proven with a real guest: a Debian kernel mounts the share from the vufsd we
//! just built, runs file operations, and both sides check the result.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{require_vm, run_vm, DaemonKind, DaemonSpec, TestDir, VmConfig};

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The value printed by the guest as `KEY value`.
fn guest_value<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(str::trim)
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum on the host");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Deterministic, incompressible-enough bytes.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

const OPS_SCRIPT: &str = r#"
cd /mnt
# create / write / read / append / truncate
check create sh -c 'echo one > f.txt'
check append sh -c 'echo two >> f.txt'
expect_eq read "$(cat f.txt | tr '\n' ' ')" "one two "
check truncate truncate -s 4 f.txt
expect_eq truncated-size "$(stat -c %s f.txt)" 4
expect_eq read-host-file "$(cat from-host.txt)" "written on the host"
# rename, unlink, mkdir, rmdir
check mkdir mkdir -p d1/d2
check rename mv f.txt d1/d2/g.txt
check_fails old-name-gone test -e f.txt
check rename-dir mv d1 d3
check touch-gone touch gone.txt
check unlink rm gone.txt
check_fails unlinked test -e gone.txt
check mkdir-empty mkdir empty
check rmdir rmdir empty
check_fails rmdir-nonempty rmdir d3
# rename flags through renameat2 (RENAME_NOREPLACE=1, RENAME_EXCHANGE=2)
echo a > xa; echo b > xb
RENAME2='import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); r=l.syscall(316,-100,sys.argv[1].encode(),-100,sys.argv[2].encode(),int(sys.argv[3])); sys.exit(ctypes.get_errno() if r else 0)'
check_fails rename-noreplace hostrun python3 -c "$RENAME2" /mnt/xa /mnt/xb 1
check rename-exchange hostrun python3 -c "$RENAME2" /mnt/xa /mnt/xb 2
expect_eq exchanged "$(cat xa)$(cat xb)" "ba"
# symlinks and hard links
check symlink ln -s d3/d2/g.txt sym
expect_eq readlink "$(readlink sym)" "d3/d2/g.txt"
expect_eq read-via-symlink "$(cat sym)" "one"
check hardlink ln d3/d2/g.txt hard
expect_eq nlink "$(stat -c %h hard)" 2
# attributes changed in the guest, checked on the host afterwards
echo attrs > attrs.txt
check chmod chmod 0640 attrs.txt
check chown chown 1234:5678 attrs.txt
check mtime touch -m -d '2001-02-03 04:05:06' attrs.txt
expect_eq guest-mode "$(stat -c %a attrs.txt)" 640
# extended attributes (vufsd runs with --xattr)
check setfattr hostrun setfattr -n user.color -v blue /mnt/attrs.txt
expect_eq getfattr "$(hostrun getfattr --only-values -n user.color /mnt/attrs.txt)" blue
expect_eq listxattr "$(hostrun getfattr --absolute-names -d -m '^user\.' /mnt/attrs.txt | grep -c user.color)" 1
check removexattr hostrun setfattr -x user.color /mnt/attrs.txt
check_fails removed-xattr hostrun getfattr -n user.color /mnt/attrs.txt
check set-host-xattr-visible sh -c 'hostrun getfattr --only-values -n user.from /mnt/from-host.txt | grep -q host'
# a symlink on the host pointing outside the share is resolved by the guest, in the guest:
# the host file behind it is never read
expect_eq escape-readlink "$(readlink escape)" "$CANARY"
check_fails escape-read cat escape
check_fails escape-read-via-host-view hostrun cat /mnt/escape
check_fails dotdot-at-root test -e /mnt/../canary-secret
# a directory of 2,000 entries, listed completely, created on either side
expect_eq host-made-2000 "$(ls many | wc -l)" 2000
check guest-makes-2000 sh -c 'mkdir gmany && cd gmany && i=0; while [ $i -lt 2000 ]; do : > "entry-$i"; i=$((i+1)); done'
expect_eq guest-made-2000 "$(ls gmany | wc -l)" 2000
expect_eq readdir-names "$(ls many | sort | head -1)/$(ls many | sort | tail -1)" "e0000/e1999"
# 64 MiB both ways
check write-64m dd if=/dev/urandom of=big-guest bs=1M count=64
echo "SHA-GUEST-WRITTEN $(sha256sum big-guest | cut -d' ' -f1)"
echo "SHA-HOST-WRITTEN $(sha256sum big-host | cut -d' ' -f1)"
check statfs sh -c 'df /mnt | grep -q /mnt'
cd /
"#;

#[test]
fn file_operations_seen_from_both_sides() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("vm_fs_ops");
    let share = dir.mkdir("share");
    // A canary beside the share: nothing the guest does may reveal it.
    let canary = dir.mkdir("canary").join("secret");
    std::fs::write(&canary, "CANARY-CONTENT").unwrap();
    std::fs::write(share.join("from-host.txt"), "written on the host").unwrap();
    xattr_set(&share.join("from-host.txt"), "user.from", b"host");
    std::os::unix::fs::symlink(&canary, share.join("escape")).unwrap();
    std::fs::create_dir(share.join("many")).unwrap();
    for i in 0..2000 {
        std::fs::write(share.join("many").join(format!("e{i:04}")), b"").unwrap();
    }
    let big = pattern(64 << 20);
    std::fs::write(share.join("big-host"), &big).unwrap();

    let mut daemon = DaemonSpec::fs(
        DaemonKind::from_env().program(),
        &dir.path().join("vfs.sock"),
        &share,
    )
    .arg("--xattr")
    .spawn(dir.path());
    let script = format!("CANARY={}\n{OPS_SCRIPT}", canary.display());
    let out = run_vm(
        &VmConfig::new(dir.path(), script)
            .with_daemon(&daemon, "vufs")
            .timeout(Duration::from_secs(180)),
    );
    out.assert_ok(&[
        "create",
        "append",
        "read",
        "truncate",
        "truncated-size",
        "read-host-file",
        "mkdir",
        "rename",
        "old-name-gone",
        "rename-dir",
        "unlink",
        "unlinked",
        "rmdir",
        "rmdir-nonempty",
        "rename-noreplace",
        "rename-exchange",
        "exchanged",
        "symlink",
        "readlink",
        "read-via-symlink",
        "hardlink",
        "nlink",
        "chmod",
        "chown",
        "mtime",
        "guest-mode",
        "setfattr",
        "getfattr",
        "listxattr",
        "removexattr",
        "removed-xattr",
        "set-host-xattr-visible",
        "escape-readlink",
        "escape-read",
        "escape-read-via-host-view",
        "dotdot-at-root",
        "host-made-2000",
        "guest-makes-2000",
        "guest-made-2000",
        "readdir-names",
        "write-64m",
        "statfs",
    ]);
    assert!(
        !out.guest_output.contains("CANARY-CONTENT"),
        "{}",
        out.report()
    );

    // The host sees what the guest did.
    let g = share.join("d3/d2/g.txt");
    assert_eq!(std::fs::read_to_string(&g).unwrap(), "one\n");
    assert!(!share.join("f.txt").exists());
    assert_eq!(
        std::fs::read_link(share.join("sym")).unwrap(),
        Path::new("d3/d2/g.txt")
    );
    assert_eq!(
        std::fs::metadata(share.join("hard")).unwrap().ino(),
        std::fs::metadata(&g).unwrap().ino()
    );
    let md = std::fs::metadata(share.join("attrs.txt")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.mtime(), 981173106, "mtime 2001-02-03 04:05:06 UTC");
    assert_eq!(
        std::fs::read_dir(share.join("gmany")).unwrap().count(),
        2000
    );
    assert_eq!(
        guest_value(&out.guest_output, "SHA-GUEST-WRITTEN"),
        Some(sha256(&share.join("big-guest")).as_str()),
        "64 MiB written in the guest differs on the host\n{}",
        out.report()
    );
    assert_eq!(
        guest_value(&out.guest_output, "SHA-HOST-WRITTEN"),
        Some(sha256(&share.join("big-host")).as_str()),
        "64 MiB written on the host reads differently in the guest\n{}",
        out.report()
    );
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "CANARY-CONTENT");
    let status = daemon.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "vufsd must exit 0 when QEMU quits: {status}\n{}",
        daemon.report()
    );
    if let Some(t) = out.boot_to_mount {
        eprintln!("boot-to-mount: {:.2} s", t.as_secs_f64());
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a value buffer of the length passed.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr on the host: {}",
        std::io::Error::last_os_error()
    );
}

/// Several guest processes writing and reading at once, over 1 and 4 request queues.
fn parallel_io(queues: u32) {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new(&format!("vm_fs_queues{queues}"));
    let share = dir.mkdir("share");
    let mut daemon = DaemonSpec::fs(
        DaemonKind::from_env().program(),
        &dir.path().join("vfs.sock"),
        &share,
    )
    .spawn(dir.path());
    let script = r#"
for i in 1 2 3 4 5 6 7 8; do
  ( dd if=/dev/urandom of=/mnt/p$i bs=64k count=64 2>/dev/null && sha256sum /mnt/p$i > /tmp/sum$i ) &
done
wait
for i in 1 2 3 4 5 6 7 8; do echo "SUM$i $(cut -d' ' -f1 /tmp/sum$i)"; done
check parallel-listing sh -c 'ls /mnt | grep -c "^p" | grep -qx 8'
"#;
    let out = run_vm(
        &VmConfig::new(dir.path(), script)
            .with_daemon(&daemon, "vufs")
            .request_queues(queues),
    );
    out.assert_ok(&["parallel-listing"]);
    for i in 1..=8 {
        let host = sha256(&share.join(format!("p{i}")));
        assert_eq!(
            guest_value(&out.guest_output, &format!("SUM{i}")),
            Some(host.as_str()),
            "file p{i} differs between guest and host\n{}",
            out.report()
        );
    }
    let status = daemon.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", daemon.report());
}

#[test]
fn one_request_queue() {
    parallel_io(1);
}

#[test]
fn four_request_queues() {
    parallel_io(4);
}

#[test]
fn without_xattr_the_guest_gets_not_supported() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("vm_fs_noxattr");
    let share = dir.mkdir("share");
    std::fs::write(share.join("f"), "x").unwrap();
    let mut daemon = DaemonSpec::fs(
        DaemonKind::from_env().program(),
        &dir.path().join("vfs.sock"),
        &share,
    )
    .spawn(dir.path());
    let script = r#"
check_fails setfattr-refused hostrun setfattr -n user.a -v 1 /mnt/f
expect_eq refused-with "$(hostrun setfattr -n user.a -v 1 /mnt/f 2>&1 | grep -c 'Operation not supported')" 1
"#;
    let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "vufs"));
    out.assert_ok(&["setfattr-refused", "refused-with"]);
    assert!(
        daemon.wait_exit(EXIT_TIMEOUT).success(),
        "{}",
        daemon.report()
    );
}
