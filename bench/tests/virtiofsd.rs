//! End-to-end: drive upstream virtiofsd through the frontend and check the host side.
//!
//! Needs virtiofsd (`cargo install virtiofsd --version 1.14.0`, found via $VIRTIOFSD,
//! ~/.cargo/bin or $PATH). Without it these tests FAIL with instructions rather than pass
//! silently; set VUFSD_BENCH_SKIP_VIRTIOFSD=1 to skip them explicitly (they then print a loud
//! notice).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vufsd_bench::fuse_abi::{init_flags, FUSE_ROOT_ID};
use vufsd_bench::queue::{Chain, Segment};
use vufsd_bench::virtqueue::ChainMode;
use vufsd_bench::{
    find_virtiofsd, DaemonProcess, Device, DeviceConfig, Error, FuseClient, Pipeline, TempDir,
};

struct Env {
    // Field order matters: the client drops before the daemon, the daemon before the dir.
    client: FuseClient,
    daemon: DaemonProcess,
    dir: TempDir,
}

fn virtiofsd() -> Option<PathBuf> {
    if std::env::var_os("VUFSD_BENCH_SKIP_VIRTIOFSD").is_some() {
        eprintln!(
            "\n!!!!! SKIPPED: VUFSD_BENCH_SKIP_VIRTIOFSD is set; the virtiofsd end-to-end tests did not run !!!!!\n"
        );
        return None;
    }
    match find_virtiofsd() {
        Some(p) => Some(p),
        None => panic!(
            "virtiofsd not found ($VIRTIOFSD, ~/.cargo/bin/virtiofsd, $PATH). Install it with \
             `apt-get install libseccomp-dev libcap-ng-dev && cargo install virtiofsd --version 1.14.0`, \
             or set VUFSD_BENCH_SKIP_VIRTIOFSD=1 to skip these tests on purpose."
        ),
    }
}

fn start(cfg: impl FnOnce(&mut DeviceConfig)) -> Option<Env> {
    let bin = virtiofsd()?;
    let dir = TempDir::new("vufsd-bench-e2e").unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), b"hello, virtio-fs\n").unwrap();
    let sock = dir.path().join("vfsd.sock");
    let daemon = DaemonProcess::virtiofsd(&bin, &shared, &sock, &[]).unwrap();
    let mut config = DeviceConfig::new(&sock);
    config.memory_size = 64 << 20;
    config.timeout = Duration::from_secs(5);
    cfg(&mut config);
    let dev = Device::connect(config)
        .unwrap_or_else(|e| panic!("handshake failed: {e}\ndaemon log:\n{}", daemon.log()));
    let client = FuseClient::new(Arc::new(dev));
    Some(Env {
        client,
        daemon,
        dir,
    })
}

