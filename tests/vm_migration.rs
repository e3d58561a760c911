//! Live migration, save and restore of a guest with a vufsd share (docs/migration.md).
//!
//! Each test boots a guest under QEMU 10 (tests/common/migrate.rs) whose `migcheck`
//! (tests/vm/migcheck.c) holds an open file with an offset, a half-read directory handle, its
//! cwd in the share, an O_NOATIME handle and 2,000 looked-up inodes; the VM then moves to a
//! second QEMU with its own daemon on the same directory (live, or through a file), and the
//! guest uses all of it again. Host-side changes between the two ends, an unprivileged daemon,
//! locks, a stream from upstream virtiofsd and Debian's QEMU 7.2 have tests of their own.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::migrate::{slot, Machine, MigVm, Qemu, VmLogs};
use common::{require, require_vm, vufsd_bin, Daemon, DaemonSpec, TestDir};
use serde_json::json;

const PER_DIR: usize = 100;
const NOBODY: u32 = 65534;
const BOOT: Duration = Duration::from_secs(120);

/// The tree migcheck expects under SHARE/work (see its header).
fn prepare(share: &Path, owner: Option<u32>) {
    let work = share.join("work");
    std::fs::create_dir_all(work.join("listdir")).unwrap();
    let data: Vec<u8> = (0..65536u64).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(work.join("data.bin"), data).unwrap();
    for i in 0..300 {
        std::fs::write(work.join(format!("listdir/e{i}")), b"").unwrap();
    }
    for d in 0..20 {
        let dir = work.join(format!("tree/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..PER_DIR {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    std::fs::write(work.join("ro.txt"), b"read-only\n").unwrap();
    std::fs::write(work.join("victim.txt"), b"original\n").unwrap();
    if let Some(uid) = owner {
        // The guest writes data.bin and creates after.txt; everything else stays root's (so
        // that an unprivileged daemon has to mask O_NOATIME on ro.txt).
        for p in [work.clone(), work.join("data.bin")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        }
        std::fs::set_permissions(share, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn qemu10() -> Option<Qemu> {
    require(
        "QEMU 10 (scripts/install-deps unpacks it into /opt/vufsd-qemu10)",
        Qemu::ten(),
    )
}

/// The guest: migcheck with `options` (see tests/vm/migcheck.c).
fn machine(qemu: Qemu, options: &str) -> Machine {
    Machine {
        qemu,
        tag: "share".into(),
        mem_mib: 256,
        script: format!("migcheck /mnt {PER_DIR} {options}; echo \"MIGCHECK rc=$?\"\n"),
    }
}

/// A test's directory, share, and the daemon spec for one end.
struct Setup {
    dir: TestDir,
    share: std::path::PathBuf,
}

impl Setup {
    fn new(name: &str, owner: Option<u32>) -> Setup {
        let dir = TestDir::new(name);
        let share = dir.mkdir("share");
        prepare(&share, owner);
        if let Some(uid) = owner {
            dir.chown(uid, uid);
        }
        Setup { dir, share }
    }

    fn daemon(&self, end: &str, extra: &[&str], owner: Option<u32>) -> Daemon {
        let sock = self.dir.path().join(format!("{end}.sock"));
        let mut spec = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &self.share).args(extra);
        if let Some(uid) = owner {
            spec = spec.run_as(uid, uid);
        }
        spec.spawn(self.dir.path())
    }

    fn go(&self) {
        std::fs::write(self.share.join(".go"), b"").unwrap();
    }

    fn host(&self, rel: &str) -> std::path::PathBuf {
        self.share.join("work").join(rel)
    }
}

/// The logs of a test's QEMUs and daemons, for failure messages and the guest's output.
struct Ctx {
    vms: Vec<VmLogs>,
    daemons: Vec<std::path::PathBuf>,
}

impl Ctx {
    fn new(vms: &[&MigVm], daemons: &[&Daemon]) -> Ctx {
        Ctx {
            vms: vms.iter().map(|v| v.logs()).collect(),
            daemons: daemons.iter().map(|d| d.log_path().to_path_buf()).collect(),
        }
    }

    /// The guest's output over every QEMU that ran it, in order.
    fn output(&self) -> String {
        self.vms.iter().map(|v| v.guest_output()).collect()
    }

    fn report(&self) -> String {
        let mut r: String = self.vms.iter().map(|v| v.report()).collect();
        for d in &self.daemons {
            let log = std::fs::read_to_string(d).unwrap_or_default();
            r.push_str(&format!(
                "--- daemon log {}:\n{}\n",
                d.display(),
                common::tail(&log, 30)
            ));
        }
        r
    }
}

/// Every check of migcheck passed and it saw every inode again (except `missing`).
fn assert_guest_carried_on(out: &str, missing: &str, victim: &str, ctx: &Ctx) {
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.is_empty(),
        "guest checks failed: {fails:?}\n{}",
        ctx.report()
    );
    for name in [
        "data-fd-read-at-offset",
        "data-fd-write",
        "data-fd-fstat",
        "dir-fd-continues",
        "cwd",
        "create-in-cwd",
        "noatime-fd",
    ] {
        assert!(
            out.contains(&format!("OK {name}\n")),
            "no OK {name}\n{}",
            ctx.report()
        );
    }
    let found = 20 * PER_DIR - missing.split(',').filter(|m| *m != "-").count();
    let walk = format!("WALK found={found} missing={missing}\n");
    assert!(out.contains(&walk), "expected `{walk}`\n{}", ctx.report());
    assert!(
        out.contains(&format!("VICTIM {victim}\n")),
        "expected VICTIM {victim}\n{}",
        ctx.report()
    );
    assert!(out.contains("MIGCHECK rc=0"), "{}", ctx.report());
    assert!(out.contains("DONE rc=0"), "{}", ctx.report());
}

/// What the guest wrote is on the host.
fn assert_host_data(s: &Setup) {
    let data = std::fs::read(s.host("data.bin")).unwrap();
    assert_eq!(data.len(), 65536);
    assert_eq!(
        &data[8192..8200],
        b"MIGRATED",
        "the write through the migrated fd"
    );
    assert!(data[..8192]
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i as u64 * 7 + 3) as u8));
    assert_eq!(
        std::fs::read_to_string(s.host("after.txt")).unwrap(),
        "written after the switch\n"
    );
}

/// The "took over" line of the destination's log, for the figures in docs/migration.md.
fn took_over_line(d: &Daemon) -> String {
    d.output()
        .lines()
        .find(|l| l.contains("took over the device state"))
        .unwrap_or("")
        .to_string()
}

/// Boot the source and wait until migcheck holds everything.
fn boot_source(s: &Setup, m: &Machine, src: &Daemon) -> MigVm {
    let mut vm = m.start(s.dir.path(), "src", src.socket(), false).unwrap();
    let ctx = Ctx::new(&[&vm], &[src]).report();
    vm.wait_for_line("READY", BOOT)
        .unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let looked = vm.wait_for_line("LOOKED-UP", BOOT).unwrap();
    assert_eq!(looked, format!("LOOKED-UP {}", 20 * PER_DIR));
    vm
}

/// Live migration from `src` to a destination on `dst`'s daemon; returns the destination.
fn migrate_live(s: &Setup, m: &Machine, src_vm: &mut MigVm, dst: &Daemon) -> (MigVm, String) {
    let mut dst_vm = m.start(s.dir.path(), "dst", dst.socket(), true).unwrap();
    let uri = format!("unix:{}", s.dir.path().join("mig.sock").display());
    for vm in [&mut *src_vm, &mut dst_vm] {
        vm.qmp(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "return-path", "state": true}]}),
        )
        .unwrap();
    }
    dst_vm
        .qmp("migrate-incoming", json!({ "uri": uri }))
        .unwrap();
    src_vm.qmp("migrate", json!({ "uri": uri })).unwrap();
    let (status, _) = src_vm.wait_migration(Duration::from_secs(120)).unwrap();
    (dst_vm, status)
}

