//! The floor: each workload's host system calls done directly on the prepared tree, with no
//! daemon, by `depth` threads. What a daemon adds on top of this is its overhead.
//!
//! The calls mirror what a passthrough daemon does per request: `openat(O_PATH)` + `statx`
//! for a lookup, `openat` + `pread` + `close` for open/read/release, `getdents64` plus a
//! lookup per entry for READDIRPLUS, `openat(O_CREAT)` + `close` + `unlinkat`.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::prepare::{dir1000_name, BIG_FILE_SIZE, DIR1000_FILES};
use crate::stats::{Histogram, Summary};
use crate::workload::{Budget, Phase, RunConfig, Workload};

fn cstr(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| Error::Config("name contains NUL".into()))
}

/// `openat(2)` relative to `dir`.
fn openat(dir: BorrowedFd<'_>, name: &CString, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: name is NUL-terminated and outlives the call; dir is an open fd.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `unlinkat(2)` relative to `dir`.
fn unlinkat(dir: BorrowedFd<'_>, name: &CString) -> std::io::Result<()> {
    // SAFETY: name is NUL-terminated and outlives the call; dir is an open fd.
    let rc = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A lookup as a passthrough daemon does it: `openat(O_PATH)` then `statx` on the fd.
fn lookup(dir: BorrowedFd<'_>, name: &CString) -> std::io::Result<()> {
    let fd = openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    File::from(fd).metadata().map(|_| ())
}

fn open_dir(p: &Path) -> Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| Error::io(format!("open {}", p.display()), e))
}

struct StoreFile {
    dir: usize,
    name: CString,
}

struct Floor {
    w: Workload,
    dir1000_path: PathBuf,
    dir1000: Option<OwnedFd>,
    names: Vec<CString>,
    scratch: Option<OwnedFd>,
    big: Option<File>,
    store_dirs: Vec<OwnedFd>,
    store: Vec<StoreFile>,
    counter: AtomicU64,
    write_span: u64,
}

fn collect_store(dir: &Path, f: &mut Floor) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("readdir {}", dir.display()), e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let mut files = Vec::new();
    for e in entries {
        let ft = e.file_type().map_err(|e| Error::io("stat", e))?;
        if ft.is_dir() {
            collect_store(&e.path(), f)?;
        } else if ft.is_file() {
            files.push(cstr(e.file_name().as_bytes())?);
        }
    }
    if !files.is_empty() {
        f.store_dirs.push(open_dir(dir)?);
        let d = f.store_dirs.len() - 1;
        f.store
            .extend(files.into_iter().map(|name| StoreFile { dir: d, name }));
    }
    Ok(())
}

impl Floor {
    fn new(w: Workload, root: &Path, depth: usize) -> Result<Self> {
        let mut f = Floor {
            w,
            dir1000_path: root.join("dir1000"),
            dir1000: None,
            names: (0..DIR1000_FILES)
                .map(|i| cstr(dir1000_name(i).as_bytes()))
                .collect::<Result<_>>()?,
            scratch: None,
            big: None,
            store_dirs: Vec::new(),
            store: Vec::new(),
            counter: AtomicU64::new(0),
            write_span: ((BIG_FILE_SIZE / depth as u64) & !((1 << 20) - 1)).max(16 << 20),
        };
        match w {
            Workload::LookupGetattr | Workload::Readdirplus | Workload::OpenRead4k => {
                f.dir1000 = Some(open_dir(&root.join("dir1000"))?);
            }
            Workload::CreateUnlink | Workload::SeqWrite1m => {
                f.scratch = Some(open_dir(&root.join("scratch"))?);
            }
            Workload::SeqRead1m | Workload::RandRead4k => {
                let p = root.join("big1g");
                f.big = Some(
                    File::open(&p).map_err(|e| Error::io(format!("open {}", p.display()), e))?,
                );
            }
            Workload::StoreWalk => {
                collect_store(&root.join("store"), &mut f)?;
                if f.store.is_empty() {
                    return Err(Error::Config("store/ has no files".into()));
                }
            }
            Workload::Mixed => {
                return Err(Error::Config(
                    "the mixed workload is for soak runs through a daemon; it has no floor".into(),
                ))
            }
        }
        Ok(f)
    }

