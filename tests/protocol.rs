//! Hostile input at the protocol level, no guest needed: vufsd-bench plays a misbehaving guest
//! driver against the vufsd built here. Every case must end in an error reply or a dropped
//! request, never a crash, a hang, or a touched file outside the share.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vufsd_bench::fuse_abi::{opcode, to_bytes, FUSE_ROOT_ID};
use vufsd_bench::malformed::hdr;
use vufsd_bench::{
    Chain, ChainMode, DaemonProcess, Device, DeviceConfig, FuseClient, FuseRequest, Segment,
    TempDir,
};

const MEM: u64 = 64 << 20;

struct Env {
    // Drop order: client, then daemon, then the directory.
    client: FuseClient,
    daemon: DaemonProcess,
    dir: TempDir,
}

impl Env {
    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    fn canary(&self) -> PathBuf {
        self.dir.path().join("canary")
    }

    /// The daemon still serves: a fresh GETATTR of the root works.
    fn assert_alive(&self, what: &str) {
        assert!(
            self.client.is_alive(),
            "vufsd stopped serving after {what}\n{}",
            self.daemon.log()
        );
    }
}

fn start(extra: &[&str]) -> Env {
    let dir = TempDir::new("vufsd-protocol").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), b"hello").unwrap();
    std::fs::create_dir(share.join("sub")).unwrap();
    // Beside the share, never to be read or written through it.
    std::fs::create_dir(dir.path().join("canary")).unwrap();
    std::fs::write(dir.path().join("canary/secret"), b"CANARY").unwrap();
    std::os::unix::fs::symlink(dir.path().join("canary/secret"), share.join("abs-escape")).unwrap();
    std::os::unix::fs::symlink("../canary/secret", share.join("rel-escape")).unwrap();
    let sock = dir.path().join("vufsd.sock");
    let mut args: Vec<std::ffi::OsString> = vec!["--sandbox".into(), "none".into()];
    args.extend(extra.iter().map(Into::into));
    let daemon = DaemonProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_vufsd")),
        &share,
        &sock,
        &args,
        Duration::from_secs(10),
    )
    .unwrap();
    let mut config = DeviceConfig::new(&sock);
    config.memory_size = MEM;
    config.timeout = Duration::from_secs(3);
    let dev = Device::connect(config)
        .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", daemon.log()));
    let client = FuseClient::new(Arc::new(dev));
    client.init().unwrap();
    Env {
        client,
        daemon,
        dir,
    }
}

fn errno_of<T: std::fmt::Debug>(r: vufsd_bench::Result<T>) -> Option<i32> {
    match r {
        Err(e) => e.errno(),
        Ok(v) => panic!("expected an error reply, got {v:?}"),
    }
}

/// The errno in a raw reply (the out header's error field, negated).
fn raw_errno(written: &[u8]) -> i32 {
    assert!(
        written.len() >= 16,
        "reply shorter than a header: {written:?}"
    );
    -i32::from_ne_bytes(written[4..8].try_into().unwrap())
}

#[test]
fn malformed_chains_are_answered_or_dropped_and_the_daemon_lives_on() {
    let env = start(&[]);
    let cases = vufsd_bench::malformed::chains(MEM);
    for (name, chain) in cases {
        for mode in [ChainMode::Direct, ChainMode::Indirect] {
            let mut ch = chain.clone();
            ch.mode = Some(mode);
            // An error reply or a dropped request (timeout): both are fine, a dead daemon is not.
            let outcome = env.client.raw(1, &ch);
            // Out-of-order descriptors are against the virtio spec but unambiguous: serving
            // the request, as upstream virtiofsd also does, is as good as refusing it.
            let lenient = name == "writable before readable";
            if let Ok(c) = &outcome {
                if c.used_len >= 16 && !lenient {
                    let errno = raw_errno(&c.written);
                    assert!(errno > 0, "{name}: a malformed request succeeded: {c:?}");
                }
            }
            env.assert_alive(name);
        }
    }
    // A descriptor chain that loops back on itself.
    let (_buf, descs) =
        vufsd_bench::malformed::looping_chain(env.client.device().memory()).unwrap();
    let _ = env.client.raw_descs(1, &descs, ChainMode::Direct);
    env.assert_alive("a looping descriptor chain");
    // And normal service continues.
    let e = env.client.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    assert_eq!(
        env.client
            .read(
                e.nodeid,
                env.client.open(e.nodeid, libc::O_RDONLY).unwrap().fh,
                0,
                64
            )
            .unwrap(),
        b"hello"
    );
}