#[test]
fn live_migration_keeps_open_files_dir_handles_cwd_and_inodes() {
    let Some(()) = require_vm() else { return };
    let Some(qemu) = qemu10() else { return };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_live", None);
    let m = machine(qemu, "");
    let src = s.daemon("src", &[], None);
    let dst = s.daemon("dst", &[], None);
    let mut src_vm = boot_source(&s, &m, &src);
    let (mut dst_vm, status) = migrate_live(&s, &m, &mut src_vm, &dst);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&src, &dst]);
    assert_eq!(status, "completed", "{}", ctx.report());
    assert_eq!(dst_vm.run_state().unwrap(), "running");
    src_vm.quit();
    s.go();
    dst_vm.wait_exit(BOOT).unwrap();
    let out = ctx.output();
    assert_guest_carried_on(&out, "-", "original", &ctx);
    assert_host_data(&s);
    eprintln!("destination: {}", took_over_line(&dst));
    assert!(
        took_over_line(&dst).contains("(0 lost)"),
        "{}",
        ctx.report()
    );
}

/// A file the guest holds open after unlinking it has no path: by file handle (same
/// filesystem, root daemons) it moves; by path it cannot, and the migration is refused.
#[test]
fn an_unlinked_open_file_moves_by_file_handle_and_refuses_by_path() {
    let Some(()) = require_vm() else { return };
    let Some(qemu) = qemu10() else { return };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_unlinked", None);
    let m = machine(qemu, "unlinked");

    let by_path = s.daemon("src-p", &[], None);
    let dst_p = s.daemon("dst-p", &[], None);
    let mut src_vm = boot_source(&s, &m, &by_path);
    let (dst_vm, status) = migrate_live(&s, &m, &mut src_vm, &dst_p);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&by_path, &dst_p]);
    assert_eq!(status, "failed", "{}", ctx.report());
    assert!(
        dst_p.output().contains("the source had no path for it"),
        "{}",
        ctx.report()
    );
    drop(dst_vm);
    src_vm.quit();
    std::fs::remove_dir_all(s.dir.path().join("src")).unwrap();
    std::fs::remove_dir_all(s.dir.path().join("dst")).unwrap();
    std::fs::remove_file(s.host("after.txt")).ok();

    // Opening handles needs CAP_DAC_READ_SEARCH, which a root daemon keeps only when file
    // handles are chosen (docs/security.md).
    let opts = [
        "--migration-mode=file-handles",
        "--inode-file-handles=prefer",
    ];
    let src = s.daemon("src-h", &opts, None);
    let dst = s.daemon("dst-h", &opts, None);
    let mut src_vm = boot_source(&s, &m, &src);
    let (mut dst_vm, status) = migrate_live(&s, &m, &mut src_vm, &dst);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&src, &dst]);
    assert_eq!(status, "completed", "{}", ctx.report());
    src_vm.quit();
    s.go();
    dst_vm.wait_exit(BOOT).unwrap();
    let out = ctx.output();
    assert!(out.contains("OK unlinked-fd\n"), "{}", ctx.report());
    assert_guest_carried_on(&out, "-", "original", &ctx);
}

