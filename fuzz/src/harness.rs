//! One fuzz input: a fresh share, a fresh `Passthrough` behind a `Dispatcher`, a sequence of
//! requests, and the invariants. Any panic here is a finding.
//!
//! Invariants, per request:
//! - `handle_chain` never panics, and its used length never exceeds the writable bytes;
//! - a reply that is written has `out.len == used` and `out.unique` of the request, and an error
//!   is a single header with a negated errno Linux knows (1..=133);
//! - requests without a reply (FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY) get none, and any
//!   other request in a well-formed chain gets one (a guest must never wait forever);
//!
//! and per input:
//! - once every handle handed out is released and every node reference forgotten, the inode and
//!   handle tables hold only the root and the process holds the fds it held before;
//! - nothing beside the share changed (see [`crate::share`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use fuse_backend_rs::abi::fuse_abi::{EntryOut, InHeader, OpenOut, OutHeader};
use vm_memory::{ByteValued, GuestMemoryMmap};
use vufsd::fs::idmap::IdMap;
use vufsd::fs::open_flags::NoatimePolicy;
use vufsd::fs::{CachePolicy, Config, FileHandles, Passthrough};
use vufsd::protocol::Dispatcher;

use crate::bytes::Input;
use crate::guest::{self, Layout, Place, Seg};
use crate::script::{self, op, Known, Request};
use crate::share::Share;

/// Requests per input: enough for INIT, LOOKUP, OPEN, READ, ... chains; bounded so that every
/// input stays fast and its effects small.
const MAX_STEPS: usize = 64;
/// Largest file the fuzzed filesystem may grow (RLIMIT_FSIZE): a FALLOCATE or WRITE at a large
/// offset then fails with EFBIG instead of filling the disk.
const MAX_FILE: u64 = 16 << 20;
/// Largest errno Linux defines (EHWPOISON).
const MAX_ERRNO: i32 = 133;

struct World {
    mem: GuestMemoryMmap,
    share: Share,
    /// The working directory to go back to: `Passthrough` makes `/proc/self/fd` the process's
    /// working directory, and libFuzzer writes its corpus by relative paths between inputs.
    cwd: PathBuf,
}

fn world() -> &'static Mutex<World> {
    static WORLD: OnceLock<Mutex<World>> = OnceLock::new();
    WORLD.get_or_init(|| {
        limit_file_size();
        let base = std::env::var_os("VUFSD_FUZZ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(default_base);
        let share = Share::create(&base)
            .unwrap_or_else(|e| panic!("cannot create the share under {}: {e}", base.display()));
        Mutex::new(World {
            mem: guest::memory(),
            share,
            cwd: std::env::current_dir().expect("a working directory"),
        })
    })
}