    fn dir1000(&self) -> Result<BorrowedFd<'_>> {
        self.dir1000
            .as_ref()
            .map(|d| d.as_fd())
            .ok_or_else(|| Error::Config("dir1000 not opened".into()))
    }

    fn scratch(&self) -> Result<BorrowedFd<'_>> {
        self.scratch
            .as_ref()
            .map(|d| d.as_fd())
            .ok_or_else(|| Error::Config("scratch not opened".into()))
    }

    fn big(&self) -> Result<&File> {
        self.big
            .as_ref()
            .ok_or_else(|| Error::Config("big1g not opened".into()))
    }

    /// One op; returns payload bytes.
    fn op(&self, th: &mut ThreadState) -> Result<u64> {
        let k = self.counter.fetch_add(1, Ordering::Relaxed);
        let io = |what: &str| {
            let what = what.to_string();
            move |e| Error::io(what, e)
        };
        match self.w {
            Workload::Mixed => Err(Error::Config("no floor for the mixed workload".into())),
            Workload::LookupGetattr => {
                let name = &self.names[(k % self.names.len() as u64) as usize];
                lookup(self.dir1000()?, name).map_err(io("lookup"))?;
                Ok(0)
            }
            Workload::Readdirplus => {
                // getdents64 on a fresh open of the directory, a lookup per entry.
                let mut n = 0;
                for e in std::fs::read_dir(&self.dir1000_path).map_err(io("readdir"))? {
                    let e = e.map_err(io("getdents"))?;
                    lookup(self.dir1000()?, &cstr(e.file_name().as_bytes())?)
                        .map_err(io("lookup"))?;
                    n += 1;
                }
                if n < DIR1000_FILES {
                    return Err(Error::Config(format!("dir1000 has {n} entries")));
                }
                Ok(0)
            }
            Workload::CreateUnlink => {
                let name =
                    cstr(format!("fl-{}-{}-{}", std::process::id(), th.id, th.seq).as_bytes())?;
                th.seq += 1;
                let fd = openat(
                    self.scratch()?,
                    &name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o644,
                )
                .map_err(io("create"))?;
                drop(fd);
                unlinkat(self.scratch()?, &name).map_err(io("unlink"))?;
                Ok(0)
            }
            Workload::OpenRead4k => {
                let name = &self.names[(k % self.names.len() as u64) as usize];
                let f = File::from(
                    openat(self.dir1000()?, name, libc::O_RDONLY, 0).map_err(io("open"))?,
                );
                let n = f.read_at(&mut th.buf[..4096], 0).map_err(io("pread"))?;
                Ok(n as u64)
            }
            Workload::SeqRead1m => {
                let off = (k << 20) % BIG_FILE_SIZE;
                let n = self
                    .big()?
                    .read_at(&mut th.buf[..1 << 20], off)
                    .map_err(io("pread"))?;
                Ok(n as u64)
            }
            Workload::RandRead4k => {
                th.rng ^= th.rng << 13;
                th.rng ^= th.rng >> 7;
                th.rng ^= th.rng << 17;
                let off = (th.rng % (BIG_FILE_SIZE / 4096)) * 4096;
                let n = self
                    .big()?
                    .read_at(&mut th.buf[..4096], off)
                    .map_err(io("pread"))?;
                Ok(n as u64)
            }
            Workload::SeqWrite1m => {
                let f = th
                    .write_file
                    .as_ref()
                    .ok_or_else(|| Error::Config("no write file".into()))?;
                let off = th.offset;
                th.offset = (th.offset + (1 << 20)) % self.write_span;
                f.write_all_at(&th.buf[..1 << 20], off)
                    .map_err(io("pwrite"))?;
                Ok(1 << 20)
            }
            Workload::StoreWalk => {
                let sf = &self.store[(k % self.store.len() as u64) as usize];
                let dir = self.store_dirs[sf.dir].as_fd();
                lookup(dir, &sf.name).map_err(io("lookup"))?;
                let f = File::from(openat(dir, &sf.name, libc::O_RDONLY, 0).map_err(io("open"))?);
                let n = f
                    .read_at(&mut th.buf[..128 * 1024], 0)
                    .map_err(io("pread"))?;
                Ok(n as u64)
            }
        }
    }
}