/// Save to a file, quit the source (its daemon exits), restore into a new QEMU and daemon.
fn save(s: &Setup, src_vm: &mut MigVm) -> String {
    let file = s.dir.path().join("vm.state");
    src_vm
        .qmp(
            "migrate",
            json!({ "uri": format!("file:{}", file.display()) }),
        )
        .unwrap();
    let (status, r) = src_vm.wait_migration(Duration::from_secs(120)).unwrap();
    assert_eq!(status, "completed", "{r}\n{}", src_vm.report());
    file.display().to_string()
}

fn restore(s: &Setup, m: &Machine, file: &str, dst: &Daemon) -> (MigVm, Result<(), String>) {
    let mut vm = m.start(s.dir.path(), "dst", dst.socket(), true).unwrap();
    vm.qmp("migrate-incoming", json!({ "uri": format!("file:{file}") }))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match vm.run_state() {
            Ok(st) if st == "running" => return (vm, Ok(())),
            Ok(st) if st == "inmigrate" || st == "prelaunch" => {}
            Ok(st) => return (vm, Err(format!("destination state {st}"))),
            // QEMU exits when the incoming migration fails.
            Err(e) => return (vm, Err(e)),
        }
        if std::time::Instant::now() >= deadline {
            return (vm, Err("restore did not finish".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn save_to_file_and_restore_into_a_new_daemon() {
    let Some(()) = require_vm() else { return };
    let Some(qemu) = qemu10() else { return };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_file", None);
    let m = machine(qemu, "");
    let mut src = s.daemon("src", &["--migration-mode=file-handles"], None);
    let mut src_vm = boot_source(&s, &m, &src);
    let file = save(&s, &mut src_vm);
    // The source is gone before the destination starts, as after `virsh save`.
    src_vm.quit();
    assert!(src.wait_exit(Duration::from_secs(10)).success());
    let dst = s.daemon("dst", &["--migration-mode=file-handles"], None);
    let (mut dst_vm, restored) = restore(&s, &m, &file, &dst);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&src, &dst]);
    restored.unwrap_or_else(|e| panic!("{e}\n{}", ctx.report()));
    s.go();
    dst_vm.wait_exit(BOOT).unwrap();
    assert_guest_carried_on(&ctx.output(), "-", "original", &ctx);
    assert_host_data(&s);
    eprintln!(
        "state file: {} bytes; destination: {}",
        std::fs::metadata(&file).unwrap().len(),
        took_over_line(&dst)
    );
}

#[test]
fn unprivileged_daemons_migrate_a_root_owned_tree() {
    let Some(()) = require_vm() else { return };
    let Some(qemu) = qemu10() else { return };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_unpriv", Some(NOBODY));
    let m = machine(qemu, "");
    let src = s.daemon("src", &[], Some(NOBODY));
    let dst = s.daemon("dst", &[], Some(NOBODY));
    let mut src_vm = boot_source(&s, &m, &src);
    let (mut dst_vm, status) = migrate_live(&s, &m, &mut src_vm, &dst);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&src, &dst]);
    assert_eq!(status, "completed", "{}", ctx.report());
    src_vm.quit();
    s.go();
    dst_vm.wait_exit(BOOT).unwrap();
    assert_guest_carried_on(&ctx.output(), "-", "original", &ctx);
    assert_host_data(&s);
}