/// A tmpfs when there is one: fsync and syncfs are free there, and nothing reaches a disk
/// that others are benchmarking on.
fn default_base() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fn limit_file_size() {
    let lim = libc::rlimit {
        rlim_cur: MAX_FILE,
        rlim_max: MAX_FILE,
    };
    // SAFETY: plain syscalls with valid arguments; ignoring SIGXFSZ makes a write past the limit
    // fail with EFBIG instead of killing the process.
    unsafe {
        libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn config(a: u8, b: u8) -> Config {
    let id_map = |spec: &str| IdMap::new(&[spec.parse().expect("a valid rule")]).expect("a map");
    let (uid_map, gid_map) = match (b >> 2) & 3 {
        1 => (id_map("map:0:1000:1"), id_map("map:0:1000:1")),
        2 => (id_map("forbid-guest:1000:10"), IdMap::default()),
        _ => (IdMap::default(), IdMap::default()),
    };
    Config {
        readonly: a & 1 != 0,
        xattr: a & 2 != 0,
        posix_acl: a & 4 != 0,
        writeback: a & 8 != 0,
        cache: match (a >> 4) & 3 {
            0 => CachePolicy::Auto,
            1 => CachePolicy::Never,
            2 => CachePolicy::Metadata,
            _ => CachePolicy::Always,
        },
        readdirplus: a & 0x40 == 0,
        allow_direct_io: a & 0x80 != 0,
        noatime: match b & 3 {
            1 => NoatimePolicy::Preserve,
            2 => NoatimePolicy::Strip,
            _ => NoatimePolicy::Auto,
        },
        uid_map,
        gid_map,
        file_handles: if b & 0x10 == 0 {
            FileHandles::Never
        } else {
            FileHandles::Prefer
        },
        killpriv_v2: b & 0x20 != 0,
        announce_submounts: b & 0x40 != 0,
        ..Config::default()
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Run one fuzz input.
pub fn run(data: &[u8]) {
    let mut world = world().lock().unwrap_or_else(|p| p.into_inner());
    let World { mem, share, cwd } = &mut *world;
    share
        .reset()
        .unwrap_or_else(|e| panic!("cannot reset the share: {e}"));
    let mut input = Input::new(data);
    let cfg = config(input.u8(), input.u8());
    let fds_before = open_fds();
    let fs = Arc::new(Passthrough::new(share.path(), cfg).expect("serving the share"));
    let dispatcher = Dispatcher::new(fs.clone());
    let fds_serving = open_fds();
    let mut known = Known::default();
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        let mut req = script::next_request(&mut input, &mut known);
        if req.header.opcode == op::SETLKW {
            // A lock wait blocks the calling thread until another owner unlocks; the device
            // runs it on a thread of its own, a single-threaded fuzzer would hang. SETLK takes
            // the same path without the wait.
            req.header.opcode = op::SETLK;
        }
        exchange(&dispatcher, mem, &req, &mut known);
    }
    // Give back everything the guest was handed; the tables must shrink back to the root.
    for (fh, node) in std::mem::take(&mut known.handles) {
        let req = cleanup_request(&mut known, op::RELEASE, node, &fh.to_ne_bytes(), 24);
        exchange(&dispatcher, mem, &req, &mut known);
    }
    for (node, refs) in std::mem::take(&mut known.nodes) {
        let req = cleanup_request(&mut known, op::FORGET, node, &refs.to_ne_bytes(), 0);
        exchange(&dispatcher, mem, &req, &mut known);
    }
    if !known.unaccountable {
        let (inodes, handles) = fs.table_sizes();
        assert_eq!(
            (inodes, handles),
            (1, 0),
            "inodes or handles left after every reference was returned"
        );
        assert_eq!(
            open_fds(),
            fds_serving,
            "fds left open after every reference was returned"
        );
    }
    drop(dispatcher);
    drop(fs);
    std::env::set_current_dir(&*cwd).expect("back to the working directory");
    assert_eq!(
        open_fds(),
        fds_before,
        "fds leaked by a dropped Passthrough"
    );
    share.assert_outside_unchanged();
}

/// A well-formed request with `body` (zero-padded to `pad` bytes) for the clean-up.
fn cleanup_request(known: &mut Known, opcode: u32, node: u64, body: &[u8], pad: usize) -> Request {
    known.unique += 2;
    let mut body = body.to_vec();
    body.resize(body.len().max(pad), 0);
    let out_len = if opcode == op::FORGET { 0 } else { 16 };
    let header = InHeader {
        len: (40 + body.len()) as u32,
        opcode,
        unique: known.unique,
        nodeid: node,
        ..Default::default()
    };
    let mut segs = vec![Seg {
        writable: false,
        len: header.len,
        place: Place::Next,
    }];
    if out_len > 0 {
        segs.push(Seg {
            writable: true,
            len: out_len,
            place: Place::Next,
        });
    }
    Request {
        header,
        body,
        out_len,
        layout: Layout {
            segs,
            ..Default::default()
        },
    }
}

/// VUFSD_FUZZ_TRACE=1 prints every request and its outcome (for replaying one input).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| {
        let on = std::env::var_os("VUFSD_FUZZ_TRACE").is_some_and(|v| v == "1");
        if on {
            // The daemon's own log lines too (why a request was refused).
            vufsd::logger::init(log::LevelFilter::Debug);
        }
        on
    })
}

fn no_reply(opcode: u32) -> bool {
    matches!(
        opcode,
        op::FORGET | op::BATCH_FORGET | op::INTERRUPT | op::NOTIFY_REPLY
    )
}

