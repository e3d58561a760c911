//! O_NOATIME with an unprivileged daemon over a root-owned tree: the feature vufsd exists for.
//!
//! The tree has the /nix/store shape (root-owned, 0444/0555 files, 0755 directories) plus a
//! directory owned by the daemon's user. The guest is root, so its own kernel always allows
//! O_NOATIME; what differs is whether the *host* open succeeds.

mod common;

use std::fs::{self, FileTimes};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{require_vm, run_vm, vufsd_bin, Daemon, DaemonSpec, TestDir, VmConfig, VmOutcome};

const NOBODY: u32 = 65534;
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// 2000-01-01 and 2000-01-02: atime before mtime, so relatime would update atime on a read.
const OLD_ATIME: u64 = 946_684_800;
const OLD_MTIME: u64 = OLD_ATIME + 86_400;

/// Read a file with open(O_RDONLY|O_NOATIME); prints the byte count or exits with the errno.
const NOATIME_READ: &str = "import os,sys\ntry:\n fd=os.open(sys.argv[1],os.O_RDONLY|os.O_NOATIME)\nexcept OSError as e:\n print(\"errno\",e.errno); sys.exit(1)\nprint(len(os.read(fd,1<<16)))";

struct Tree {
    share: PathBuf,
}

impl Tree {
    /// share/store: root-owned, read-only; share/mine: owned by the daemon's user.
    fn build(dir: &TestDir) -> Tree {
        // The socket is created by the unprivileged daemon in the test directory.
        dir.chown(NOBODY, NOBODY);
        let share = dir.mkdir("share");
        let store = share.join("store");
        fs::create_dir_all(store.join("pkg/bin")).unwrap();
        fs::create_dir_all(store.join("pkg/share")).unwrap();
        for (name, body) in [
            ("a.txt", "alpha\n"),
            ("b.txt", "bravo\n"),
            ("c.txt", "charlie\n"),
        ] {
            fs::write(store.join("pkg/share").join(name), body).unwrap();
        }
        fs::write(
            store.join("pkg/bin/hello"),
            "#!/bin/sh\necho hello-from-the-lower-tree\n",
        )
        .unwrap();
        fs::copy("/bin/busybox", store.join("pkg/bin/busybox")).unwrap();
        set_modes(&store);
        let mine = share.join("mine");
        fs::create_dir(&mine).unwrap();
        for name in ["quiet", "loud", "flip", "stripped"] {
            let p = mine.join(name);
            fs::write(&p, "owned by the daemon's user\n").unwrap();
            chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
            set_old_times(&p);
        }
        chown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
        Tree { share }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.share.join(rel)
    }

    fn atime(&self, rel: &str) -> i64 {
        fs::metadata(self.path(rel)).unwrap().atime()
    }
}

/// 0555 directories and executables, 0444 files, all root's: the /nix/store shape.
fn set_modes(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            set_modes(&p);
            fs::set_permissions(&p, fs::Permissions::from_mode(0o555)).unwrap();
        } else {
            let exec = p.parent().is_some_and(|d| d.ends_with("bin"));
            fs::set_permissions(
                &p,
                fs::Permissions::from_mode(if exec { 0o555 } else { 0o444 }),
            )
            .unwrap();
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

fn set_old_times(p: &Path) {
    let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_times(
        FileTimes::new()
            .set_accessed(t(OLD_ATIME))
            .set_modified(t(OLD_MTIME)),
    )
    .unwrap();
}

fn unprivileged_daemon(dir: &TestDir, tree: &Tree, args: &[&str]) -> Daemon {
    DaemonSpec::fs(Ok(vufsd_bin()), &dir.path().join("vfs.sock"), &tree.share)
        .args(args)
        .run_as(NOBODY, NOBODY)
        .spawn(dir.path())
}

/// The guest script, with the O_NOATIME reader available as `$NOATIME_READ`.
fn script(body: &str) -> String {
    format!("NOATIME_READ='{NOATIME_READ}'\nnoatime_read() {{ hostrun python3 -c \"$NOATIME_READ\" \"$1\"; }}\n{body}")
}

fn finish(mut daemon: Daemon, out: &VmOutcome) -> String {
    let status = daemon.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "{status}\n{}\n{}",
        daemon.report(),
        out.report()
    );
    daemon.output()
}

/// The daemon's exit summary: (honoured, masked, retried).
fn counters(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("O_NOATIME opens:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{log}"));
    let num = |word: &str| -> u64 {
        let before = line.split(word).next().unwrap_or_default();
        before
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count for {word} in: {line}"))
    };
    (num(" honoured"), num(" masked"), num(" retried"))
}

