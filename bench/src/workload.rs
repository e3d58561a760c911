//! The benchmark workloads, driven through a [`Device`]: `depth` requests in flight spread
//! over `queues` request queues, one thread per queue.
//!
//! An *op* is one iteration of a workload (e.g. create + release + unlink); its latency is
//! what the histogram records. Targets come from [`crate::prepare`]'s layout and are resolved
//! through the daemon itself (lookups, readdirplus) before the clock starts.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::FuseClient;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::fuse_abi::FUSE_ROOT_ID;
use crate::fuse_req::Payload;
use crate::memory::{GuestBuf, PAGE_SIZE};
use crate::ops;
use crate::pipeline::{Pipeline, Task};
use crate::prepare::{dir1000_name, BIG_FILE_SIZE, DIR1000_FILES};
use crate::stats::{Histogram, Summary};

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// LOOKUP + GETATTR of names in `dir1000` (warm).
    LookupGetattr,
    /// OPENDIR + READDIRPLUS (4 KiB pages) until empty + RELEASEDIR of `dir1000`.
    Readdirplus,
    /// CREATE + RELEASE + UNLINK (+ FORGET) in `scratch`.
    CreateUnlink,
    /// OPEN + READ 4 KiB + RELEASE of `dir1000` files.
    OpenRead4k,
    /// 1 MiB READs walking `big1g` sequentially.
    SeqRead1m,
    /// 1 MiB WRITEs, sequential per task, to files in `scratch`.
    SeqWrite1m,
    /// 4 KiB READs at random aligned offsets of `big1g`.
    RandRead4k,
    /// LOOKUP + GETATTR + OPEN + READ + RELEASE of every file under `store`.
    StoreWalk,
    /// All of the above but the big sequential transfers, interleaved: lookups, opens and
    /// reads, creates with a small write, mkdir/rmdir, listings, with FORGETs as Linux sends
    /// them. For soak runs (`soak`), not in `all`.
    Mixed,
}

impl Workload {
    /// Every workload, in the order `all` runs them.
    pub const ALL: [Workload; 8] = [
        Workload::LookupGetattr,
        Workload::Readdirplus,
        Workload::CreateUnlink,
        Workload::OpenRead4k,
        Workload::SeqRead1m,
        Workload::SeqWrite1m,
        Workload::RandRead4k,
        Workload::StoreWalk,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::LookupGetattr => "lookup-getattr",
            Workload::Readdirplus => "readdirplus",
            Workload::CreateUnlink => "create-unlink",
            Workload::OpenRead4k => "open-read-4k",
            Workload::SeqRead1m => "seq-read-1m",
            Workload::SeqWrite1m => "seq-write-1m",
            Workload::RandRead4k => "rand-read-4k",
            Workload::StoreWalk => "store-walk",
            Workload::Mixed => "mixed",
        }
    }

    /// Parses a CLI name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([Workload::Mixed])
            .find(|w| w.name() == s)
    }
}

/// How long / how much to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Which workload.
    pub workload: Workload,
    /// Requests (tasks) in flight in total.
    pub depth: usize,
    /// Request queues (one thread each).
    pub queues: u16,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many ops.
    pub ops: Option<u64>,
}

/// Shared stop condition: a deadline, an op budget, and an abort flag.
#[derive(Debug)]
pub struct Budget {
    deadline: Option<Instant>,
    remaining: Option<AtomicU64>,
    stop: AtomicBool,
}

impl Budget {
    /// Starts counting now.
    pub fn new(duration: Option<Duration>, ops: Option<u64>) -> Self {
        Budget {
            deadline: duration.map(|d| Instant::now() + d),
            remaining: ops.map(AtomicU64::new),
            stop: AtomicBool::new(false),
        }
    }

    /// Claims one op; false once the budget is spent or aborted.
    pub fn take(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        match &self.remaining {
            Some(r) => r
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            None => true,
        }
    }

