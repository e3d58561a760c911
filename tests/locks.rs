//! POSIX locks, flock(2) and OFD locks as the guest takes them through vufsd, at the protocol
//! level (vufsd-bench as the guest driver): what is offered, what is held, what is released
//! and when, and that a waiting lock cannot hold up the daemon.

use std::time::Duration;

use vufsd_bench::fuse_abi::{opcode, FUSE_ROOT_ID};
use vufsd_bench::FuseRequest;

mod protocol_env;
use protocol_env::{errno_of, raw_errno, start};

/// POSIX locks are for regular files: a SETLK on a directory handle used to get a lock file
/// (an fd) for every new lock owner, and on the root, which is never forgotten, those fds stayed
/// for the daemon's life (found by the fuzz harness). flock on a directory handle still works: it
/// takes the handle's own fd and goes with it.
#[test]
fn posix_locks_on_directories_hold_nothing() {
    let env = start(&[]);
    let c = &env.client;
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", env.daemon.pid()))
            .unwrap()
            .count()
    };
    let dir = c.opendir(FUSE_ROOT_ID).unwrap().fh;
    let before = fds();
    let lk = |owner: u64, op: u32, lk_flags: u32| {
        let mut body = Vec::new();
        body.extend_from_slice(&dir.to_ne_bytes());
        body.extend_from_slice(&owner.to_ne_bytes());
        body.extend_from_slice(&0u64.to_ne_bytes()); // start
        body.extend_from_slice(&(i64::MAX as u64).to_ne_bytes()); // end
        body.extend_from_slice(&(libc::F_RDLCK as u32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes()); // pid
        body.extend_from_slice(&lk_flags.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes()); // padding
        FuseRequest::new(op, FUSE_ROOT_ID).bytes(&body).out(24)
    };
    for owner in 0..20 {
        assert_eq!(
            errno_of(c.request(&lk(owner, opcode::SETLK, 0))),
            Some(libc::EINVAL)
        );
        assert_eq!(
            errno_of(c.request(&lk(owner, opcode::GETLK, 0))),
            Some(libc::EINVAL)
        );
    }
    assert_eq!(fds(), before, "fds held for locks on a directory");
    c.request(&lk(1, opcode::SETLK, 1)).unwrap(); // FUSE_LK_FLOCK
    c.releasedir(FUSE_ROOT_ID, dir).unwrap();
    assert_eq!(
        fds(),
        before - 1,
        "the directory handle is gone, and nothing else is held"
    );
}