/// `auto` as an unprivileged daemon: masked on root's files, honoured (atime untouched) on its
/// own, retried once when the host owner changed behind the daemon's back; exact counters.
#[test]
fn auto_masks_what_would_fail_and_honours_what_the_host_allows() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("noatime_auto");
    let tree = Tree::build(&dir);
    // --cache=always: the guest looks each name up once, so the daemon's idea of `flip`'s owner
    // goes stale when the host changes it below.
    let daemon = unprivileged_daemon(&dir, &tree, &["--cache=always"]);

    let flipper = {
        let ready = tree.path("mine/flip-ready");
        let done = tree.path("mine/flip-done");
        let flip = tree.path("mine/flip");
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !ready.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            chown(&flip, Some(0), Some(0)).unwrap();
            fs::write(&done, "").unwrap();
        })
    };
    let out = run_vm(&VmConfig::new(
        dir.path(),
        script(
            r#"
for f in a b c; do
  expect_eq noatime-root-owned-$f "$(noatime_read /mnt/store/pkg/share/$f.txt)" "$(wc -c < /mnt/store/pkg/share/$f.txt)"
done
expect_eq noatime-own-file "$(noatime_read /mnt/mine/quiet)" 27
expect_eq plain-read "$(cat /mnt/mine/loud)" "owned by the daemon's user"
# flip: looked up while owned by the daemon's user, then chowned to root on the host
check flip-lookup stat /mnt/mine/flip
touch /mnt/mine/flip-ready
i=0; while [ ! -e /mnt/mine/flip-done ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
expect_eq noatime-after-host-chown "$(noatime_read /mnt/mine/flip)" 27
# unprivileged: reads, execs, readdirs work; writes get the host's errno
expect_eq readdir "$(ls /mnt/store/pkg/share | tr '\n' ' ')" "a.txt b.txt c.txt "
expect_eq exec-script "$(/mnt/store/pkg/bin/hello)" hello-from-the-lower-tree
expect_eq exec-binary "$(/mnt/store/pkg/bin/busybox echo static)" static
expect_eq write-refused "$(sh -c 'echo x >> /mnt/store/pkg/share/a.txt' 2>&1 | grep -c 'Permission denied')" 1
expect_eq create-refused "$(touch /mnt/store/new 2>&1 | grep -c 'Permission denied')" 1
check write-own-dir sh -c 'echo mine > /mnt/mine/new'
"#,
        ),
    )
    .with_daemon(&daemon, "store"));
    flipper.join().unwrap();
    out.assert_ok(&[
        "noatime-root-owned-a",
        "noatime-root-owned-b",
        "noatime-root-owned-c",
        "noatime-own-file",
        "plain-read",
        "flip-lookup",
        "noatime-after-host-chown",
        "readdir",
        "exec-script",
        "exec-binary",
        "write-refused",
        "create-refused",
        "write-own-dir",
    ]);
    let log = finish(daemon, &out);
    assert_eq!(
        counters(&log),
        (1, 3, 1),
        "honoured, masked, retried\n{log}"
    );
    assert_eq!(
        tree.atime("mine/quiet") as u64,
        OLD_ATIME,
        "O_NOATIME read must not touch atime"
    );
    assert!(
        tree.atime("mine/loud") as u64 > OLD_MTIME,
        "a plain read updates atime (relatime)"
    );
    assert_eq!(
        fs::read_to_string(tree.path("store/pkg/share/a.txt")).unwrap(),
        "alpha\n"
    );
}