    /// Makes every further `take` fail.
    pub fn abort(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct StoreFile {
    parent: u64,
    name: Vec<u8>,
    size: u64,
}

/// Targets resolved before the clock starts.
#[derive(Default)]
struct Targets {
    dir1000: u64,
    files: Vec<u64>,
    big: u64,
    scratch: u64,
    store: Vec<StoreFile>,
    /// Lookup references taken during setup, to FORGET afterwards.
    refs: HashMap<u64, u64>,
}

impl Targets {
    fn lookup(&mut self, c: &FuseClient, parent: u64, name: &str) -> Result<u64> {
        let e = c.lookup(parent, name)?;
        *self.refs.entry(e.nodeid).or_default() += 1;
        Ok(e.nodeid)
    }
}

struct Shared<'a> {
    w: Workload,
    t: &'a Targets,
    budget: &'a Budget,
    counter: AtomicU64,
    write_span: u64,
}

/// Per-thread accumulators.
#[derive(Default)]
struct Local {
    hist: RefCell<Histogram>,
    bytes: Cell<u64>,
    refs: RefCell<HashMap<u64, u64>>,
    loop_end: Cell<Option<Instant>>,
}

impl Local {
    fn took_ref(&self, nodeid: u64) {
        *self.refs.borrow_mut().entry(nodeid).or_default() += 1;
    }
}

#[derive(Default)]
struct TaskState {
    id: u64,
    fh: u64,
    node: u64,
    offset: u64,
    seq: u64,
    rng: u64,
    buf: Option<GuestBuf>,
    name: String,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Resolves `dir` (relative to the shared root) and what `w` needs under it.
fn setup(c: &FuseClient, dir: &str, w: Workload) -> Result<Targets> {
    let mut t = Targets::default();
    let mut base = FUSE_ROOT_ID;
    for comp in dir.split('/').filter(|s| !s.is_empty()) {
        base = t.lookup(c, base, comp)?;
    }
    let need_dir1000 = matches!(
        w,
        Workload::LookupGetattr | Workload::Readdirplus | Workload::OpenRead4k | Workload::Mixed
    );
    if need_dir1000 {
        t.dir1000 = t.lookup(c, base, "dir1000")?;
    }
    if matches!(w, Workload::OpenRead4k | Workload::Mixed) {
        for i in 0..DIR1000_FILES {
            let n = t.lookup(c, t.dir1000, &dir1000_name(i))?;
            t.files.push(n);
        }
    }
    if matches!(w, Workload::SeqRead1m | Workload::RandRead4k) {
        t.big = t.lookup(c, base, "big1g")?;
        let size = c.getattr(t.big)?.attr.size;
        if size < BIG_FILE_SIZE {
            return Err(Error::Config(format!(
                "big1g is {size} bytes; run `vufsd-bench prepare` on the shared directory"
            )));
        }
    }
    if matches!(
        w,
        Workload::CreateUnlink | Workload::SeqWrite1m | Workload::Mixed
    ) {
        t.scratch = t.lookup(c, base, "scratch")?;
    }
    if w == Workload::StoreWalk {
        let store = t.lookup(c, base, "store")?;
        walk(c, store, &mut t)?;
        if t.store.is_empty() {
            return Err(Error::Config("store/ has no files".into()));
        }
    }
    Ok(t)
}

/// Recursive OPENDIR/READDIRPLUS walk collecting regular files; keeps the READDIRPLUS
/// lookup references (directories must stay valid; files are forgotten at the end).
fn walk(c: &FuseClient, dir: u64, t: &mut Targets) -> Result<()> {
    let fh = c.opendir(dir)?.fh;
    let mut off = 0;
    let mut subdirs = Vec::new();
    loop {
        let ents = c.readdirplus(dir, fh, off)?;
        let Some(last) = ents.last() else { break };
        off = last.off;
        for e in ents {
            let Some(en) = e.entry.filter(|en| en.nodeid != 0) else {
                continue;
            };
            *t.refs.entry(en.nodeid).or_default() += 1;
            if e.name == b"." || e.name == b".." {
                continue;
            }
            match en.attr.mode & libc::S_IFMT {
                libc::S_IFDIR => subdirs.push(en.nodeid),
                libc::S_IFREG => t.store.push(StoreFile {
                    parent: dir,
                    name: e.name,
                    size: en.attr.size,
                }),
                _ => {}
            }
        }
    }
    c.releasedir(dir, fh)?;
    for d in subdirs {
        walk(c, d, t)?;
    }
    Ok(())
}

fn expect_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "{what}: got {got} bytes, expected {want}"
        )))
    }
}

async fn task_setup(p: &Pipeline<'_>, sh: &Shared<'_>, st: &mut TaskState) -> Result<()> {
    match sh.w {
        Workload::SeqRead1m | Workload::RandRead4k => {
            st.node = sh.t.big;
            st.fh = p
                .call(ops::open_file(sh.t.big, libc::O_RDONLY as u32))
                .await?
                .fh;
        }
        Workload::SeqWrite1m => {
            st.name = format!("sw-{}-{}", std::process::id(), st.id);
            let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32;
            let (e, o) = p
                .call(ops::create(
                    sh.t.scratch,
                    st.name.as_bytes(),
                    flags,
                    0o644,
                    0o022,
                ))
                .await?;
            st.node = e.nodeid;
            st.fh = o.fh;
            let mem = p.device().memory();
            let buf = mem
                .alloc(1 << 20, PAGE_SIZE)
                .ok_or_else(|| Error::Config("guest memory too small for write buffers".into()))?;
            mem.fill(buf.gpa(), 1 << 20, 0x5a)?;
            st.buf = Some(buf);
        }
        _ => {}
    }
    Ok(())
}

