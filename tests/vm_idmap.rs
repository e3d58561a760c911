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
