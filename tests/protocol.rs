//! Hostile input at the protocol level, no guest needed: vufsd-bench plays a misbehaving guest
//! driver against the vufsd built here. Every case must end in an error reply or a dropped
//! request, never a crash, a hang, or a touched file outside the share.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use vufsd_bench::fuse_abi::{opcode, to_bytes, FUSE_ROOT_ID};
use vufsd_bench::malformed::hdr;
use vufsd_bench::{Chain, ChainMode, FuseRequest, Segment};

mod protocol_env;
use protocol_env::{errno_of, raw_errno, start, MEM};

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