/// The host replaces victim.txt (same path, same type, another file) between the ends: by
/// default the destination refuses, and the source VM carries on with the original.
#[test]
fn a_file_replaced_between_the_ends_is_refused_and_the_source_goes_on() {
    let Some(()) = require_vm() else { return };
    let Some(qemu) = qemu10() else { return };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_replaced", None);
    let m = machine(qemu, "");
    let src = s.daemon("src", &[], None);
    let mut src_vm = boot_source(&s, &m, &src);
    let file = save(&s, &mut src_vm);
    std::fs::remove_file(s.host("victim.txt")).unwrap();
    std::fs::write(s.host("victim.txt"), b"IMPOSTOR\n").unwrap();
    let mut dst = s.daemon("dst", &[], None);
    let (dst_vm, restored) = restore(&s, &m, &file, &dst);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&src, &dst]);
    assert!(
        restored.is_err(),
        "the destination took a replaced file\n{}",
        ctx.report()
    );
    let log = dst.output();
    assert!(
        log.contains("work/victim.txt): a different file now has its path")
            && log.contains("migration refused"),
        "{}",
        ctx.report()
    );
    drop(dst_vm);
    dst.wait_exit(Duration::from_secs(10));
    // The source is intact: it resumes, and the guest finishes there with the original file.
    src_vm.qmp("cont", json!({})).unwrap();
    s.go();
    src_vm.wait_exit(BOOT).unwrap();
    assert_guest_carried_on(&src_vm.guest_output(), "-", "original", &ctx);
}

/// Renamed, deleted and replaced files between the ends, with --migration-on-error=guest-error:
/// the guest goes on, and gets errors for exactly those files; never another file's bytes.
#[test]
fn host_changes_between_the_ends_give_errors_for_those_files_alone() {
    let Some(()) = require_vm() else { return };
    let Some(qemu) = qemu10() else { return };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_changes", None);
    let m = machine(qemu, "");
    let opts = ["--migration-on-error=guest-error"];
    let src = s.daemon("src", &opts, None);
    let mut src_vm = boot_source(&s, &m, &src);
    let file = save(&s, &mut src_vm);
    src_vm.quit();
    std::fs::rename(s.host("tree/d3/f1"), s.host("tree/d3/f1-moved")).unwrap();
    std::fs::remove_file(s.host("tree/d4/f2")).unwrap();
    std::fs::remove_file(s.host("victim.txt")).unwrap();
    std::fs::write(s.host("victim.txt"), b"IMPOSTOR\n").unwrap();
    let dst = s.daemon("dst", &opts, None);
    let (mut dst_vm, restored) = restore(&s, &m, &file, &dst);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&src, &dst]);
    restored.unwrap_or_else(|e| panic!("{e}\n{}", ctx.report()));
    s.go();
    dst_vm.wait_exit(BOOT).unwrap();
    // victim.txt's handle is gone with its inode: EBADF (9), not IMPOSTOR.
    assert_guest_carried_on(&ctx.output(), "tree/d3/f1,tree/d4/f2", "errno=9", &ctx);
    assert!(
        took_over_line(&dst).contains("(3 lost)"),
        "{}",
        ctx.report()
    );
    assert_host_data(&s);
}