/// The seed scenario: the guest puts an overlay (upper/work on tmpfs) on the root-owned tree,
/// as a NixOS VM test does with its writable store, and uses it like a local disk.
#[test]
fn guest_overlay_on_a_root_owned_tree() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("noatime_overlay");
    let tree = Tree::build(&dir);
    let daemon = unprivileged_daemon(&dir, &tree, &[]);
    let out = run_vm(&VmConfig::new(
        dir.path(),
        script(
            r#"
mkdir -p /ovl /merged && mount -t tmpfs tmpfs /ovl && mkdir /ovl/upper /ovl/work
check overlay-mount mount -t overlay overlay -o lowerdir=/mnt/store,upperdir=/ovl/upper,workdir=/ovl/work /merged
expect_eq cat-through-overlay "$(cat /merged/pkg/share/a.txt /merged/pkg/share/b.txt | tr '\n' ' ')" "alpha bravo "
expect_eq exec-through-overlay "$(/merged/pkg/bin/hello)" hello-from-the-lower-tree
expect_eq exec-binary-through-overlay "$(/merged/pkg/bin/busybox echo static)" static
expect_eq list-through-overlay "$(ls /merged/pkg | tr '\n' ' ')" "bin share "
check append-copy-up sh -c 'echo appended >> /merged/pkg/share/c.txt'
expect_eq copied-up "$(cat /merged/pkg/share/c.txt | tr '\n' ' ')" "charlie appended "
expect_eq lower-unchanged "$(cat /mnt/store/pkg/share/c.txt)" charlie
check new-file-in-overlay sh -c 'echo new > /merged/pkg/share/d.txt'
expect_eq list-after-writes "$(ls /merged/pkg/share | tr '\n' ' ')" "a.txt b.txt c.txt d.txt "
check no-eperm-in-kernel-log sh -c '! dmesg | grep -i "operation not permitted"'
umount /merged
"#,
        ),
    )
    .with_daemon(&daemon, "store"));
    out.assert_ok(&[
        "overlay-mount",
        "cat-through-overlay",
        "exec-through-overlay",
        "exec-binary-through-overlay",
        "list-through-overlay",
        "append-copy-up",
        "copied-up",
        "lower-unchanged",
        "new-file-in-overlay",
        "list-after-writes",
        "no-eperm-in-kernel-log",
    ]);
    let log = finish(daemon, &out);
    let (honoured, masked, retried) = counters(&log);
    eprintln!("overlay scenario O_NOATIME counters: {honoured} honoured, {masked} masked, {retried} retried");
    assert!(
        masked >= 3,
        "overlay opens its lower files with O_NOATIME: {log}"
    );
    assert_eq!(
        (honoured, retried),
        (0, 0),
        "every lower file is root's: {log}"
    );
    assert_eq!(
        fs::read_to_string(tree.path("store/pkg/share/c.txt")).unwrap(),
        "charlie\n"
    );
}

/// `preserve` passes the flag through: the same overlay read fails with EPERM, which is the
/// failure `auto` exists to prevent.
#[test]
fn preserve_shows_the_eperm_auto_prevents() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("noatime_preserve");
    let tree = Tree::build(&dir);
    let daemon = unprivileged_daemon(&dir, &tree, &["--noatime=preserve"]);
    let out = run_vm(&VmConfig::new(
        dir.path(),
        script(
            r#"
expect_eq noatime-root-owned-eperm "$(noatime_read /mnt/store/pkg/share/a.txt)" "errno 1"
expect_eq noatime-own-file "$(noatime_read /mnt/mine/quiet)" 27
mkdir -p /ovl /merged && mount -t tmpfs tmpfs /ovl && mkdir /ovl/upper /ovl/work
mount -t overlay overlay -o lowerdir=/mnt/store,upperdir=/ovl/upper,workdir=/ovl/work /merged
expect_eq overlay-read-eperm "$(cat /merged/pkg/share/a.txt 2>&1 | grep -c 'Operation not permitted')" 1
"#,
        ),
    )
    .with_daemon(&daemon, "store"));
    out.assert_ok(&[
        "noatime-root-owned-eperm",
        "noatime-own-file",
        "overlay-read-eperm",
    ]);
    finish(daemon, &out);
    assert_eq!(tree.atime("mine/quiet") as u64, OLD_ATIME);
}

/// `strip` (virtiofsd's behaviour) drops the flag everywhere: even the daemon's own file gets
/// its atime updated.
#[test]
fn strip_drops_the_flag_even_where_it_was_allowed() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("noatime_strip");
    let tree = Tree::build(&dir);
    let daemon = unprivileged_daemon(&dir, &tree, &["--noatime=strip"]);
    let out = run_vm(
        &VmConfig::new(
            dir.path(),
            script(
                r#"
expect_eq noatime-root-owned "$(noatime_read /mnt/store/pkg/share/a.txt)" 6
expect_eq noatime-own-file "$(noatime_read /mnt/mine/stripped)" 27
"#,
            ),
        )
        .with_daemon(&daemon, "store"),
    );
    out.assert_ok(&["noatime-root-owned", "noatime-own-file"]);
    let log = finish(daemon, &out);
    assert_eq!(counters(&log), (0, 2, 0), "{log}");
    assert!(
        tree.atime("mine/stripped") as u64 > OLD_MTIME,
        "strip must let atime change"
    );
}

/// Run as root, vufsd keeps honouring O_NOATIME everywhere (CAP_FOWNER covers every owner).
#[test]
fn root_daemon_honours_everywhere() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("noatime_root");
    let tree = Tree::build(&dir);
    let daemon = DaemonSpec::fs(Ok(vufsd_bin()), &dir.path().join("vfs.sock"), &tree.share)
        .spawn(dir.path());
    let out = run_vm(
        &VmConfig::new(
            dir.path(),
            script(
                r#"expect_eq noatime-root-owned "$(noatime_read /mnt/store/pkg/share/a.txt)" 6"#,
            ),
        )
        .with_daemon(&daemon, "store"),
    );
    out.assert_ok(&["noatime-root-owned"]);
    let log = finish(daemon, &out);
    assert_eq!(counters(&log), (1, 0, 0), "{log}");
}
