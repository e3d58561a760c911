//! What a hostile-guest review of the daemon found (issue 15), each as the guest, or a raw FUSE
//! client, would trigger it — through vufsd-bench, no guest needed. The fd budget and the
//! sandbox's file handles are tests/fd_budget.rs.

mod served;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use served::{errno_of, serve, Start};
use vufsd_bench::fuse_abi::FUSE_ROOT_ID;
use vufsd_bench::{ops, TempDir};

/// A host process's OFD read lock on `path`: Ok, or the errno (EAGAIN when a write lock is
/// held elsewhere).
fn host_read_lock(path: &Path) -> Result<(), i32> {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a zeroed flock is a valid value; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: F_OFD_SETLK with a valid flock on an fd we own.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Finding 1: `lock_file` opened the host file O_RDWR even on a `--readonly` share, so a guest
/// that opened a file read-only and locked it held a writable fd on the host: a host
/// process's read lock failed with EAGAIN, and `execve` of the file with ETXTBSY.
#[test]
fn a_readonly_share_never_opens_a_file_for_writing_to_lock_it() {
    let dir = TempDir::new("vufsd-ro-lock").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("data.txt"), b"data").unwrap();
    std::fs::copy("/bin/true", share.join("prog")).unwrap();
    std::fs::set_permissions(share.join("prog"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = serve(
        dir.path(),
        &share,
        Start {
            args: &["--readonly"],
            ..Default::default()
        },
    );
    let c = &s.client;
    for name in ["data.txt", "prog"] {
        let e = c.lookup(FUSE_ROOT_ID, name).unwrap();
        let fh = c.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
        c.call(ops::setlk(e.nodeid, fh, 1, libc::F_RDLCK, false, false))
            .unwrap_or_else(|e| panic!("{name}: a read lock: {e}"));
        // A write lock needs a file open for writing, which a read-only share never has (a
        // guest kernel refuses it itself; a raw client gets the host's answer).
        assert_eq!(
            errno_of(c.call(ops::setlk(e.nodeid, fh, 2, libc::F_WRLCK, false, false))),
            Some(libc::EBADF),
            "{name}: a write lock"
        );
        // flock(2) -x needs no write access, and takes the handle's own (read-only) fd.
        c.call(ops::setlk(e.nodeid, fh, 3, libc::F_WRLCK, true, false))
            .unwrap_or_else(|e| panic!("{name}: flock -x: {e}"));
        let fds = s.fds_on(&share.join(name));
        assert!(
            fds.len() >= 2,
            "{name}: the handle and the lock file: {fds:?}"
        );
        for (fd, flags) in fds {
            assert_eq!(
                flags & libc::O_ACCMODE,
                libc::O_RDONLY,
                "{name}: {} is open with flags {flags:o}",
                fd.display()
            );
        }
    }
    assert_eq!(host_read_lock(&share.join("data.txt")), Ok(()));
    let run = std::process::Command::new(share.join("prog")).status();
    assert!(
        run.as_ref().is_ok_and(|s| s.success()),
        "the host cannot run a file the guest locked: {run:?}"
    );
    assert!(s.client.is_alive());
}

/// Finding 3: fuse-backend-rs 0.14 masks RENAME2's flags before the filesystem sees them, so a
/// flag it does not know turned into a plain rename that replaced the target.
#[test]
fn unknown_rename2_flags_are_einval_and_rename_nothing() {
    let dir = TempDir::new("vufsd-rename2").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("a"), b"a").unwrap();
    std::fs::write(share.join("b"), b"b").unwrap();
    let s = serve(dir.path(), &share, Start::default());
    let c = &s.client;
    let unchanged = || {
        assert_eq!(std::fs::read(share.join("a")).unwrap(), b"a");
        assert_eq!(std::fs::read(share.join("b")).unwrap(), b"b");
    };
    for flags in [
        0x8,
        0x10,
        0x8000_0000,
        libc::RENAME_NOREPLACE | 0x8,
        libc::RENAME_EXCHANGE | 0x20,
    ] {
        assert_eq!(
            errno_of(c.call(ops::rename(FUSE_ROOT_ID, b"a", FUSE_ROOT_ID, b"b", flags))),
            Some(libc::EINVAL),
            "flags {flags:#x}"
        );
        unchanged();
    }
    // The flags renameat2 knows still do what they say.
    assert_eq!(
        errno_of(c.call(ops::rename(
            FUSE_ROOT_ID,
            b"a",
            FUSE_ROOT_ID,
            b"b",
            libc::RENAME_NOREPLACE
        ))),
        Some(libc::EEXIST)
    );
    unchanged();
    c.call(ops::rename(
        FUSE_ROOT_ID,
        b"a",
        FUSE_ROOT_ID,
        b"b",
        libc::RENAME_EXCHANGE,
    ))
    .unwrap();
    assert_eq!(std::fs::read(share.join("a")).unwrap(), b"b");
    c.call(ops::rename(FUSE_ROOT_ID, b"a", FUSE_ROOT_ID, b"b", 0))
        .unwrap();
    assert!(!share.join("a").exists());
    assert_eq!(std::fs::read(share.join("b")).unwrap(), b"b");
}

/// Whether `dir` is on ext4, which gives a freed inode number to the next new file at once.
fn on_ext4(dir: &Path) -> bool {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statfs is valid; statfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statfs.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    rc == 0 && st.f_type == 0xEF53
}

/// Finding 2: with a low open-file limit, inodes past the budget were held by file handle and
/// looked up by inode number: a new file that got a deleted file's number (no FORGET yet) got
/// the deleted file's node, whose handle then failed with ESTALE. Both ways of holding inodes
/// past the budget are checked: by name (the default) and by file handle.
#[test]
fn a_reused_inode_number_never_resolves_to_a_stale_node() {
    let mut modes: Vec<&[&str]> = vec![&[]];
    if served::is_root() {
        modes.push(&["--inode-file-handles=prefer"]);
    }
    for args in modes {
        let dir = TempDir::new_in(Path::new("/var/tmp"), "vufsd-reuse").unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let s = serve(
            dir.path(),
            &share,
            Start {
                nofile: Some(256),
                args,
                ..Default::default()
            },
        );
        let c = &s.client;
        let mut nodes = Vec::new();
        for i in 0..300 {
            let (e, o) = c
                .create(FUSE_ROOT_ID, &format!("f{i}"), libc::O_WRONLY, 0o644)
                .unwrap();
            c.write(e.nodeid, o.fh, 0, format!("f{i}").as_bytes())
                .unwrap();
            c.release(e.nodeid, o.fh).unwrap();
            nodes.push(e.nodeid);
        }
        // Unlinked by the guest, never forgotten: the last one made, and early ones (which
        // the daemon no longer holds by fd).
        let mut freed = std::collections::HashMap::new();
        for i in (0..10).chain([299]) {
            let ino = std::fs::metadata(share.join(format!("f{i}")))
                .unwrap()
                .ino();
            c.unlink(FUSE_ROOT_ID, &format!("f{i}")).unwrap();
            freed.insert(ino, nodes[i]);
        }
        let mut reused = 0;
        for i in 0..20 {
            let name = format!("reuse-{i}");
            let (e, o) = c
                .create(FUSE_ROOT_ID, &name, libc::O_WRONLY, 0o644)
                .unwrap();
            c.write(e.nodeid, o.fh, 0, name.as_bytes()).unwrap();
            c.release(e.nodeid, o.fh).unwrap();
            let ino = std::fs::metadata(share.join(&name)).unwrap().ino();
            if let Some(old) = freed.get(&ino) {
                reused += 1;
                assert_ne!(e.nodeid, *old, "{args:?} {name} got a deleted file's node");
            }
            let what = format!("{args:?} {name}\n{}", s.daemon.log());
            let attr = c
                .getattr(e.nodeid)
                .unwrap_or_else(|e| panic!("GETATTR {what}: {e}"));
            assert_eq!(attr.attr.ino, ino, "{what}");
            let l = c
                .lookup(FUSE_ROOT_ID, &name)
                .unwrap_or_else(|e| panic!("LOOKUP {what}: {e}"));
            assert_eq!(l.nodeid, e.nodeid, "{what}");
            let fh = c
                .open(l.nodeid, libc::O_RDONLY)
                .unwrap_or_else(|e| panic!("OPEN {what}: {e}"))
                .fh;
            assert_eq!(c.read(l.nodeid, fh, 0, 64).unwrap(), name.as_bytes());
            c.release(l.nodeid, fh).unwrap();
        }
        // The deleted files' nodes never answer for a new file.
        for (ino, node) in &freed {
            match c.getattr(*node) {
                Ok(a) => assert_eq!(a.attr.ino, *ino, "{args:?} node {node}"),
                Err(e) => assert_eq!(e.errno(), Some(libc::ESTALE), "{args:?} node {node}"),
            }
        }
        eprintln!("{args:?}: {reused} inode numbers reused by the host");
        if on_ext4(&share) {
            assert!(
                reused > 0,
                "ext4 reuses freed inode numbers: the test tested nothing"
            );
        }
    }
}