/// A guest holding a lock: locks cannot move, so by default the source refuses to hand over.
#[test]
fn a_guest_holding_a_lock_is_not_migrated_and_goes_on() {
    let Some(()) = require_vm() else { return };
    let Some(qemu) = qemu10() else { return };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_lock", None);
    let m = machine(qemu, "lock");
    let src = s.daemon("src", &[], None);
    let dst = s.daemon("dst", &[], None);
    let mut src_vm = boot_source(&s, &m, &src);
    let (dst_vm, status) = migrate_live(&s, &m, &mut src_vm, &dst);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&src, &dst]);
    assert_eq!(status, "failed", "{}", ctx.report());
    assert!(
        src.output()
            .contains("holds POSIX or flock locks on 1 open file"),
        "{}",
        ctx.report()
    );
    drop(dst_vm);
    // return-path: the source resumed by itself.
    wait_running(&mut src_vm);
    s.go();
    src_vm.wait_exit(BOOT).unwrap();
    assert_guest_carried_on(&src_vm.guest_output(), "-", "original", &ctx);
}

fn wait_running(vm: &mut MigVm) {
    for _ in 0..200 {
        if vm.run_state().unwrap() == "running" {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the source did not resume\n{}", vm.report());
}

/// Upstream virtiofsd's state cannot be read by vufsd: refused by name, the source goes on.
#[test]
fn a_stream_from_virtiofsd_is_refused_and_the_source_goes_on() {
    let Some(()) = require_vm() else { return };
    let Some(qemu) = qemu10() else { return };
    let Some(virtiofsd) = require("upstream virtiofsd", common::find_virtiofsd()) else {
        return;
    };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_foreign", None);
    let m = machine(qemu, "");
    let sock = s.dir.path().join("src.sock");
    let src = DaemonSpec::new(virtiofsd, &sock)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&s.share)
        .args(["--sandbox", "none"])
        .spawn(s.dir.path());
    let dst = s.daemon("dst", &[], None);
    let mut src_vm = boot_source(&s, &m, &src);
    let (dst_vm, status) = migrate_live(&s, &m, &mut src_vm, &dst);
    let ctx = Ctx::new(&[&src_vm, &dst_vm], &[&src, &dst]);
    assert_eq!(status, "failed", "{}", ctx.report());
    assert!(
        dst.output()
            .contains("the device state is not vufsd's (another daemon's"),
        "{}",
        ctx.report()
    );
    drop(dst_vm);
    wait_running(&mut src_vm);
    s.go();
    src_vm.wait_exit(BOOT).unwrap();
    assert_guest_carried_on(&src_vm.guest_output(), "-", "original", &ctx);
}

/// Debian 12's QEMU 7.2 has no device-state transfer for vhost-user-fs: it refuses to migrate
/// with its own message, and the guest keeps its share.
#[test]
fn qemu_7_2_refuses_to_migrate_and_the_guest_goes_on() {
    let Some(()) = require_vm() else { return };
    let _slot = slot().unwrap();
    let s = Setup::new("mig_qemu72", None);
    let m = machine(Qemu::system(), "");
    let src = s.daemon("src", &[], None);
    let mut src_vm = boot_source(&s, &m, &src);
    let file = s.dir.path().join("vm.state");
    let err = src_vm
        .qmp(
            "migrate",
            json!({ "uri": format!("exec:cat > {}", file.display()) }),
        )
        .expect_err("QEMU 7.2 migrated a vhost-user-fs device");
    assert!(err.contains("vhost-user-fs"), "{err}\n{}", src_vm.report());
    s.go();
    src_vm.wait_exit(BOOT).unwrap();
    let ctx = Ctx::new(&[&src_vm], &[&src]);
    assert_guest_carried_on(&src_vm.guest_output(), "-", "original", &ctx);
}