#[test]
fn unknown_opcodes_get_enosys() {
    let env = start(&[]);
    for op in [0u32, 7, 19, 48, 49, 52, 99, 4096, u32::MAX] {
        let chain = Chain::new(vec![
            Segment::In(to_bytes(&hdr(op, 40, 1))),
            Segment::Out(16),
        ]);
        let c = env.client.raw(1, &chain).unwrap();
        assert_eq!(c.used_len, 16, "opcode {op}");
        assert_eq!(raw_errno(&c.written), libc::ENOSYS, "opcode {op}");
    }
    env.assert_alive("unknown opcodes");
}

#[test]
fn stale_and_forgotten_node_ids_and_handles() {
    let env = start(&[]);
    let c = &env.client;
    // Forgetting what was never looked up, the root, or far too much: no reply, no harm.
    c.forget(999_999, 1).unwrap();
    c.forget(FUSE_ROOT_ID, u64::MAX).unwrap();
    c.batch_forget(&[(12345, 1), (FUSE_ROOT_ID, 7), (u64::MAX, u64::MAX)])
        .unwrap();
    env.assert_alive("forgets of unknown nodes");
    assert!(
        c.getattr(FUSE_ROOT_ID).is_ok(),
        "the root survives any forget"
    );

    let e = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    c.forget(e.nodeid, 1).unwrap();
    // Give the FORGET (on the high-priority queue) time to land before the next request.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        errno_of(c.getattr(e.nodeid)),
        Some(libc::EBADF),
        "request after FORGET"
    );
    assert_eq!(errno_of(c.getattr(u64::MAX)), Some(libc::EBADF));

    // A handle used with another node, a handle never issued, a handle after release.
    let e = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    let d = c.lookup(FUSE_ROOT_ID, "sub").unwrap();
    let fh = c.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(errno_of(c.read(d.nodeid, fh, 0, 16)), Some(libc::EBADF));
    assert_eq!(
        errno_of(c.read(e.nodeid, 777_777, 0, 16)),
        Some(libc::EBADF)
    );
    c.release(e.nodeid, fh).unwrap();
    assert_eq!(errno_of(c.read(e.nodeid, fh, 0, 16)), Some(libc::EBADF));
    assert_eq!(
        errno_of(c.release(e.nodeid, fh)),
        Some(libc::EBADF),
        "double release"
    );
    // Directory operations on a file node.
    assert_eq!(errno_of(c.lookup(e.nodeid, "x")), Some(libc::ENOTDIR));
    assert_eq!(errno_of(c.opendir(e.nodeid)), Some(libc::ENOTDIR));
    env.assert_alive("stale ids");
}

