//! Set-id bits on a guest user's data change, at the protocol level (vufsd-bench as the guest
//! driver). The guest kernel clears setuid/setgid itself before a WRITE (a SETATTR), but not
//! before a FALLOCATE, and the host does not either when the daemon holds CAP_FSETID: vufsd
//! must clear them for a caller who is not root, as the guest's own filesystem would
//! (xfstests generic/683-685).

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use vufsd_bench::fuse_abi::FUSE_ROOT_ID;
use vufsd_bench::Creds;

mod protocol_env;
use protocol_env::start;

const USER: Creds = Creds {
    uid: 1000,
    gid: 1000,
    pid: 1,
};
const ROOT: Creds = Creds {
    uid: 0,
    gid: 0,
    pid: 1,
};

#[test]
fn fallocate_by_a_guest_user_clears_set_id_bits_and_by_root_keeps_them() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("NOT RUN: needs root (a daemon with CAP_FSETID, the case this covers)");
        return;
    }
    let env = start(&[]);
    let path = env.share().join("setid");
    std::fs::write(&path, vec![b'X'; 4096]).unwrap();
    let e = env.client.lookup(FUSE_ROOT_ID, "setid").unwrap();
    let fh = env.client.open(e.nodeid, libc::O_RDWR).unwrap().fh;
    // (host mode before, file group, caller, host mode after): generic/683's cases.
    let cases = [
        (0o6666, 0, USER, 0o0666), // non-member: setgid goes even without group exec
        (0o6676, 0, USER, 0o0676), // group exec: setgid goes
        (0o6766, 1000, USER, 0o2766), // member, no group exec: setgid stays (locking mark)
        (0o6777, 1000, USER, 0o0777),
        (0o6666, 0, ROOT, 0o6666), // the guest's root has CAP_FSETID
        (0o6777, 0, ROOT, 0o6777),
    ];
    for (i, (before, group, caller, after)) in cases.into_iter().enumerate() {
        std::os::unix::fs::chown(&path, Some(0), Some(group)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(before)).unwrap();
        let offset = 8192 * (i as u64 + 1);
        env.client
            .clone()
            .with_creds(caller)
            .call(vufsd_bench::ops::fallocate(e.nodeid, fh, offset, 4096, 0))
            .unwrap_or_else(|err| panic!("case {i}: FALLOCATE: {err}"));
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(
            md.mode() & 0o7777,
            after,
            "case {i}: {before:o} fallocated by uid {} gid {}",
            caller.uid,
            caller.gid
        );
        assert_eq!(md.size(), offset + 4096, "case {i}: the allocation itself");
    }
    env.assert_alive("FALLOCATE");
}
