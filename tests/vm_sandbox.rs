//! The sandbox, checked from the host while a real guest uses the share: the daemon's
//! namespaces, root, capabilities, seccomp mode and limits as /proc shows them, and the guest's
//! file operations (the ones that go through /proc/self/fd inside the daemon in particular)
//! still working under `--seccomp kill`. Plus the supervisor of `--sandbox=namespace` and the
//! refusals, which need no guest.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{require_vm, run_vm, vufsd_bin, Daemon, DaemonSpec, TestDir, VmConfig};

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const NOBODY: u32 = 65534;

/// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD, SETFCAP. Not DAC_READ_SEARCH:
/// that is kept only with `--inode-file-handles=prefer|mandatory` (docs/security.md).
const PASSTHROUGH_CAPS: u64 = 0x8800_00db;
const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_MKNOD: u64 = 1 << 27;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// A process as the host's /proc shows it.
struct Proc {
    pid: u32,
}

impl Proc {
    fn path(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{rel}", self.pid))
    }

    fn status(&self, key: &str) -> String {
        let text = std::fs::read_to_string(self.path("status")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {key} in /proc/{}/status", self.pid))
            .trim()
            .to_string()
    }

    fn caps(&self, set: &str) -> u64 {
        u64::from_str_radix(&self.status(set), 16).unwrap()
    }

    fn ns(&self, kind: &str) -> PathBuf {
        std::fs::read_link(self.path(&format!("ns/{kind}"))).unwrap()
    }

    /// Soft and hard "Max open files".
    fn nofile(&self) -> (String, String) {
        let text = std::fs::read_to_string(self.path("limits")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_string();
        let words: Vec<&str> = line.split_whitespace().collect();
        (words[3].to_string(), words[4].to_string())
    }

    /// (st_dev, st_ino) of `rel` inside the process's root, following /proc/PID/root.
    fn id_in_root(&self, rel: &str) -> (u64, u64) {
        id(&self.path(&format!("root/{rel}")))
    }
}

fn id(p: &Path) -> (u64, u64) {
    let md = std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (md.dev(), md.ino())
}

fn me() -> Proc {
    Proc {
        pid: std::process::id(),
    }
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Wait until the daemon logged `listening on`: by then its sandbox, capabilities and seccomp
/// filter are all in place.
fn wait_listening(daemon: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.output().contains("listening on") {
        assert!(
            daemon.try_wait().is_none() && Instant::now() < deadline,
            "daemon not listening\n{}",
            daemon.report()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process that serves the guest: with `--sandbox=namespace` the supervisor's one child,
/// otherwise the daemon itself (which then has no child).
fn server(daemon: &mut Daemon, namespace: bool) -> Proc {
    wait_listening(daemon);
    let children = children_of(daemon.pid());
    if namespace {
        assert_eq!(children.len(), 1, "one sandboxed child: {children:?}");
        Proc { pid: children[0] }
    } else {
        assert!(children.is_empty(), "no child expected: {children:?}");
        Proc { pid: daemon.pid() }
    }
}

/// Seccomp filter in force, no way to gain privileges.
fn assert_seccomp(p: &Proc) {
    assert_eq!(p.status("Seccomp"), "2", "seccomp mode of pid {}", p.pid);
    // The allowlist, and before it the filter refusing open_by_handle_at to a daemon without
    // CAP_DAC_READ_SEARCH.
    let want = if p.caps("CapEff") & CAP_DAC_READ_SEARCH != 0 {
        "1"
    } else {
        "2"
    };
    assert_eq!(p.status("Seccomp_filters"), want);
    assert_eq!(p.status("NoNewPrivs"), "1");
}

/// Effective and permitted sets are `want`, inheritable and ambient empty; the bounding set is
/// `want` too when the daemon had the privilege to shrink it.
fn assert_caps(p: &Proc, want: u64, bounding_too: bool) {
    let mut sets = vec!["CapEff", "CapPrm"];
    if bounding_too {
        sets.push("CapBnd");
    }
    for set in sets {
        let have = p.caps(set);
        assert_eq!(have, want, "{set} of pid {}: {have:#x}", p.pid);
    }
    assert_eq!(p.caps("CapInh"), 0);
    assert_eq!(p.caps("CapAmb"), 0);
}

/// Files on the host: a file with an xattr, a symlink out of the share, a canary beside it.
struct Share {
    dir: TestDir,
    share: PathBuf,
    canary: PathBuf,
}

impl Share {
    fn new(name: &str, owner: Option<u32>) -> Share {
        let dir = TestDir::new(name);
        let share = dir.mkdir("share");
        let canary = dir.mkdir("outside").join("canary");
        std::fs::write(&canary, "CANARY-CONTENT").unwrap();
        std::fs::write(share.join("hello.txt"), "hello\n").unwrap();
        std::fs::write(share.join("root-owned.txt"), "root\n").unwrap();
        std::os::unix::fs::symlink(&canary, share.join("escape")).unwrap();
        std::os::unix::fs::symlink("../outside/canary", share.join("escape-rel")).unwrap();
        if let Some(uid) = owner {
            dir.chown(uid, uid);
            for f in ["", "hello.txt"] {
                std::os::unix::fs::chown(share.join(f), Some(uid), Some(uid)).unwrap();
            }
        }
        Share { dir, share, canary }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.share.join(rel)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("vfs.sock")
    }
}

/// What the guest does in every mode. Operations marked root-daemon need a daemon started as
/// root (other owners, device nodes, creating files as another user).
fn guest_script(share: &Share, root_daemon: bool) -> String {
    let mut s = format!(
        "CANARY={}\nROOT_DAEMON={}\n",
        share.canary.display(),
        u8::from(root_daemon)
    );
    s.push_str(
        r#"
cd /mnt
expect_eq read "$(cat hello.txt)" hello
check write sh -c 'echo data > new.txt'
check mkdir mkdir -p d/e
check rename mv new.txt d/e/moved.txt
check symlink ln -s d/e/moved.txt sym
expect_eq via-symlink "$(cat sym)" data
check hardlink ln d/e/moved.txt hard
expect_eq nlink "$(stat -c %h hard)" 2
check chmod chmod 600 hard
check truncate truncate -s 2 hard
check utimes touch -m -d '2001-02-03 04:05:06' hard
check fsync hostrun python3 -c 'import os; fd=os.open("/mnt/hello.txt", os.O_RDWR); os.fsync(fd); os.fdatasync(fd)'
check fallocate hostrun fallocate -l 65536 /mnt/falloc
check copy-file-range hostrun python3 -c 'import os; a=os.open("/mnt/hello.txt", os.O_RDONLY); b=os.open("/mnt/copy", os.O_WRONLY|os.O_CREAT, 0o644); os.copy_file_range(a, b, 6)'
expect_eq copied "$(cat copy)" hello
expect_eq seek-hole "$(hostrun python3 -c 'import os; fd=os.open("/mnt/hello.txt", os.O_RDONLY); print(os.lseek(fd, 0, os.SEEK_HOLE))')" 6
check fifo mkfifo fifo
check setfattr hostrun setfattr -n user.color -v blue /mnt/hello.txt
expect_eq getfattr "$(hostrun getfattr --only-values -n user.color /mnt/hello.txt)" blue
expect_eq listxattr "$(hostrun getfattr -d -m '^user\.' /mnt/hello.txt | grep -c user.color)" 1
check removexattr hostrun setfattr -x user.color /mnt/hello.txt
check_fails removed hostrun getfattr -n user.color /mnt/hello.txt
expect_eq readdir "$(ls /mnt | sort | tr '\n' ' ')" "copy d escape escape-rel falloc fifo hard hello.txt root-owned.txt sym "
check readdirplus sh -c 'ls -l /mnt > /dev/null'
check statfs sh -c 'df /mnt | grep -q /mnt'
expect_eq escape-readlink "$(readlink escape)" "$CANARY"
check_fails escape-read cat escape
check_fails escape-rel-read cat escape-rel
if [ "$ROOT_DAEMON" = 1 ]; then
  check chown chown 1234:5678 hard
  check mknod mknod /mnt/null c 1 3
  check public-dir sh -c 'mkdir /mnt/pub && chmod 1777 /mnt/pub'
  check as-user hostrun setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo u > /mnt/pub/by-user'
fi
echo "OWNER-ROOT-FILE $(stat -c %u root-owned.txt)"
echo "OWNER-OWN-FILE $(stat -c %u hello.txt)"
cd /
"#,
    );
    s
}

const GUEST_OKS: &[&str] = &[
    "read",
    "write",
    "mkdir",
    "rename",
    "symlink",
    "via-symlink",
    "hardlink",
    "nlink",
    "chmod",
    "truncate",
    "utimes",
    "fsync",
    "fallocate",
    "copy-file-range",
    "copied",
    "seek-hole",
    "fifo",
    "setfattr",
    "getfattr",
    "listxattr",
    "removexattr",
    "removed",
    "readdir",
    "readdirplus",
    "statfs",
    "escape-readlink",
    "escape-read",
    "escape-rel-read",
];

const ROOT_OKS: &[&str] = &["chown", "mknod", "public-dir", "as-user"];

fn guest_value<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in the guest output:\n{output}"))
}

/// Run the guest script against `daemon` and check the host side of what it did.
fn guest_works(share: &Share, daemon: &Daemon, root_daemon: bool) -> String {
    let out = run_vm(
        &VmConfig::new(share.dir.path(), guest_script(share, root_daemon))
            .with_daemon(daemon, "sbx")
            .timeout(Duration::from_secs(120)),
    );
    let mut oks = GUEST_OKS.to_vec();
    if root_daemon {
        oks.extend_from_slice(ROOT_OKS);
    }
    out.assert_ok(&oks);
    assert!(
        !out.guest_output.contains("CANARY-CONTENT"),
        "{}",
        out.report()
    );
    let hard = std::fs::metadata(share.path("hard")).unwrap();
    assert_eq!(
        hard.ino(),
        std::fs::metadata(share.path("d/e/moved.txt"))
            .unwrap()
            .ino()
    );
    assert_eq!(hard.permissions().mode() & 0o7777, 0o600);
    assert_eq!(hard.len(), 2);
    assert_eq!(hard.mtime(), 981_173_106, "2001-02-03 04:05:06 UTC");
    assert_eq!(
        std::fs::read_to_string(share.path("copy")).unwrap(),
        "hello\n"
    );
    assert!(std::fs::metadata(share.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    if root_daemon {
        assert_eq!((hard.uid(), hard.gid()), (1234, 5678));
        assert!(std::fs::metadata(share.path("null"))
            .unwrap()
            .file_type()
            .is_char_device());
        let by_user = std::fs::metadata(share.path("pub/by-user")).unwrap();
        assert_eq!(
            (by_user.uid(), by_user.gid()),
            (1000, 1000),
            "created as the guest caller"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&share.canary).unwrap(),
        "CANARY-CONTENT"
    );
    out.guest_output
}

fn finish(mut daemon: Daemon) -> String {
    let status = daemon.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", daemon.report());
    daemon.output()
}

/// Root, `--sandbox=namespace`: a child in its own mount, pid and net namespaces, rooted at the
/// share with nothing else mounted, no network, the passthrough capabilities only.
#[test]
fn namespace_as_root() {
    let Some(()) = require_vm() else { return };
    let share = Share::new("sandbox_ns_root", None);
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &share.socket(), &share.share)
        .args(["--sandbox", "namespace", "--xattr"])
        .spawn(share.dir.path());
    let child = server(&mut daemon, true);
    let supervisor = Proc { pid: daemon.pid() };

    for kind in ["mnt", "pid", "net"] {
        assert_ne!(child.ns(kind), me().ns(kind), "{kind} namespace");
    }
    assert_eq!(
        child.ns("user"),
        me().ns("user"),
        "root needs no user namespace"
    );
    assert_eq!(
        child.status("NSpid").split_whitespace().last(),
        Some("1"),
        "pid 1 of its namespace"
    );
    assert_eq!(
        child.id_in_root(""),
        id(&share.share),
        "its root is the share"
    );
    assert_eq!(
        child.id_in_root(".."),
        id(&share.share),
        "and has no parent"
    );
    let mounts = std::fs::read_to_string(child.path("mountinfo")).unwrap();
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert_eq!(points, ["/"], "only the share is mounted:\n{mounts}");
    // Device nodes in the share cannot be opened by the daemon (only by the guest, its own).
    assert!(
        mounts.lines().all(|l| l
            .split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|f| f == "nodev"))),
        "the share's mounts are nodev:\n{mounts}"
    );
    let net = std::fs::read_to_string(child.path("net/dev")).unwrap();
    let ifaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "no network:\n{net}");
    assert_caps(&child, PASSTHROUGH_CAPS, true);
    assert_seccomp(&child);
    assert_eq!(supervisor.caps("CapEff"), 0, "the supervisor keeps nothing");
    assert_eq!(supervisor.caps("CapPrm"), 0);
    // The default open file limit: raised, or at least never lowered.
    let (soft, _) = child.nofile();
    let (my_soft, my_hard) = me().nofile();
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let target = 1_000_000u64.min(nr_open);
    let floor = target
        .min(my_hard.parse().unwrap_or(u64::MAX))
        .max(my_soft.parse().unwrap_or(0));
    assert!(
        soft.parse::<u64>().unwrap() >= floor,
        "open files {soft}, want >= {floor}"
    );

    guest_works(&share, &daemon, true);
    let log = finish(daemon);
    assert!(
        log.contains("sandbox: namespace (mount, pid, net)"),
        "{log}"
    );
}

/// Root, `--sandbox=chroot`: the same process, in the host's namespaces, rooted at the share.
/// (With a thread pool, so that its threads run under the seccomp filter too.)
#[test]
fn chroot_as_root() {
    let Some(()) = require_vm() else { return };
    let share = Share::new("sandbox_chroot", None);
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &share.socket(), &share.share)
        .args(["--sandbox", "chroot", "--xattr", "--thread-pool-size=4"])
        .spawn(share.dir.path());
    let p = server(&mut daemon, false);
    for kind in ["mnt", "pid", "net", "user"] {
        assert_eq!(p.ns(kind), me().ns(kind), "{kind} namespace");
    }
    // (Only the daemon's own lookups stop at its root: ours through /proc/PID/root do not, so
    // unlike with a namespace there is no "no parent" to see from here.)
    assert_eq!(p.id_in_root(""), id(&share.share), "its root is the share");
    assert_caps(&p, PASSTHROUGH_CAPS, true);
    assert_seccomp(&p);
    guest_works(&share, &daemon, true);
    let log = finish(daemon);
    assert!(log.contains("sandbox: chroot"), "{log}");
}

/// An unprivileged user, `--sandbox=none`: no isolation but seccomp, real owners visible.
#[test]
fn none_as_unprivileged_user() {
    let Some(()) = require_vm() else { return };
    let share = Share::new("sandbox_none", Some(NOBODY));
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &share.socket(), &share.share)
        .arg("--xattr")
        .run_as(NOBODY, NOBODY)
        .spawn(share.dir.path());
    let p = server(&mut daemon, false);
    for kind in ["mnt", "pid", "net", "user"] {
        assert_eq!(p.ns(kind), me().ns(kind), "{kind} namespace");
    }
    assert_eq!(p.id_in_root(""), id(Path::new("/")), "the host's root");
    assert_eq!(p.status("Uid").split_whitespace().next(), Some("65534"));
    // An unprivileged process may not shrink its bounding set; with no_new_privs and no
    // execve allowed it cannot gain anything through it either.
    assert_caps(&p, 0, false);
    assert_seccomp(&p);
    let out = guest_works(&share, &daemon, false);
    assert_eq!(guest_value(&out, "OWNER-ROOT-FILE"), "0", "real owners");
    assert_eq!(guest_value(&out, "OWNER-OWN-FILE"), "65534");
    let new = std::fs::metadata(share.path("d/e/moved.txt")).unwrap();
    assert_eq!(new.uid(), NOBODY);
    finish(daemon);
}

/// An unprivileged user without `--sandbox`: the default is `namespace`, with a user namespace
/// that maps only the user's own ids; other owners show up as 65534.
#[test]
fn namespace_is_the_default_for_an_unprivileged_user() {
    const USER: u32 = 4242;
    let Some(()) = require_vm() else { return };
    let share = Share::new("sandbox_ns_user", Some(USER));
    let sock = share.socket();
    let mut daemon = DaemonSpec::new(vufsd_bin(), &sock)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&share.share)
        .arg("--xattr")
        .run_as(USER, USER)
        .spawn(share.dir.path());
    let child = server(&mut daemon, true);
    for kind in ["user", "mnt", "pid", "net"] {
        assert_ne!(child.ns(kind), me().ns(kind), "{kind} namespace");
    }
    let uid_map = std::fs::read_to_string(child.path("uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["4242", "4242", "1"]
    );
    assert_eq!(
        child.id_in_root(""),
        id(&share.share),
        "its root is the share"
    );
    // In its own user namespace it held every capability, CAP_SETPCAP included, so the
    // bounding set is emptied too.
    assert_caps(&child, 0, true);
    assert_seccomp(&child);
    let out = guest_works(&share, &daemon, false);
    assert_eq!(
        guest_value(&out, "OWNER-ROOT-FILE"),
        "65534",
        "unmapped owner"
    );
    assert_eq!(guest_value(&out, "OWNER-OWN-FILE"), "4242");
    assert_eq!(
        std::fs::metadata(share.path("d/e/moved.txt"))
            .unwrap()
            .uid(),
        USER
    );
    let log = finish(daemon);
    assert!(
        log.contains("sandbox: namespace (mount, pid, net, user)"),
        "{log}"
    );
}

// --- no guest needed ----------------------------------------------------------------------------

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie counts as gone: it runs nothing.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// SIGTERM to the supervisor reaches the sandboxed daemon, which removes its socket file (from
/// inside its new root) and exits 0; the supervisor exits as it did.
#[test]
fn the_supervisor_forwards_sigterm_and_exits_as_the_daemon_did() {
    let share = Share::new("sandbox_sigterm", None);
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &share.socket(), &share.share)
        .args(["--sandbox", "namespace"])
        .spawn(share.dir.path());
    let child = server(&mut daemon, true);
    // SAFETY: kill(2) on the daemon we started.
    unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGTERM) };
    let status = daemon.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", daemon.report());
    assert!(
        wait_gone(child.pid, EXIT_TIMEOUT),
        "the sandboxed daemon exited"
    );
    let log = daemon.output();
    assert!(log.contains("received signal 15"), "{log}");
    assert!(!share.socket().exists(), "socket file removed\n{log}");
}