/// A guest that asks for many lock waits cannot make the daemon spawn threads without bound.
#[test]
fn lock_waits_are_bounded() {
    let env = start(&[]);
    let c = &env.client;
    let f = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    let fh = c.open(f.nodeid, libc::O_RDWR).unwrap().fh;
    // Owner 1 holds a write lock on the whole file...
    let lk = |owner: u64, op: u32| {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_ne_bytes());
        body.extend_from_slice(&owner.to_ne_bytes());
        body.extend_from_slice(&0u64.to_ne_bytes()); // start
        body.extend_from_slice(&(i64::MAX as u64).to_ne_bytes()); // end
        body.extend_from_slice(&(libc::F_WRLCK as u32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes()); // pid
        body.extend_from_slice(&0u32.to_ne_bytes()); // lk_flags
        body.extend_from_slice(&0u32.to_ne_bytes()); // padding
        FuseRequest::new(op, f.nodeid).bytes(&body)
    };
    c.request(&lk(1, opcode::SETLK)).unwrap();
    // ... owner 2 cannot get it without waiting ...
    assert_eq!(
        errno_of(c.request(&lk(2, opcode::SETLK))),
        Some(libc::EAGAIN)
    );
    // ... and 300 waiting requests: 256 wait, the rest are refused with ENOLCK at once.
    let dev = c.device().clone();
    let mut queue = dev.request_queue(0).unwrap();
    let mut tickets = Vec::new();
    for owner in 0..300u64 {
        let chain = lk(100 + owner, opcode::SETLKW).to_chain(10_000 + owner, Default::default());
        tickets.push(queue.submit(&chain).unwrap());
    }
    let mut refused = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refused < 300 - 256 && std::time::Instant::now() < deadline {
        for (_, done) in queue.poll().unwrap() {
            if raw_errno(&done.written) == libc::ENOLCK {
                refused += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        refused,
        300 - 256,
        "lock waits beyond the bound must be refused"
    );
    queue.abandon_all();
    drop(queue);
    // Other requests are still served while 256 waits are pending.
    env.assert_alive("many lock waits");
}

/// `--no-posix-lock` / `--no-flock` (libvirt's `<lock posix='off' flock='off'/>`, `-o
/// no_posix_lock,no_flock`): INIT offers no lock support, so the guest keeps its locks local.
#[test]
fn locks_turned_off_are_not_offered_to_the_guest() {
    use vufsd_bench::fuse_abi::init_flags::{FLOCK_LOCKS, POSIX_LOCKS};
    let on = start(&[]);
    let flags = u64::from(on.client.init().unwrap().flags);
    assert!(
        flags & POSIX_LOCKS != 0 && flags & FLOCK_LOCKS != 0,
        "{flags:#x}"
    );
    let off = start(&["--no-posix-lock", "--no-flock"]);
    let flags = u64::from(off.client.init().unwrap().flags);
    assert!(flags & (POSIX_LOCKS | FLOCK_LOCKS) == 0, "{flags:#x}");
    let posix_only = start(&["--no-flock"]);
    let flags = u64::from(posix_only.client.init().unwrap().flags);
    assert!(
        flags & POSIX_LOCKS != 0 && flags & FLOCK_LOCKS == 0,
        "{flags:#x}"
    );
}

/// An OFD lock's owner is the open file itself, and the guest kernel sends no unlock for it
/// when that file is closed (its FLUSH names the process's file table, another owner): the
/// daemon must drop it at RELEASE, or the next process to lock the file waits for ever
/// (xfstests generic/478).
#[test]
fn an_ofd_lock_goes_with_the_file_that_held_it() {
    use vufsd_bench::ops;
    let env = start(&[]);
    let c = &env.client;
    let e = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    let first = c.open(e.nodeid, libc::O_RDWR).unwrap().fh;
    // Owner 0xf11e: the file (an OFD lock); the FLUSH at close names 0xab1e (its files).
    c.call(ops::setlk(
        e.nodeid,
        first,
        0xf11e,
        libc::F_WRLCK,
        false,
        false,
    ))
    .unwrap();
    let second = c.open(e.nodeid, libc::O_RDWR).unwrap().fh;
    let taken = c.call(ops::setlk(
        e.nodeid,
        second,
        0x5ec0,
        libc::F_WRLCK,
        false,
        false,
    ));
    assert_eq!(
        taken.unwrap_err().errno(),
        Some(libc::EAGAIN),
        "the lock holds"
    );
    c.call(ops::flush(e.nodeid, first, 0xab1e)).unwrap();
    c.release(e.nodeid, first).unwrap();
    c.call(ops::setlk(
        e.nodeid,
        second,
        0x5ec0,
        libc::F_WRLCK,
        false,
        false,
    ))
    .unwrap_or_else(|err| panic!("still locked after the file was closed: {err}"));
    // A POSIX owner's lock (taken through another handle) is not dropped by this RELEASE.
    let third = c.open(e.nodeid, libc::O_RDWR).unwrap().fh;
    c.release(e.nodeid, third).unwrap();
    let fourth = c.open(e.nodeid, libc::O_RDWR).unwrap().fh;
    let taken = c.call(ops::setlk(
        e.nodeid,
        fourth,
        0x7777,
        libc::F_WRLCK,
        false,
        false,
    ));
    assert_eq!(taken.unwrap_err().errno(), Some(libc::EAGAIN));
}