#[test]
fn names_and_links_cannot_reach_outside_the_share() {
    let env = start(&[]);
    let c = &env.client;
    let root_ino = std::fs::metadata(env.share()).unwrap().ino();
    // ".." at the root is the root.
    let up = c.lookup(FUSE_ROOT_ID, "..").unwrap();
    assert_eq!(
        up.attr.ino, root_ino,
        "'..' at the root must stay at the root"
    );
    assert_eq!(up.nodeid, FUSE_ROOT_ID);
    // Names with a '/' never walk.
    for name in ["../canary", "sub/../../canary", "/etc", "sub/"] {
        assert_eq!(
            errno_of(c.lookup(FUSE_ROOT_ID, name)),
            Some(libc::EINVAL),
            "{name}"
        );
        assert_eq!(
            errno_of(c.mkdir(FUSE_ROOT_ID, name, 0o755)),
            Some(libc::EINVAL),
            "{name}"
        );
    }
    let long = "x".repeat(300);
    assert_eq!(
        errno_of(c.lookup(FUSE_ROOT_ID, &long)),
        Some(libc::ENAMETOOLONG)
    );
    // A NUL inside the name: the name ends there.
    let req = FuseRequest::new(opcode::LOOKUP, FUSE_ROOT_ID)
        .bytes(b"hello.txt\0/../../canary/secret\0")
        .out(128);
    assert!(c.request(&req).is_ok(), "the name is 'hello.txt'");
    // Symlinks are returned as symlinks, never followed on the host.
    for name in ["abs-escape", "rel-escape"] {
        let l = c.lookup(FUSE_ROOT_ID, name).unwrap();
        assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        assert_eq!(
            errno_of(c.open(l.nodeid, libc::O_RDONLY)),
            Some(libc::ELOOP),
            "{name}"
        );
        assert_eq!(errno_of(c.opendir(l.nodeid)), Some(libc::ENOTDIR), "{name}");
        assert_eq!(
            errno_of(c.truncate(l.nodeid, 0)),
            Some(libc::EINVAL),
            "{name}"
        );
        // Creating *through* the link is creating in a non-directory.
        assert_eq!(
            errno_of(c.mkdir(l.nodeid, "x", 0o755)),
            Some(libc::ENOTDIR),
            "{name}"
        );
    }
    // A hard link or rename to a name with a '/' is refused.
    let f = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    assert_eq!(
        errno_of(c.link(f.nodeid, FUSE_ROOT_ID, "../canary/stolen")),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(c.rename(FUSE_ROOT_ID, "hello.txt", FUSE_ROOT_ID, "../canary/moved")),
        Some(libc::EINVAL)
    );
    // A device node the guest made cannot be opened on the host.
    let dev = c
        .call(vufsd_bench::ops::mknod(
            FUSE_ROOT_ID,
            b"null",
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3) as u32,
            0,
        ))
        .unwrap();
    assert_eq!(
        errno_of(c.open(dev.nodeid, libc::O_RDWR)),
        Some(libc::ENXIO)
    );
    env.assert_alive("escape attempts");
    // Nothing beside the share changed.
    assert_eq!(
        std::fs::read(env.canary().join("secret")).unwrap(),
        b"CANARY"
    );
    assert_eq!(std::fs::read_dir(env.canary()).unwrap().count(), 1);
}

/// The guest looked a file and a directory up; then, on the host, each name was swapped for a
/// symlink to the canary (the race a hostile or unlucky host-side writer can set up between
/// LOOKUP and OPEN). The node ids keep meaning the inodes that were looked up: opens, writes,
/// truncation and creation go to those, inside the share, never through the new links.
#[test]
fn names_swapped_for_symlinks_after_lookup_do_not_redirect() {
    let env = start(&[]);
    let c = &env.client;
    let share = env.share();
    let f = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    let d = c.lookup(FUSE_ROOT_ID, "sub").unwrap();

    std::fs::rename(share.join("hello.txt"), share.join("hello.old")).unwrap();
    std::os::unix::fs::symlink(env.canary().join("secret"), share.join("hello.txt")).unwrap();
    std::fs::rename(share.join("sub"), share.join("sub.old")).unwrap();
    std::os::unix::fs::symlink(env.canary(), share.join("sub")).unwrap();

    let fh = c.open(f.nodeid, libc::O_RDWR).unwrap().fh;
    assert_eq!(c.read(f.nodeid, fh, 0, 64).unwrap(), b"hello");
    assert_eq!(c.write(f.nodeid, fh, 0, b"HELLO").unwrap(), 5);
    c.release(f.nodeid, fh).unwrap();
    c.truncate(f.nodeid, 4).unwrap();
    assert_eq!(std::fs::read(share.join("hello.old")).unwrap(), b"HELL");

    let (made, opened) = c.create(d.nodeid, "made", libc::O_WRONLY, 0o644).unwrap();
    let fh = opened.fh;
    assert_eq!(c.write(made.nodeid, fh, 0, b"inside").unwrap(), 6);
    c.release(made.nodeid, fh).unwrap();
    c.mkdir(d.nodeid, "dir", 0o755).unwrap();
    assert_eq!(
        std::fs::read(share.join("sub.old/made")).unwrap(),
        b"inside"
    );
    assert!(share.join("sub.old/dir").is_dir());

    // A fresh lookup sees the links as links, and they still lead nowhere.
    let l = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(errno_of(c.open(l.nodeid, libc::O_RDWR)), Some(libc::ELOOP));
    let l = c.lookup(FUSE_ROOT_ID, "sub").unwrap();
    assert_eq!(errno_of(c.lookup(l.nodeid, "secret")), Some(libc::ENOTDIR));

    // The same when the file was deleted rather than renamed: the guest's node is the deleted
    // inode (or gone), never the symlink's target.
    let g = c.lookup(FUSE_ROOT_ID, "hello.old").unwrap();
    std::fs::remove_file(share.join("hello.old")).unwrap();
    std::os::unix::fs::symlink(env.canary().join("secret"), share.join("hello.old")).unwrap();
    match c.open(g.nodeid, libc::O_RDWR) {
        Ok(o) => {
            c.write(g.nodeid, o.fh, 0, b"XXXX").unwrap();
            c.release(g.nodeid, o.fh).unwrap();
        }
        Err(e) => assert_eq!(e.errno(), Some(libc::ESTALE), "{e}"),
    }
    let _ = c.truncate(g.nodeid, 0);

    env.assert_alive("swapped names");
    assert_eq!(
        std::fs::read(env.canary().join("secret")).unwrap(),
        b"CANARY"
    );
    assert_eq!(std::fs::read_dir(env.canary()).unwrap().count(), 1);
}

