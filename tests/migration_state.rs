//! The device-state hand-over at the vhost-user level, driven by vufsd-bench as QEMU drives it
//! (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE), without a guest: vufsd to vufsd, streams vufsd
//! must refuse (upstream virtiofsd's, damaged ones), and hostile streams that name files
//! outside the share. The guest's view of a migration is tests/vm_migration.rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vufsd::migration::state::{InodeRecord, State};
use vufsd_bench::fuse_abi::FUSE_ROOT_ID;
use vufsd_bench::state_transfer::{measure, Subject};
use vufsd_bench::{find_virtiofsd, DaemonProcess, Device, DeviceConfig, FuseClient, TempDir};

fn vufsd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vufsd"))
}

fn connect(sock: &Path) -> Arc<Device> {
    let mut cfg = DeviceConfig::new(sock);
    cfg.features.device_state = true;
    cfg.timeout = Duration::from_secs(20);
    Arc::new(Device::connect(cfg).unwrap())
}

/// A fresh vufsd on `share` with `extra` options, and its device.
fn daemon(dir: &Path, share: &Path, name: &str, extra: &[&str]) -> (DaemonProcess, Arc<Device>) {
    let sock = dir.join(format!("{name}.sock"));
    let mut args: Vec<std::ffi::OsString> = vec!["--sandbox".into(), "none".into()];
    args.extend(extra.iter().map(Into::into));
    let d = DaemonProcess::spawn(&vufsd(), share, &sock, &args, Duration::from_secs(10)).unwrap();
    let dev = connect(&sock);
    (d, dev)
}

#[test]
fn vufsd_hands_its_state_to_a_new_vufsd() {
    let dir = TempDir::new("vufsd-state").unwrap();
    // measure() checks that a node id from the source answers for the same file. Both in the
    // default sandbox (namespaces, seccomp) and unsandboxed.
    for extra in [vec![], vec!["--sandbox=namespace", "--seccomp=kill"]] {
        let subject = Subject {
            program: vufsd(),
            virtiofsd: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let r = measure(&subject, dir.path(), 1500, Duration::ZERO)
            .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert_eq!(r.inodes, 1501);
        assert!(r.bytes > 1500 * 8 && r.bytes < 1500 * 80, "{r:?}");
    }
}

#[test]
fn a_stream_from_upstream_virtiofsd_is_refused_by_name() {
    let Some(virtiofsd) = find_virtiofsd() else {
        panic!(
            "virtiofsd not found: `cargo install virtiofsd --version 1.14.0` (scripts/install-deps)"
        );
    };
    let dir = TempDir::new("vufsd-state-foreign").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("d")).unwrap();
    let sock = dir.path().join("virtiofsd.sock");
    let _src = DaemonProcess::virtiofsd(&virtiofsd, &share, &sock, &[]).unwrap();
    let src = connect(&sock);
    let c = FuseClient::new(Arc::clone(&src));
    c.init().unwrap();
    c.lookup(FUSE_ROOT_ID, "d").unwrap();
    src.connection().unwrap().set_log_all(true).unwrap();
    src.stop().unwrap();
    let theirs = src.connection().unwrap().save_state().unwrap();
    assert!(!theirs.is_empty());

    let (dst, dev) = daemon(dir.path(), &share, "vufsd", &[]);
    let r = dev.connection().unwrap().load_state(&theirs);
    assert!(r.is_err(), "vufsd took virtiofsd's state");
    assert!(
        dst.log().contains(
            "the device state is not vufsd's (another daemon's, such as upstream virtiofsd's?)"
        ),
        "{}",
        dst.log()
    );
}

fn root_identity(share: &Path) -> vufsd::migration::state::RootIdentity {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(share).unwrap();
    vufsd::migration::state::RootIdentity {
        dev: m.dev(),
        ino: m.ino(),
        handle: None,
    }
}

fn record(id: u64, path: &str, file_type: u32) -> InodeRecord {
    InodeRecord {
        id,
        refcount: 1,
        file_type,
        dev: 0,
        ino: 0,
        path: Some(path.as_bytes().to_vec()),
        handle: None,
    }
}