struct ThreadState {
    id: u64,
    seq: u64,
    rng: u64,
    offset: u64,
    buf: Vec<u8>,
    write_file: Option<File>,
    write_name: Option<CString>,
}

/// Runs `cfg.workload` directly on the host tree at `root` with `cfg.depth` threads.
pub fn run(root: &Path, cfg: &RunConfig) -> Result<Summary> {
    run_observed(root, cfg, &mut |_| {})
}

/// [`run`], calling `observe` when the clock starts ([`Phase::Start`]) and when every thread
/// has stopped ([`Phase::Peak`]), e.g. to read this process's CPU time.
pub fn run_observed(
    root: &Path,
    cfg: &RunConfig,
    observe: &mut dyn FnMut(Phase),
) -> Result<Summary> {
    if cfg.depth == 0 {
        return Err(Error::Config("depth must be at least 1".into()));
    }
    let floor = Floor::new(cfg.workload, root, cfg.depth)?;
    let budget = Budget::new(cfg.duration, cfg.ops);
    observe(Phase::Start);
    let start = Instant::now();
    let results: Vec<Result<(Histogram, u64, Instant)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.depth as u64)
            .map(|id| {
                let (floor, budget) = (&floor, &budget);
                s.spawn(move || floor_thread(floor, budget, id))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Config("floor thread panicked".into())))
            })
            .collect()
    });
    observe(Phase::Peak);
    let mut s = Summary {
        workload: cfg.workload.name().into(),
        mode: "floor".into(),
        depth: cfg.depth,
        queues: 0,
        elapsed: Duration::ZERO,
        ops: Histogram::default(),
        requests: 0,
        bytes: 0,
    };
    let mut end = start;
    for r in results {
        let (h, b, e) = r?;
        s.ops.merge(&h);
        s.bytes += b;
        end = end.max(e);
    }
    s.elapsed = end - start;
    Ok(s)
}

fn floor_thread(f: &Floor, budget: &Budget, id: u64) -> Result<(Histogram, u64, Instant)> {
    let mut th = ThreadState {
        id,
        seq: 0,
        rng: 0x2545_f491_4f6c_dd1d ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        offset: 0,
        buf: vec![0x5a; 1 << 20],
        write_file: None,
        write_name: None,
    };
    if f.w == Workload::SeqWrite1m {
        let name = cstr(format!("fw-{}-{id}", std::process::id()).as_bytes())?;
        let fd = openat(
            f.scratch()?,
            &name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )
        .map_err(|e| Error::io("create write file", e))?;
        th.write_file = Some(File::from(fd));
        th.write_name = Some(name);
    }
    let mut hist = Histogram::default();
    let mut bytes = 0;
    let res = (|| {
        while budget.take() {
            let t0 = Instant::now();
            bytes += f.op(&mut th)?;
            hist.record(t0.elapsed());
        }
        Ok(())
    })();
    if res.is_err() {
        budget.abort();
    }
    let end = Instant::now();
    if let Some(name) = th.write_name.take() {
        drop(th.write_file.take());
        unlinkat(f.scratch()?, &name).map_err(|e| Error::io("unlink write file", e))?;
    }
    res.map(|()| (hist, bytes, end))
}