#[test]
fn init_lookup_create_write_read_unlink() {
    let Some(mut env) = start(|_| {}) else { return };
    let shared = env.dir.path().join("shared");
    let c = &env.client;
    let n = *c.device().negotiated();
    assert!(
        n.event_idx() && n.indirect_desc(),
        "virtiofsd offers both: {n:?}"
    );
    assert_eq!(n.queue_num, Some(2));

    let init = c.init().unwrap();
    assert_eq!(init.major, 7);
    assert!(init.minor >= 31);
    assert!(init.max_write >= 1 << 20, "{init:?}");

    // lookup an existing file: attributes must match the host's.
    let e = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();
    let meta = std::fs::metadata(shared.join("hello.txt")).unwrap();
    assert_eq!(e.attr.size, meta.len());
    assert_eq!(e.attr.ino, meta.ino());
    assert_eq!(c.getattr(e.nodeid).unwrap().attr.mode, meta.mode());
    assert_eq!(
        c.lookup(FUSE_ROOT_ID, "missing").unwrap_err().errno(),
        Some(libc::ENOENT)
    );

    // create + write, checked on the host.
    let (ne, fh) = c
        .create(
            FUSE_ROOT_ID,
            "new.bin",
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o640,
        )
        .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(
        c.write(ne.nodeid, fh.fh, 0, &data).unwrap(),
        data.len() as u32
    );
    c.flush(ne.nodeid, fh.fh).unwrap();
    let host = std::fs::read(shared.join("new.bin")).unwrap();
    assert_eq!(host, data);
    assert_eq!(
        std::fs::metadata(shared.join("new.bin")).unwrap().mode() & 0o777,
        0o640
    );

    // read it back (a 128 KiB read spans 32 page descriptors).
    let back = c.read(ne.nodeid, fh.fh, 4096, 128 * 1024).unwrap();
    assert_eq!(back, &data[4096..4096 + 128 * 1024]);
    // short read at EOF
    let tail = c.read(ne.nodeid, fh.fh, 299_990, 4096).unwrap();
    assert_eq!(tail, &data[299_990..]);
    c.release(ne.nodeid, fh.fh).unwrap();

    // truncate via setattr
    assert_eq!(c.truncate(ne.nodeid, 10).unwrap().attr.size, 10);
    assert_eq!(std::fs::metadata(shared.join("new.bin")).unwrap().len(), 10);

    // mkdir, readdirplus
    let d = c.mkdir(FUSE_ROOT_ID, "sub", 0o755).unwrap();
    assert!(shared.join("sub").is_dir());
    let names: Vec<String> = c
        .list_dir(FUSE_ROOT_ID)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    for want in ["hello.txt", "new.bin", "sub"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert!(c.statfs(FUSE_ROOT_ID).unwrap().bsize > 0);

    // unlink, rmdir, forget
    c.unlink(FUSE_ROOT_ID, "new.bin").unwrap();
    assert!(!shared.join("new.bin").exists());
    c.rmdir(FUSE_ROOT_ID, "sub").unwrap();
    assert!(!shared.join("sub").exists());
    c.forget(ne.nodeid, 1).unwrap();
    c.forget(d.nodeid, 1).unwrap();
    c.forget(e.nodeid, 1).unwrap();

    assert!(c.is_alive());
    assert!(env.daemon.is_running());
    c.device().ping().unwrap();
}

#[test]
fn pipelined_requests_and_direct_descriptors() {
    // No indirect descriptors, no EVENT_IDX, SET_MEM_TABLE instead of ADD_MEM_REG: the other
    // paths through the handshake and the ring.
    let Some(env) = start(|c| {
        c.features.indirect_desc = false;
        c.features.event_idx = false;
        c.features.mem_slots = false;
        c.queue_size = 512;
    }) else {
        return;
    };
    let c = &env.client;
    let n = *c.device().negotiated();
    assert!(!n.event_idx() && !n.indirect_desc());
    assert_eq!(n.max_mem_slots, None);
    c.init().unwrap();
    let e = c.lookup(FUSE_ROOT_ID, "hello.txt").unwrap();

    let dev = c.device().clone();
    let pipe = Pipeline::new(&dev, 0).unwrap();
    let done = std::cell::Cell::new(0);
    let tasks: Vec<vufsd_bench::pipeline::Task<'_>> = (0..32)
        .map(|_| {
            let (pipe, done) = (&pipe, &done);
            Box::pin(async move {
                for _ in 0..20 {
                    let a = pipe.call(vufsd_bench::ops::getattr(e.nodeid, None)).await?;
                    assert_eq!(a.attr.size, 17);
                    done.set(done.get() + 1);
                }
                Ok(())
            }) as vufsd_bench::pipeline::Task<'_>
        })
        .collect();
    pipe.run(tasks).unwrap();
    assert_eq!(done.get(), 640);
    drop(pipe);
    assert!(c.is_alive());

    // QEMU-style stop: the daemon's next-avail index per queue must equal what we published.
    let published: Vec<u64> = (0..2).map(|i| dev.queue(i).unwrap().submitted()).collect();
    let bases = dev.stop().unwrap();
    assert_eq!(bases.len(), 2);
    for (b, p) in bases.iter().zip(&published) {
        assert_eq!(u64::from(*b), p % 65536, "{bases:?} vs {published:?}");
    }
}

#[test]
fn raw_chains_and_misbehaving_requests() {
    let Some(mut env) = start(|_| {}) else { return };
    let c = &env.client;
    c.init_with(vufsd_bench::InitOptions {
        flags: init_flags::LINUX_DEFAULT,
        ..Default::default()
    })
    .unwrap();

    // Unknown opcode: a well-formed chain gets ENOSYS.
    let mut hdr = vufsd_bench::fuse_abi::InHeader {
        len: 40,
        opcode: 4242,
        unique: 1000,
        nodeid: 1,
        ..Default::default()
    };
    let chain = Chain::new(vec![
        Segment::In(vufsd_bench::fuse_abi::to_bytes(&hdr)),
        Segment::Out(16),
    ]);
    let done = c.raw(1, &chain).unwrap();
    assert_eq!(done.used_len, 16);
    let oh: vufsd_bench::fuse_abi::OutHeader =
        vufsd_bench::fuse_abi::read_pod(&done.written).unwrap();
    assert_eq!(oh.error, -libc::ENOSYS);
    assert_eq!(oh.unique, 1000);

    // The same request through direct descriptors.
    let mut direct = chain.clone();
    direct.mode = Some(ChainMode::Direct);
    assert_eq!(c.raw(1, &direct).unwrap().used_len, 16);
    assert!(c.is_alive());

    // virtiofsd exits on a request whose descriptors point outside guest memory: the
    // frontend must report that as an error (timeout or disconnect), not hang or panic.
    hdr.opcode = vufsd_bench::fuse_abi::opcode::GETATTR;
    let bogus = Chain::new(vec![
        Segment::In(vufsd_bench::fuse_abi::to_bytes(&hdr)),
        Segment::InAt {
            addr: 0xdead_0000_0000,
            len: 16,
        },
        Segment::Out(16 + 104),
    ]);
    let r = c.raw(1, &bogus);
    // virtiofsd 1.14 treats this as fatal and exits: the frontend sees the socket close.
    assert!(matches!(r, Err(Error::Disconnected)), "{r:?}");
    assert!(!c.is_alive());
    let st = env.daemon.wait_exit(Duration::from_secs(5));
    assert!(
        st.is_some_and(|s| !s.success()),
        "{st:?}\n{}",
        env.daemon.log()
    );
}

#[test]
fn stopped_daemon_times_out_then_recovers() {
    let Some(mut env) = start(|c| c.timeout = Duration::from_millis(700)) else {
        return;
    };
    let c = &env.client;
    c.init().unwrap();
    env.daemon.freeze(Duration::from_secs(10)).unwrap();
    let t0 = std::time::Instant::now();
    let r = c.getattr(FUSE_ROOT_ID);
    let waited = t0.elapsed();
    env.daemon.thaw().unwrap();
    assert!(r.as_ref().is_err_and(|e| e.is_timeout()), "{r:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // The abandoned request completes after SIGCONT and is discarded; the queue works on. (A
    // loaded machine may take longer than the short timeout to resume the daemon: retry.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let attr = loop {
        match c.getattr(FUSE_ROOT_ID) {
            Ok(a) => break a,
            Err(e) if e.is_timeout() && std::time::Instant::now() < deadline => continue,
            Err(e) => panic!("the queue did not recover: {e}"),
        }
    };
    assert_eq!(
        attr.attr.ino,
        std::fs::metadata(env.dir.path().join("shared"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    );
    assert!(env.daemon.is_running());

    // A stopped daemon also stalls the control plane: the watchdog turns that into a
    // timeout instead of a hang (and the connection is dead afterwards).
    env.daemon.freeze(Duration::from_secs(10)).unwrap();
    let r = c.device().ping();
    env.daemon.thaw().unwrap();
    assert!(r.as_ref().is_err_and(|e| e.is_timeout()), "{r:?}");
}

/// Malformed chains: whatever virtiofsd does (answer, drop, exit), the frontend must come
/// back with a completion or an error within the timeout. Prints what happened per case.
#[test]
fn malformed_chains_never_hang_the_frontend() {
    // The guest memory is 64 MiB (see `start`).
    let cases = vufsd_bench::malformed::chains(64 << 20);
    let mut report = Vec::new();
    for (name, chain) in cases
        .iter()
        .map(|(n, c)| (*n, Some(c)))
        .chain([("direct descriptor loop", None)])
    {
        let Some(mut env) = start(|c| c.timeout = Duration::from_secs(2)) else {
            return;
        };
        env.client.init().unwrap();
        let t0 = std::time::Instant::now();
        let outcome = match chain {
            Some(ch) => {
                let mut ch = ch.clone();
                ch.mode = Some(ChainMode::Direct);
                env.client.raw(1, &ch).map(|c| c.used_len)
            }
            None => {
                let (_buf, descs) =
                    vufsd_bench::malformed::looping_chain(env.client.device().memory()).unwrap();
                env.client
                    .raw_descs(1, &descs, ChainMode::Direct)
                    .map(|c| c.used_len)
            }
        };
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(4), "{name}: took {took:?}");
        let alive = env.client.is_alive();
        let exited = env
            .daemon
            .wait_exit(Duration::from_millis(if alive { 0 } else { 2000 }));
        report.push(format!(
            "{name}: {outcome:?}; daemon {}",
            match (alive, exited) {
                (true, _) => "still serving".to_string(),
                (false, Some(st)) => format!("exited ({st})"),
                (false, None) => "stopped answering".to_string(),
            }
        ));
    }
    eprintln!("virtiofsd vs malformed chains:\n  {}", report.join("\n  "));
}