/// A stream is not trusted: paths that climb out, absolute ones, symlinks on the way, and
/// node ids that collide are refused (abort) or lost (guest-error); nothing outside the share
/// is ever opened.
#[test]
fn a_hostile_stream_never_reaches_outside_the_share() {
    let dir = TempDir::new("vufsd-state-hostile").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(dir.path().join("secret"), b"CANARY").unwrap();
    std::fs::write(share.join("ok.txt"), b"fine").unwrap();
    std::os::unix::fs::symlink(dir.path(), share.join("up")).unwrap();
    let reg = libc::S_IFREG;
    let hostile = [
        "../secret",
        "sub/../../secret",
        "up/secret",
        "/etc/passwd",
        "sub//../../secret",
    ];
    for path in hostile {
        let state = State {
            root: root_identity(&share),
            next_inode: 10,
            next_handle: 1,
            inodes: vec![record(5, path, reg)],
            ..State::default()
        };
        let (d, dev) = daemon(dir.path(), &share, "abort", &[]);
        let r = dev.connection().unwrap().load_state(&state.encode());
        assert!(r.is_err(), "{path}: loaded\n{}", d.log());
        assert!(
            d.log().contains("migration refused"),
            "{path}:\n{}",
            d.log()
        );
        drop((dev, d));

        let (d, dev) = daemon(
            dir.path(),
            &share,
            "lost",
            &["--migration-on-error=guest-error"],
        );
        dev.connection()
            .unwrap()
            .load_state(&state.encode())
            .unwrap();
        let c = FuseClient::new(Arc::clone(&dev));
        let e = c
            .getattr(5)
            .expect_err("a node the stream put outside the share");
        assert_eq!(e.errno(), Some(libc::ESTALE), "{path}: {e}\n{}", d.log());
        // The rest of the share is served as ever.
        assert_eq!(c.lookup(FUSE_ROOT_ID, "ok.txt").unwrap().attr.size, 4);
    }

    // The root's node id, a repeated node id: refused whatever --migration-on-error says.
    for inodes in [
        vec![record(1, "ok.txt", reg)],
        vec![record(5, "ok.txt", reg), record(5, "sub", libc::S_IFDIR)],
    ] {
        let state = State {
            root: root_identity(&share),
            next_inode: 10,
            inodes,
            ..State::default()
        };
        let (d, dev) = daemon(
            dir.path(),
            &share,
            "ids",
            &["--migration-on-error=guest-error"],
        );
        let r = dev.connection().unwrap().load_state(&state.encode());
        assert!(r.is_err(), "loaded\n{}", d.log());
    }

    // A right path but the wrong file type (a directory where a file was): never served.
    let state = State {
        root: root_identity(&share),
        next_inode: 10,
        inodes: vec![record(7, "sub", reg)],
        ..State::default()
    };
    let (d, dev) = daemon(dir.path(), &share, "type", &[]);
    assert!(dev
        .connection()
        .unwrap()
        .load_state(&state.encode())
        .is_err());
    assert!(d.log().contains("where the source had type"), "{}", d.log());
}

#[test]
fn a_damaged_or_truncated_stream_is_refused_and_the_daemon_serves_on() {
    let dir = TempDir::new("vufsd-state-damaged").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("ok.txt"), b"fine").unwrap();
    let state = State {
        root: root_identity(&share),
        next_inode: 10,
        inodes: vec![record(5, "ok.txt", libc::S_IFREG)],
        ..State::default()
    };
    let good = state.encode();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    for (what, bytes, needle) in [
        ("checksum", flipped, "corrupt (checksum mismatch)"),
        ("cut", good[..good.len() - 3].to_vec(), "cut short"),
        ("empty", Vec::new(), "not vufsd's"),
    ] {
        let (d, dev) = daemon(dir.path(), &share, what, &[]);
        assert!(
            dev.connection().unwrap().load_state(&bytes).is_err(),
            "{what}"
        );
        assert!(d.log().contains(needle), "{what}: {}", d.log());
        // A refused load leaves the daemon as it was: it serves a guest that mounts afresh.
        let c = FuseClient::new(Arc::clone(&dev));
        c.init().unwrap();
        assert_eq!(c.lookup(FUSE_ROOT_ID, "ok.txt").unwrap().attr.size, 4);
    }
}