/// Send one request through the dispatcher, check the reply, and learn from it.
fn exchange(d: &Dispatcher, mem: &GuestMemoryMmap, req: &Request, known: &mut Known) {
    let bytes = req.bytes();
    let (built, chain) = guest::build(mem, &req.layout, &bytes);
    let Some(chain) = chain else {
        return;
    };
    // The header as the device will read it, which a custom layout may have mangled.
    let seen = built
        .readable_prefix(mem, 40)
        .and_then(|b| InHeader::from_slice(&b).copied());
    let used = d.handle_chain(mem, chain);
    if trace() {
        let error = built
            .gather(mem, used.min(16))
            .ok()
            .and_then(|b| OutHeader::from_slice(b.get(..16)?).copied())
            .map(|o| o.error);
        eprintln!(
            "op {:>2} node {:#x} body {:02x?} layout {}r/{}w{} -> used {used} error {error:?}",
            req.header.opcode,
            req.header.nodeid,
            req.body,
            req.layout.segs.iter().filter(|s| !s.writable).count(),
            req.layout.segs.iter().filter(|s| s.writable).count(),
            if req.layout.well_formed(bytes.len()) {
                ""
            } else {
                " (malformed)"
            },
        );
    }
    let writable = built.writable_len();
    let ctx = || {
        format!(
            "request {:?} body {:?} layout {:?}",
            req.header, req.body, req.layout
        )
    };
    assert!(
        u64::from(used) <= writable,
        "used length {used} > {writable} writable bytes; {}",
        ctx()
    );
    let Some(seen) = seen else {
        assert_eq!(
            used,
            0,
            "a reply to a request without a readable header; {}",
            ctx()
        );
        return;
    };
    if no_reply(seen.opcode) {
        assert_eq!(used, 0, "a reply to a request that takes none; {}", ctx());
        return;
    }
    if used == 0 && !built.aliased() && !built.writable_overlap() {
        if let Ok(start) = built.gather(mem, 16) {
            assert!(
                start.iter().all(|&b| b == 0x5a),
                "a reply was written but the used length is 0; {}",
                ctx()
            );
        }
    }
    if used == 0 {
        assert!(
            !req.layout.well_formed(bytes.len()),
            "no reply to a well-formed chain: the guest would wait forever; {}",
            ctx()
        );
        return;
    }
    if built.writable_overlap() {
        // The guest gave the same bytes twice (a looped chain): the reply overwrote itself, and
        // what it reads back is its own doing. Neither can the harness read what it handed out,
        // so this input is exempt from the accounting check.
        known.unaccountable |= used > 16;
        return;
    }
    let reply = built
        .gather(mem, used)
        .unwrap_or_else(|e| panic!("{e}; {}", ctx()));
    assert!(
        reply.len() >= 16,
        "reply shorter than its header; {}",
        ctx()
    );
    let out = *OutHeader::from_slice(&reply[..16]).expect("16 bytes");
    assert_eq!(out.len, used, "out.len is not the used length; {}", ctx());
    assert_eq!(
        out.unique,
        seen.unique,
        "out.unique is not the request's; {}",
        ctx()
    );
    if out.error != 0 {
        assert!(
            (-MAX_ERRNO..0).contains(&out.error),
            "error {} is not a negated errno; {}",
            out.error,
            ctx()
        );
        assert_eq!(used, 16, "an error reply with a body; {}", ctx());
        return;
    }
    learn(&seen, &req.body, &reply[16..], known);
}

fn read<T: ByteValued>(b: &[u8], at: usize) -> Option<T> {
    b.get(at..at + std::mem::size_of::<T>())
        .and_then(T::from_slice)
        .copied()
}

/// Remember the node ids and handles a successful reply hands out.
fn learn(h: &InHeader, request_body: &[u8], body: &[u8], known: &mut Known) {
    let entry = |known: &mut Known| {
        if let Some(e) = read::<EntryOut>(body, 0) {
            if e.nodeid != 0 {
                known.add_node(e.nodeid);
            }
        }
    };
    match h.opcode {
        op::LOOKUP | op::MKNOD | op::MKDIR | op::SYMLINK | op::LINK => entry(known),
        op::CREATE | op::TMPFILE => {
            entry(known);
            let node = read::<EntryOut>(body, 0).map_or(0, |e| e.nodeid);
            if let Some(o) = read::<OpenOut>(body, std::mem::size_of::<EntryOut>()) {
                known.handles.push((o.fh, node));
            }
        }
        op::OPEN | op::OPENDIR => {
            if let Some(o) = read::<OpenOut>(body, 0) {
                known.handles.push((o.fh, h.nodeid));
            }
        }
        op::READDIRPLUS => {
            // fuse_direntplus: entry_out, then dirent (ino, off, namelen, type), then the name
            // padded to 8 bytes.
            let mut pos = 0;
            while let Some(e) = read::<EntryOut>(body, pos) {
                let Some(namelen) = read::<u32>(body, pos + 128 + 16) else {
                    break;
                };
                if e.nodeid != 0 {
                    known.add_node(e.nodeid);
                }
                pos += (128 + 24 + namelen as usize + 7) & !7;
            }
        }
        op::RELEASE | op::RELEASEDIR => {
            if let Some(fh) = read::<u64>(request_body, 0) {
                known.handles.retain(|&x| x != (fh, h.nodeid));
            }
        }
        _ => {}
    }
}
