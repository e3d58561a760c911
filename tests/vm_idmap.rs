//! uid/gid translation (--translate-uid/--translate-gid) seen from both sides: guest-visible
//! owners and host-side owners.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{require_vm, run_vm, vufsd_bin, DaemonSpec, TestDir, VmConfig};

#[test]
fn translated_owners_both_ways() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("vm_idmap");
    let share = dir.mkdir("share");
    // A host file owned by host ids 101005:101006: the guest must see 1005:1006.
    std::fs::write(share.join("from-host"), "x").unwrap();
    std::os::unix::fs::chown(share.join("from-host"), Some(101_005), Some(101_006)).unwrap();
    // A host file outside every rule keeps its ids.
    std::fs::write(share.join("unmapped"), "x").unwrap();
    std::os::unix::fs::chown(share.join("unmapped"), Some(42), Some(43)).unwrap();
    std::fs::set_permissions(&share, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &dir.path().join("vfs.sock"), &share)
        .args([
            "--translate-uid=map:1000:101000:100",
            "--translate-gid=map:1000:101000:100",
            "--translate-uid=forbid-guest:5000:1",
        ])
        .spawn(dir.path());
    let script = r#"
AS1000="hostrun setpriv --reuid=1000 --regid=1000 --clear-groups"
AS5000="hostrun setpriv --reuid=5000 --regid=5000 --clear-groups"
expect_eq host-file-seen-translated "$(stat -c %u:%g /mnt/from-host)" 1005:1006
expect_eq unmapped-identity "$(stat -c %u:%g /mnt/unmapped)" 42:43
check create-as-1000 $AS1000 touch /mnt/by-1000
expect_eq created-seen-as-1000 "$(stat -c %u:%g /mnt/by-1000)" 1000:1000
echo x > /mnt/chowned
check chown-in-range chown 1002:1003 /mnt/chowned
expect_eq chowned-seen "$(stat -c %u:%g /mnt/chowned)" 1002:1003
check_fails chown-to-forbidden chown 5000 /mnt/chowned
check_fails create-as-forbidden $AS5000 touch /mnt/by-5000
"#;
    let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "vufs"));
    out.assert_ok(&[
        "host-file-seen-translated",
        "unmapped-identity",
        "create-as-1000",
        "created-seen-as-1000",
        "chown-in-range",
        "chowned-seen",
        "chown-to-forbidden",
        "create-as-forbidden",
    ]);
    assert!(
        daemon.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        daemon.report()
    );
    let md = |n: &str| std::fs::metadata(share.join(n)).unwrap();
    assert_eq!(
        (md("by-1000").uid(), md("by-1000").gid()),
        (101_000, 101_000)
    );
    assert_eq!(
        (md("chowned").uid(), md("chowned").gid()),
        (101_002, 101_003)
    );
    assert!(!share.join("by-5000").exists());
}

/// --uid-map/--gid-map (virtiofsd's user namespace maps): a root-started vufsd runs as root of
/// a user namespace whose ids 0..65536 are host ids 100000..165536. Guest files get the mapped
/// host owners, host owners come back mapped, an id outside the map can neither own nor be
/// shown (65534), and host root's private file is out of reach even of the guest's root: the
/// daemon's capabilities only cover ids of its namespace.
#[test]
fn user_namespace_maps_own_the_guests_files_and_fence_off_the_host() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("vm_userns");
    let share = dir.mkdir("share");
    std::fs::set_permissions(&share, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(share.join("mapped"), "x").unwrap();
    std::os::unix::fs::chown(share.join("mapped"), Some(101_000), Some(101_000)).unwrap();
    std::fs::write(share.join("secret"), "s").unwrap();
    std::fs::set_permissions(
        share.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &dir.path().join("vfs.sock"), &share)
        .args([
            "--sandbox=namespace",
            "--uid-map=:0:100000:65536:",
            "--gid-map=:0:100000:65536:",
        ])
        .spawn(dir.path());
    let script = r#"
AS1000="hostrun setpriv --reuid=1000 --regid=1000 --clear-groups"
AS70000="hostrun setpriv --reuid=70000 --regid=70000 --clear-groups"
expect_eq mapped-owner-shown "$(stat -c %u:%g /mnt/mapped)" 1000:1000
expect_eq unmapped-owner-is-overflow "$(stat -c %u:%g /mnt/secret)" 65534:65534
check_fails guest-root-cannot-read-host-roots-file cat /mnt/secret
check create-as-root touch /mnt/by-root
check create-as-1000 $AS1000 touch /mnt/by-1000
expect_eq created-seen-as-1000 "$(stat -c %u:%g /mnt/by-1000)" 1000:1000
check_fails create-as-unmapped $AS70000 touch /mnt/by-70000
"#;
    let out = run_vm(&VmConfig::new(dir.path(), script).with_daemon(&daemon, "vufs"));
    out.assert_ok(&[
        "mapped-owner-shown",
        "unmapped-owner-is-overflow",
        "guest-root-cannot-read-host-roots-file",
        "create-as-root",
        "create-as-1000",
        "created-seen-as-1000",
        "create-as-unmapped",
    ]);
    assert!(
        daemon.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        daemon.report()
    );
    assert!(
        daemon
            .report()
            .contains("user namespace: uid map :0:100000:65536:"),
        "{}",
        daemon.report()
    );
    let owner = |n: &str| {
        let md = std::fs::metadata(share.join(n)).unwrap();
        (md.uid(), md.gid())
    };
    assert_eq!(owner("by-root"), (100_000, 100_000));
    assert_eq!(owner("by-1000"), (101_000, 101_000));
    assert!(!share.join("by-70000").exists());
}