/// The sandboxed daemon does not outlive its supervisor.
#[test]
fn killing_the_supervisor_kills_the_daemon() {
    let share = Share::new("sandbox_sigkill", None);
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &share.socket(), &share.share)
        .args(["--sandbox", "namespace"])
        .spawn(share.dir.path());
    let child = server(&mut daemon, true);
    daemon.kill();
    assert!(
        wait_gone(child.pid, EXIT_TIMEOUT),
        "pid {} still runs",
        child.pid
    );
}

/// `--modcaps` and `--rlimit-nofile` as the host sees them.
#[test]
fn modcaps_and_rlimit_nofile() {
    let share = Share::new("sandbox_modcaps", None);
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &share.socket(), &share.share)
        .args([
            "--sandbox",
            "chroot",
            "--modcaps=-mknod:+SYS_ADMIN",
            "--rlimit-nofile=4096",
        ])
        .spawn(share.dir.path());
    let p = server(&mut daemon, false);
    assert_caps(&p, (PASSTHROUGH_CAPS & !CAP_MKNOD) | CAP_SYS_ADMIN, true);
    assert_eq!(p.nofile(), ("4096".to_string(), "4096".to_string()));
    daemon.terminate(EXIT_TIMEOUT);
}

/// `--seccomp=none` installs no filter; `log` and `trap` install one.
#[test]
fn seccomp_modes() {
    for (mode, want) in [("none", "0"), ("log", "2"), ("trap", "2")] {
        let share = Share::new(&format!("sandbox_seccomp_{mode}"), None);
        let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &share.socket(), &share.share)
            .args(["--seccomp", mode])
            .spawn(share.dir.path());
        let p = server(&mut daemon, false);
        assert_eq!(p.status("Seccomp"), want, "--seccomp={mode}");
        assert!(
            daemon.terminate(EXIT_TIMEOUT).success(),
            "{}",
            daemon.report()
        );
    }
}

#[path = "vm_sandbox/refusals.rs"]
mod refusals;
