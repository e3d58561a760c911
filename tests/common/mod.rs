//! Test harness shared by vufsd's integration tests: boot a throwaway QEMU
//! guest against a vhost-user-fs daemon and check what the guest saw.
//!
//! A typical VM test:
//! ```ignore
//! let Some(()) = common::require_vm() else { return };
//! let dir = common::TestDir::new("my_test");
//! let share = dir.mkdir("share");
//! let sock = dir.path().join("vfs.sock");
//! let mut daemon = DaemonSpec::fs(DaemonKind::from_env().program(), &sock, &share)
//!     .spawn(dir.path());
//! let out = run_vm(&VmConfig::new(dir.path(), "check write sh -c 'echo hi > /mnt/f'")
//!     .with_fs(&sock, "myfs"));
//! out.assert_ok(&["write"]);
//! daemon.wait_exit(Duration::from_secs(10));
//! ```
//!
//! Full guide: tests/vm/README.md. Guest conventions (tests/vm/*.sh):
//! - the script runs as root in a busybox initramfs, output on a serial port
//!   of its own (`VmOutcome::guest_output`), kernel log in `VmOutcome::console`;
//! - the share is at `/mnt`; the host's root is at `/host`, and
//!   `hostrun CMD...` (= `chroot /host ...`) runs host tools, which see the
//!   share at `/mnt` too;
//! - results are lines `OK <name>` / `FAIL <name> <detail>`, and the init
//!   ends with `DONE rc=<script status>`: `VmOutcome::assert_ok` checks them.
//!
//! Environment knobs: `VUFSD_TEST_DAEMON` (vufsd|virtiofsd),
//! `VUFSD_VM_TESTS=skip` (skip, loudly, when a prerequisite is missing),
//! `VUFSD_VM_ACCEL` (kvm|tcg), `VUFSD_VM_PARALLEL` (VMs at once),
//! `VUFSD_VM_KERNEL` (a /boot/vmlinuz-* to boot), `VIRTIOFSD` (its path).

// Each test binary uses a different subset of the harness.
#![allow(dead_code, unused_imports)]

pub mod accel;
pub mod assets;
pub mod cpio;
pub mod daemon;
pub mod host_action;
pub mod migrate;
pub mod nix;
pub mod slot;
pub mod vm;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use daemon::{find_virtiofsd, Daemon, DaemonKind, DaemonSpec};
pub use host_action::HostAction;
pub use vm::{run_vm, try_run_vm, Launch, VmConfig, VmOutcome};

/// Errors in the harness are strings with their context prepended: they end
/// up in a panic message read by a person, never matched on.
pub type Result<T> = std::result::Result<T, String>;

/// `.context("reading x")` / `.with_context(|| ...)` for any displayable error.
pub trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// `program` run as (uid, gid) with no supplementary groups, through setpriv (util-linux).
pub fn setpriv(uid: u32, gid: u32, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--"])
        .arg(program);
    c
}

/// The vufsd binary cargo built for this test run.
pub fn vufsd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vufsd"))
}

/// Cargo's target directory (`CARGO_TARGET_TMPDIR` is `<target>/tmp`).
pub fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = lines[start..].join("\n");
    if start > 0 {
        out.insert_str(0, &format!("[... {start} earlier lines]\n"));
    }
    out
}

/// Gate for a missing prerequisite. By default a missing prerequisite fails
/// the test with `why`, since a silently skipped test hides breakage; with
/// `VUFSD_VM_TESTS=skip` it prints a loud SKIPPED banner and returns None.
pub fn require<T>(what: &str, found: Result<T>) -> Option<T> {
    let why = match found {
        Ok(v) => return Some(v),
        Err(why) => why,
    };
    if std::env::var("VUFSD_VM_TESTS").as_deref() == Ok("skip") {
        eprintln!(
            "\n!!!!!!!! SKIPPED: {what} is unavailable (VUFSD_VM_TESTS=skip)\n\
             !!!!!!!! {why}\n"
        );
        return None;
    }
    panic!(
        "{what} is unavailable: {why}\n\
         Install it (see tests/vm/README.md), or set VUFSD_VM_TESTS=skip \
         to skip VM tests explicitly."
    );
}

/// Everything a VM test needs on the host: QEMU, a kernel, busybox-static,
/// and the built guest assets. Use as `let Some(()) = require_vm() else { return };`.
pub fn require_vm() -> Option<()> {
    require(
        "the test VM (apt packages qemu-system-x86 linux-image-amd64 busybox-static kmod xz-utils)",
        vm::preflight(),
    )
}

/// A per-test scratch directory under /tmp (short paths: unix socket paths
/// are limited to 108 bytes). Removed on drop unless the test is panicking,
/// so a failure leaves its logs behind; the path is printed then.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vufsd-{name}-{}-{n}", std::process::id()));
        // A leftover from a crashed run with a recycled pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating test dir {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create (and return) a subdirectory.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// Let an unprivileged daemon (`DaemonSpec::run_as`) create its socket
    /// and files here.
    pub fn chown(&self, uid: u32, gid: u32) {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", self.path.display()));
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Opcodes a vufsd log says were answered ENOSYS, other than the xattr opcodes (21-24), which
/// a guest probes when vufsd runs without --xattr (answering ENOSYS is how that is switched
/// off). A VM test that finds any is using a FUSE feature vufsd does not serve.
pub fn unexpected_enosys(log: &str) -> Vec<u32> {
    let Some(line) = log
        .lines()
        .find(|l| l.contains("FUSE opcodes answered ENOSYS"))
    else {
        return Vec::new();
    };
    // "... (opcode x count): [(22, 1), (48, 3)]"
    line.split('(')
        .skip(2)
        .filter_map(|p| p.split(',').next()?.trim().parse().ok())
        .filter(|op| !(21..=24).contains(op))
        .collect()
}
