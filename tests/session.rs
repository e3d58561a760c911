//! What a guest's mount negotiates at FUSE_INIT and what FUSE_DESTROY ends, at the protocol
//! level (vufsd-bench as the guest driver).

use std::time::Duration;

use vufsd_bench::fuse_abi::FUSE_ROOT_ID;

mod protocol_env;
use protocol_env::start;

/// At unmount the guest kernel sends FUSE_DESTROY but no FORGET or RELEASE for what it still
/// holds: the daemon must drop it all then, or a file unlinked while the guest knew it keeps its
/// space on the host until the daemon exits (xfstests generic/103 filled the scratch share for
/// every test after it). A second mount then works from a clean table.
#[test]
fn destroy_drops_what_the_guest_held_and_frees_unlinked_files() {
    let env = start(&[]);
    let c = &env.client;
    let deleted_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", env.daemon.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.to_string_lossy().ends_with("/big (deleted)"))
            .count()
    };
    let (e, o) = c.create(FUSE_ROOT_ID, "big", libc::O_RDWR, 0o644).unwrap();
    c.write(e.nodeid, o.fh, 0, &vec![7u8; 1 << 20]).unwrap();
    let held = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    c.unlink(FUSE_ROOT_ID, "big").unwrap();
    assert!(deleted_fds() > 0, "the open handle holds the unlinked file");
    c.destroy().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(deleted_fds(), 0, "{}", env.daemon.log());
    assert!(
        env.daemon
            .log()
            .contains("dropped 2 inodes, 1 open handles"),
        "{}",
        env.daemon.log()
    );
    // The old node ids are gone; a new session finds the files again.
    assert!(c.getattr(held.nodeid).is_err());
    c.init().unwrap();
    let again = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    assert_eq!(c.getattr(again.nodeid).unwrap().attr.size, 5);
    env.assert_alive("a second mount");
}

/// An access ACL (USER_OBJ rwx, GROUP_OBJ r-x, OTHER r-x) as the system.posix_acl_access
/// xattr carries it.
fn acl_0755() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 5)] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(u32::MAX.to_le_bytes());
    }
    v
}

/// FUSE_SETXATTR_EXT (negotiated with --posix-acl): the guest kernel tells the daemon, per
/// SETXATTR, when setting an access ACL must clear the setgid bit (its caller is neither in
/// the file's group nor has CAP_FSETID: xfstests generic/375), and the daemon, which sets it
/// with CAP_FSETID, clears the bit itself. Without the flag the bit stays.
#[test]
fn setting_an_acl_clears_setgid_when_the_guest_says_so() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use vufsd_bench::fuse_abi::init_flags;
    let env = start(&["--posix-acl", "--xattr"]);
    let c = &env.client;
    // start() negotiated already; a second INIT is what a remount sends.
    let out = c.init().unwrap();
    assert_ne!(u64::from(out.flags) & init_flags::SETXATTR_EXT, 0);
    for (name, kill) in [("kill", 1), ("keep", 0)] {
        let path = env.share().join(name);
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let e = c.lookup(FUSE_ROOT_ID, name).unwrap();
        c.call(vufsd_bench::ops::setxattr_ext(
            e.nodeid,
            b"system.posix_acl_access",
            &acl_0755(),
            0,
            kill,
        ))
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
        let want = if kill == 1 { 0o755 } else { 0o2755 };
        assert_eq!(mode, want, "{name}: {mode:o}\n{}", env.daemon.log());
    }
    env.assert_alive("SETXATTR_EXT");
}

/// Without --posix-acl the daemon does not take FUSE_SETXATTR_EXT: SETXATTR keeps the layout
/// fuse-backend-rs reads.
#[test]
fn setxattr_ext_is_declined_without_acls() {
    use vufsd_bench::fuse_abi::init_flags;
    let env = start(&["--xattr"]);
    let out = env.client.init().unwrap();
    assert_eq!(u64::from(out.flags) & init_flags::SETXATTR_EXT, 0);
}