async fn task_teardown(
    p: &Pipeline<'_>,
    sh: &Shared<'_>,
    l: &Local,
    st: &mut TaskState,
) -> Result<()> {
    match sh.w {
        Workload::SeqRead1m | Workload::RandRead4k => {
            p.call(ops::release(st.node, st.fh, libc::O_RDONLY as u32))
                .await?;
        }
        Workload::SeqWrite1m => {
            p.call(ops::release(st.node, st.fh, libc::O_WRONLY as u32))
                .await?;
            p.call(ops::unlink(sh.t.scratch, st.name.as_bytes()))
                .await?;
            l.took_ref(st.node);
        }
        _ => {}
    }
    Ok(())
}

/// One op of [`Workload::Mixed`]: what `k` picks, out of 16.
async fn mixed_op(
    p: &Pipeline<'_>,
    sh: &Shared<'_>,
    l: &Local,
    st: &mut TaskState,
    k: u64,
) -> Result<u64> {
    let as_ = |w| Shared {
        w,
        t: sh.t,
        budget: sh.budget,
        counter: AtomicU64::new(k),
        write_span: sh.write_span,
    };
    match k % 16 {
        0..=5 => Box::pin(one_op(p, &as_(Workload::LookupGetattr), l, st)).await,
        6..=9 => Box::pin(one_op(p, &as_(Workload::OpenRead4k), l, st)).await,
        10 | 11 => Box::pin(one_op(p, &as_(Workload::CreateUnlink), l, st)).await,
        12 => Box::pin(one_op(p, &as_(Workload::Readdirplus), l, st)).await,
        13 => {
            let name = format!("md-{}-{}-{}", std::process::id(), st.id, st.seq);
            st.seq += 1;
            let e = p
                .call(ops::mkdir(sh.t.scratch, name.as_bytes(), 0o755, 0o022))
                .await?;
            p.call(ops::getattr(e.nodeid, None)).await?;
            p.call(ops::rmdir(sh.t.scratch, name.as_bytes())).await?;
            p.forget(e.nodeid, 1)?;
            Ok(0)
        }
        _ => {
            let name = format!("cw-{}-{}-{}", std::process::id(), st.id, st.seq);
            st.seq += 1;
            let flags = (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32;
            let (e, o) = p
                .call(ops::create(
                    sh.t.scratch,
                    name.as_bytes(),
                    flags,
                    0o644,
                    0o022,
                ))
                .await?;
            let data = vec![0x5a; 4096];
            let n = p
                .call(ops::write(e.nodeid, o.fh, 0, Payload::Bytes(data)))
                .await?;
            expect_len("mixed write", n as usize, 4096)?;
            p.call(ops::flush(e.nodeid, o.fh, st.id)).await?;
            p.call(ops::release(e.nodeid, o.fh, libc::O_RDWR as u32))
                .await?;
            p.call(ops::unlink(sh.t.scratch, name.as_bytes())).await?;
            p.forget(e.nodeid, 1)?;
            Ok(4096)
        }
    }
}

/// One op; returns payload bytes moved.
async fn one_op(p: &Pipeline<'_>, sh: &Shared<'_>, l: &Local, st: &mut TaskState) -> Result<u64> {
    let k = sh.counter.fetch_add(1, Ordering::Relaxed);
    match sh.w {
        Workload::Mixed => mixed_op(p, sh, l, st, k).await,
        Workload::LookupGetattr => {
            let name = dir1000_name((k % DIR1000_FILES as u64) as usize);
            let e = p.call(ops::lookup(sh.t.dir1000, name.as_bytes())).await?;
            l.took_ref(e.nodeid);
            p.call(ops::getattr(e.nodeid, None)).await?;
            Ok(0)
        }
        Workload::Readdirplus => {
            let dir = sh.t.dir1000;
            let fh = p.call(ops::opendir(dir, libc::O_RDONLY as u32)).await?.fh;
            let mut off = 0;
            let mut n = 0;
            loop {
                let ents = p
                    .call(ops::readdirplus(dir, fh, off, PAGE_SIZE as u32))
                    .await?;
                let Some(last) = ents.last() else { break };
                off = last.off;
                for e in &ents {
                    if let Some(en) = e.entry.filter(|en| en.nodeid != 0) {
                        l.took_ref(en.nodeid);
                    }
                }
                n += ents.len();
            }
            p.call(ops::releasedir(dir, fh)).await?;
            if n < DIR1000_FILES {
                return Err(Error::Protocol(format!("dir1000 listed {n} entries")));
            }
            Ok(0)
        }
        Workload::CreateUnlink => {
            let name = format!("cu-{}-{}-{}", std::process::id(), st.id, st.seq);
            st.seq += 1;
            let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
            let (e, o) = p
                .call(ops::create(
                    sh.t.scratch,
                    name.as_bytes(),
                    flags,
                    0o644,
                    0o022,
                ))
                .await?;
            p.call(ops::release(e.nodeid, o.fh, libc::O_WRONLY as u32))
                .await?;
            p.call(ops::unlink(sh.t.scratch, name.as_bytes())).await?;
            // The dentry goes away with the unlink; Linux then forgets the inode.
            p.forget(e.nodeid, 1)?;
            Ok(0)
        }
        Workload::OpenRead4k => {
            let node = sh.t.files[(k % sh.t.files.len() as u64) as usize];
            let fh = p
                .call(ops::open_file(node, libc::O_RDONLY as u32))
                .await?
                .fh;
            let n = p.call(ops::read_discard(node, fh, 0, 4096)).await?;
            p.call(ops::release(node, fh, libc::O_RDONLY as u32))
                .await?;
            expect_len("open-read-4k read", n, 4096)?;
            Ok(n as u64)
        }
        Workload::SeqRead1m => {
            let off = (k << 20) % BIG_FILE_SIZE;
            let n = p
                .call(ops::read_discard(st.node, st.fh, off, 1 << 20))
                .await?;
            expect_len("seq-read-1m read", n, 1 << 20)?;
            Ok(n as u64)
        }
        Workload::RandRead4k => {
            let off = (xorshift(&mut st.rng) % (BIG_FILE_SIZE / 4096)) * 4096;
            let n = p.call(ops::read_discard(st.node, st.fh, off, 4096)).await?;
            expect_len("rand-read-4k read", n, 4096)?;
            Ok(n as u64)
        }
        Workload::SeqWrite1m => {
            let gpa = st.buf.as_ref().map(|b| b.gpa()).unwrap_or_default();
            let off = st.offset;
            st.offset = (st.offset + (1 << 20)) % sh.write_span;
            let n = p
                .call(ops::write(
                    st.node,
                    st.fh,
                    off,
                    Payload::Guest { gpa, len: 1 << 20 },
                ))
                .await?;
            expect_len("seq-write-1m write", n as usize, 1 << 20)?;
            Ok(u64::from(n))
        }
        Workload::StoreWalk => {
            let f = &sh.t.store[(k % sh.t.store.len() as u64) as usize];
            let e = p.call(ops::lookup(f.parent, &f.name)).await?;
            l.took_ref(e.nodeid);
            p.call(ops::getattr(e.nodeid, None)).await?;
            let fh = p
                .call(ops::open_file(e.nodeid, libc::O_RDONLY as u32))
                .await?
                .fh;
            // The page cache reads whole pages, up to the readahead window.
            let want = f.size.div_ceil(4096).clamp(1, 32) as u32 * 4096;
            let n = p.call(ops::read_discard(e.nodeid, fh, 0, want)).await?;
            p.call(ops::release(e.nodeid, fh, libc::O_RDONLY as u32))
                .await?;
            expect_len("store-walk read", n, f.size.min(u64::from(want)) as usize)?;
            Ok(n as u64)
        }
    }
}

async fn task(p: &Pipeline<'_>, sh: &Shared<'_>, l: &Local, id: u64) -> Result<()> {
    let mut st = TaskState {
        id,
        rng: 0x2545_f491_4f6c_dd1d ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ..Default::default()
    };
    task_setup(p, sh, &mut st).await?;
    while sh.budget.take() {
        let t0 = Instant::now();
        let r = one_op(p, sh, l, &mut st).await;
        let bytes = r.inspect_err(|_| sh.budget.abort())?;
        l.hist.borrow_mut().record(t0.elapsed());
        l.bytes.set(l.bytes.get() + bytes);
    }
    let now = Instant::now();
    l.loop_end
        .set(Some(l.loop_end.get().map_or(now, |e| e.max(now))));
    task_teardown(p, sh, l, &mut st).await
}

struct ThreadResult {
    hist: Histogram,
    bytes: u64,
    requests: u64,
    loop_end: Option<Instant>,
    /// Lookup references the tasks took, forgotten after [`Phase::Peak`].
    refs: HashMap<u64, u64>,
}

fn run_queue(
    dev: &Device,
    q: u16,
    depth: usize,
    first_id: u64,
    sh: &Shared<'_>,
) -> Result<ThreadResult> {
    let pipe = Pipeline::new(dev, q)?;
    let local = Local::default();
    let tasks: Vec<Task<'_>> = (0..depth as u64)
        .map(|i| Box::pin(task(&pipe, sh, &local, first_id + i)) as Task<'_>)
        .collect();
    let res = pipe.run(tasks);
    if res.is_err() {
        sh.budget.abort();
    }
    res?;
    Ok(ThreadResult {
        hist: local.hist.take(),
        bytes: local.bytes.get(),
        requests: pipe.requests(),
        loop_end: local.loop_end.get(),
        refs: local.refs.take(),
    })
}

/// Points of a run at which [`run_observed`] calls its observer, e.g. to read the daemon's
/// resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Targets are resolved and the clock is about to start.
    Start,
    /// The measured phase is over and no FORGET has been sent: the daemon still holds every
    /// inode the run looked up (as it would under a guest whose dentry cache kept them).
    Peak,
    /// Every reference the run took has been forgotten, and the daemon has taken back each
    /// FORGET's descriptors.
    Forgotten,
}

/// Runs one workload on an initialized device (FUSE_INIT done) against the tree prepared
/// under `dir` (relative to the shared root; "" for the root itself).
pub fn run(dev: &Arc<Device>, dir: &str, cfg: &RunConfig) -> Result<Summary> {
    run_observed(dev, dir, cfg, &mut |_| {})
}

/// [`run`], calling `observe` at each [`Phase`].
pub fn run_observed(
    dev: &Arc<Device>,
    dir: &str,
    cfg: &RunConfig,
    observe: &mut dyn FnMut(Phase),
) -> Result<Summary> {
    if cfg.depth == 0 || cfg.queues == 0 {
        return Err(Error::Config("depth and queues must be at least 1".into()));
    }
    if cfg.queues > dev.request_queues() {
        return Err(Error::Config(format!(
            "{} queues asked, the device was started with {}",
            cfg.queues,
            dev.request_queues()
        )));
    }
    if cfg.depth < usize::from(cfg.queues) {
        return Err(Error::Config(
            "depth must be at least the number of queues".into(),
        ));
    }
    // Setup borrows queue 0 through a blocking client; workers take the queues afterwards.
    let setup_client = FuseClient::new(Arc::clone(dev));
    let targets = setup(&setup_client, dir, cfg.workload)?;
    let budget = Budget::new(cfg.duration, cfg.ops);
    let sh = Shared {
        w: cfg.workload,
        t: &targets,
        budget: &budget,
        counter: AtomicU64::new(0),
        write_span: ((BIG_FILE_SIZE / cfg.depth as u64) & !((1 << 20) - 1)).max(16 << 20),
    };
    observe(Phase::Start);
    let start = Instant::now();
    let queues = usize::from(cfg.queues);
    let results: Vec<Result<ThreadResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..queues)
            .map(|q| {
                let depth = cfg.depth / queues + usize::from(q < cfg.depth % queues);
                let first = (q * cfg.depth) as u64;
                let (sh, dev) = (&sh, &**dev);
                s.spawn(move || run_queue(dev, q as u16, depth, first, sh))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Config("worker thread panicked".into())))
            })
            .collect()
    });
    let mut summary = Summary {
        workload: cfg.workload.name().to_string(),
        mode: "daemon".into(),
        depth: cfg.depth,
        queues,
        elapsed: Duration::ZERO,
        ops: Histogram::default(),
        requests: 0,
        bytes: 0,
    };
    let mut end = start;
    let mut refs = targets.refs.clone();
    for r in results {
        let r = r?;
        summary.ops.merge(&r.hist);
        summary.bytes += r.bytes;
        summary.requests += r.requests;
        end = end.max(r.loop_end.unwrap_or(start));
        for (node, n) in r.refs {
            *refs.entry(node).or_default() += n;
        }
    }
    summary.elapsed = end - start;
    observe(Phase::Peak);
    // Round trips on the high-priority queue: when they return, the daemon has seen them all.
    for (&node, &n) in &refs {
        setup_client.forget(node, n)?;
    }
    observe(Phase::Forgotten);
    Ok(summary)
}