/// CREATE of a name that already exists (no O_EXCL) opens what is there as OPEN would: never
/// through a symlink, never a fifo (the host open would block a worker thread until a writer
/// came), never a directory or device node. Found by the fuzz harness (fuzz/): O_CREAT|O_TRUNC on
/// `abs-escape` truncated the file it points to, outside the share.
#[test]
fn create_of_an_existing_name_never_follows_or_blocks() {
    let env = start(&[]);
    let c = &env.client;
    let trunc = libc::O_RDWR | libc::O_TRUNC;
    for name in ["abs-escape", "rel-escape"] {
        assert_eq!(
            errno_of(c.create(FUSE_ROOT_ID, name, trunc, 0o644)),
            Some(libc::ELOOP),
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read(env.canary().join("secret")).unwrap(),
        b"CANARY"
    );
    c.call(vufsd_bench::ops::mknod(
        FUSE_ROOT_ID,
        b"fifo",
        libc::S_IFIFO | 0o644,
        0,
        0,
    ))
    .unwrap();
    let t = std::time::Instant::now();
    assert_eq!(
        errno_of(c.create(FUSE_ROOT_ID, "fifo", libc::O_RDONLY, 0o644)),
        Some(libc::ENXIO)
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "CREATE on a fifo waited"
    );
    assert_eq!(
        errno_of(c.create(FUSE_ROOT_ID, "sub", libc::O_RDWR, 0o644)),
        Some(libc::EISDIR)
    );
    // A regular file is opened, and truncated, as OPEN would; O_EXCL still refuses it.
    let (e, o) = c.create(FUSE_ROOT_ID, "hello.txt", trunc, 0o644).unwrap();
    assert_eq!(e.attr.size, 0);
    assert_eq!(std::fs::read(env.share().join("hello.txt")).unwrap(), b"");
    assert_eq!(
        e.nodeid,
        c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap().nodeid
    );
    c.release(e.nodeid, o.fh).unwrap();
    assert_eq!(
        errno_of(c.create(FUSE_ROOT_ID, "hello.txt", trunc | libc::O_EXCL, 0o644)),
        Some(libc::EEXIST)
    );
    env.assert_alive("CREATE of existing names");
}

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

#[test]
fn readonly_refuses_every_modification() {
    let env = start(&["--readonly"]);
    let c = &env.client;
    let f = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    let erofs = Some(libc::EROFS);
    assert_eq!(errno_of(c.open(f.nodeid, libc::O_WRONLY)), erofs);
    assert_eq!(
        errno_of(c.open(f.nodeid, libc::O_RDONLY | libc::O_TRUNC)),
        erofs
    );
    assert_eq!(
        errno_of(c.create(FUSE_ROOT_ID, "new", libc::O_RDWR, 0o644)),
        erofs
    );
    assert_eq!(errno_of(c.mkdir(FUSE_ROOT_ID, "d", 0o755)), erofs);
    assert_eq!(errno_of(c.unlink(FUSE_ROOT_ID, "hello.txt")), erofs);
    assert_eq!(errno_of(c.rmdir(FUSE_ROOT_ID, "sub")), erofs);
    assert_eq!(
        errno_of(c.rename(FUSE_ROOT_ID, "hello.txt", FUSE_ROOT_ID, "x")),
        erofs
    );
    assert_eq!(errno_of(c.link(f.nodeid, FUSE_ROOT_ID, "l")), erofs);
    assert_eq!(errno_of(c.symlink(FUSE_ROOT_ID, "s", "t")), erofs);
    assert_eq!(errno_of(c.truncate(f.nodeid, 0)), erofs);
    let fh = c.open(f.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(c.read(f.nodeid, fh, 0, 16).unwrap(), b"hello");
    assert_eq!(
        std::fs::read(env.share().join("hello.txt")).unwrap(),
        b"hello"
    );
    assert!(!env.share().join("new").exists());
    env.assert_alive("readonly");
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

/// Out of file descriptors, the guest gets EMFILE (never a crash), and once it forgets what it
/// looked up the daemon serves normally again.
#[test]
fn fd_exhaustion_is_an_errno_and_recoverable() {
    let env = start(&[]);
    let c = &env.client;
    for i in 0..200 {
        std::fs::write(env.share().join(format!("f{i}")), b"x").unwrap();
    }
    let pid = env.daemon.pid();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Leave room for 40 more fds.
    let limit = open_fds + 40;
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success());
    let mut held = Vec::new();
    let mut emfile = 0;
    for i in 0..200 {
        match c.lookup(FUSE_ROOT_ID, &format!("f{i}")) {
            Ok(e) => held.push(e.nodeid),
            Err(e) => {
                assert_eq!(e.errno(), Some(libc::EMFILE), "{e}");
                emfile += 1;
            }
        }
    }
    assert!(
        emfile > 100,
        "the limit must have been hit ({} lookups succeeded)",
        held.len()
    );
    env.assert_alive("fd exhaustion");
    for n in &held {
        c.forget(*n, 1).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let e = c.lookup(FUSE_ROOT_ID, "f199").unwrap();
    let fh = c.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(c.read(e.nodeid, fh, 0, 8).unwrap(), b"x");
}

/// `--poll-us`: the worker keeps looking for requests after a burst; requests that come while
/// it polls (no kick) and after it gave up (a kick) are both served, and the daemon stays idle
/// afterwards.
#[test]
fn a_polling_worker_serves_requests_with_and_without_kicks() {
    let env = start(&["--poll-us", "2000"]);
    let c = &env.client;
    for i in 0..50 {
        let e = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
        assert_eq!(e.attr.size, 5);
        c.forget(e.nodeid, 1).unwrap();
        // Some requests inside the poll window, some after it.
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let q = c.device().request_queue(0).unwrap();
    // With polling, most of those 50 requests needed no kick.
    assert!(
        q.virtqueue().kicks() < 40,
        "{} kicks for 50 requests",
        q.virtqueue().kicks()
    );
    drop(q);
    // After the window, the daemon sleeps: its CPU time stops growing.
    std::thread::sleep(Duration::from_millis(20));
    let a = vufsd_bench::procstat::sample(env.daemon.pid())
        .unwrap()
        .cpu_ns;
    std::thread::sleep(Duration::from_millis(200));
    let b = vufsd_bench::procstat::sample(env.daemon.pid())
        .unwrap()
        .cpu_ns;
    assert!(
        b - a < 20_000_000,
        "an idle polling daemon used {} ms",
        (b - a) / 1_000_000
    );
    env.assert_alive("after polling");
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
