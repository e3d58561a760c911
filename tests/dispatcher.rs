//! `Dispatcher::handle_chain` on descriptor chains built by hand in guest memory: the shapes a
//! real frontend (tests/protocol.rs) cannot make, and the regression cases of the fuzz harness
//! (fuzz/) that need no running daemon.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, InHeader, IoctlIn, MkdirIn, OpenIn, OpenOut, OutHeader, ReadIn, WriteIn,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vufsd::fs::{Config, Passthrough};
use vufsd::protocol::Dispatcher;

const LOOKUP: u32 = 1;
const MKDIR: u32 = 9;
const OPEN: u32 = 14;
const WRITE_OP: u32 = 16;
const OPENDIR: u32 = 27;
const DESTROY: u32 = 38;
const IOCTL: u32 = 39;
const READDIRPLUS: u32 = 44;
const TMPFILE: u32 = 51;
const WRITE: u16 = 2;
/// Two regions, back to back: guest-physically contiguous, mapped apart.
const REGION: u64 = 0x10000;

struct Env {
    dispatcher: Dispatcher,
    mem: GuestMemoryMmap,
    dir: std::path::PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env(name: &str) -> Env {
    let dir = std::env::temp_dir().join(format!("vufsd-dispatcher-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello").unwrap();
    let fs = Passthrough::new(&dir, Config::default()).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap();
    Env {
        dispatcher: Dispatcher::new(Arc::new(fs)),
        mem,
        dir,
    }
}

fn header(opcode: u32, body_len: usize) -> Vec<u8> {
    header_for(opcode, 1, body_len)
}

fn header_for(opcode: u32, nodeid: u64, body_len: usize) -> Vec<u8> {
    InHeader {
        len: (40 + body_len) as u32,
        opcode,
        unique: 77,
        nodeid,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

/// A request: header for `nodeid`, then the body parts.
fn request(opcode: u32, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut r = header_for(opcode, nodeid, body.len());
    r.extend(body);
    r
}

impl Env {
    /// Serve one chain: `readable` buffers (address, bytes) and `writable` ones (address,
    /// length). Returns the used length and the first 16 bytes of the first writable buffer.
    fn serve(&self, readable: &[(u64, Vec<u8>)], writable: &[(u64, u32)]) -> (u32, OutHeader) {
        let mut descs = Vec::new();
        for (addr, bytes) in readable {
            self.mem.write_slice(bytes, GuestAddress(*addr)).unwrap();
            descs.push(RawDescriptor::from(Descriptor::new(
                *addr,
                bytes.len() as u32,
                0,
                0,
            )));
        }
        for (addr, len) in writable {
            self.mem
                .write_slice(&vec![0x5a; *len as usize], GuestAddress(*addr))
                .unwrap();
            descs.push(RawDescriptor::from(Descriptor::new(*addr, *len, WRITE, 0)));
        }
        let queue = MockSplitQueue::new(&self.mem, 16);
        let chain = queue.build_desc_chain(&descs).unwrap();
        let used = self.dispatcher.handle_chain(&self.mem, chain);
        let out: OutHeader = self.mem.read_obj(GuestAddress(writable[0].0)).unwrap();
        (used, out)
    }
}

/// fuse-backend-rs 0.14's Server answers DESTROY but returns a used length of 0, so the guest
/// saw an empty reply; the dispatcher answers it itself (found by the fuzz harness).
#[test]
fn destroy_gets_a_reply_of_its_length() {
    let e = env("destroy");
    let (used, out) = e.serve(&[(0x1000, header(DESTROY, 0))], &[(0x2000, 16)]);
    assert_eq!(used, 16);
    assert_eq!((out.len, out.error, out.unique), (16, 0, 77));
}

/// A buffer spanning two memory regions is guest memory, but fuse-backend-rs maps each buffer
/// inside one region; the request used to be dropped without a reply (the guest would wait
/// forever). Now it gets EIO, written straight into guest memory (found by the fuzz harness).
#[test]
fn buffers_spanning_two_memory_regions_get_eio() {
    let e = env("regions");
    let mut lookup = header(LOOKUP, 10);
    lookup.extend_from_slice(b"hello.txt\0");
    // The request across the boundary, the reply elsewhere.
    let (used, out) = e.serve(&[(REGION - 20, lookup.clone())], &[(0x2000, 144)]);
    assert_eq!(used, 16);
    assert_eq!((out.len, out.error, out.unique), (16, -libc::EIO, 77));
    // The reply buffer across the boundary.
    let (used, out) = e.serve(&[(0x1000, lookup.clone())], &[(REGION - 8, 144)]);
    assert_eq!(used, 16);
    assert_eq!((out.len, out.error, out.unique), (16, -libc::EIO, 77));
    // Both, with the header split over two descriptors.
    let (used, out) = e.serve(
        &[
            (0x1000, lookup[..20].to_vec()),
            (REGION - 10, lookup[20..].to_vec()),
        ],
        &[(REGION - 4, 144)],
    );
    assert_eq!(used, 16);
    assert_eq!((out.len, out.error, out.unique), (16, -libc::EIO, 77));
    // And the same request in buffers within one region is served.
    let (used, out) = e.serve(&[(0x1000, lookup)], &[(0x2000, 144)]);
    assert_eq!((used, out.error), (144, 0));
}

/// A request whose fixed-size reply cannot fit in the guest's buffer is refused (EINVAL) before
/// the filesystem acts: a LOOKUP used to take a reference the guest never learnt of (so never
/// forgot), a MKDIR made a directory the guest was told it had not, an OPEN left a handle
/// behind, a TMPFILE got no reply at all (found by the fuzz harness: the tables no longer
/// shrank back to the root once everything handed out was returned).
#[test]
fn a_reply_that_cannot_fit_is_refused_before_serving() {
    let e = env("nofit");
    let fs = e.dispatcher.fs().clone();
    let short = [(0x2000u64, 16u32)];
    let refused = |(used, out): (u32, OutHeader)| {
        assert_eq!(used, 16);
        assert_eq!((out.len, out.error, out.unique), (16, -libc::EINVAL, 77));
    };
    refused(e.serve(&[(0x1000, request(LOOKUP, 1, &[b"hello.txt\0"]))], &short));
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    refused(e.serve(
        &[(0x1000, request(MKDIR, 1, &[mkdir.as_slice(), b"d\0"]))],
        &short,
    ));
    assert!(
        !e.dir.join("d").exists(),
        "MKDIR acted on a refused request"
    );
    let create = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o600,
        ..Default::default()
    };
    refused(e.serve(
        &[(0x1000, request(TMPFILE, 1, &[create.as_slice()]))],
        &short,
    ));
    assert_eq!(
        fs.table_sizes(),
        (1, 0),
        "references held for refused requests"
    );

    // A real lookup, then an OPEN and a WRITE that cannot be answered.
    let (used, _) = e.serve(
        &[(0x1000, request(LOOKUP, 1, &[b"hello.txt\0"]))],
        &[(0x2000, 144)],
    );
    assert_eq!(used, 144);
    let node: u64 = e.mem.read_obj(GuestAddress(0x2010)).unwrap();
    let open = OpenIn {
        flags: libc::O_RDWR as u32,
        fuse_flags: 0,
    };
    refused(e.serve(&[(0x1000, request(OPEN, node, &[open.as_slice()]))], &short));
    assert_eq!(fs.table_sizes(), (2, 0), "a handle held for a refused OPEN");
    let (used, _) = e.serve(
        &[(0x1000, request(OPEN, node, &[open.as_slice()]))],
        &[(0x2000, 32)],
    );
    assert_eq!(used, 32);
    let fh: u64 = e.mem.read_obj(GuestAddress(0x2010)).unwrap();
    let write = WriteIn {
        fh,
        size: 3,
        ..Default::default()
    };
    refused(e.serve(
        &[(0x1000, request(WRITE_OP, node, &[write.as_slice(), b"XYZ"]))],
        &short,
    ));
    assert_eq!(std::fs::read(e.dir.join("hello.txt")).unwrap(), b"hello");
}

/// READDIRPLUS into a buffer smaller than the size it asks for (header included): the
/// Server's writes fail part-way. The reply then carries the entries placed before the failure,
/// and the daemon must hold a reference for exactly those: the lookup of the entry that did not
/// fit used to stay counted (found while writing the fuzz harness's regression tests; main
/// fixed the same independently).
#[test]
fn readdirplus_into_a_short_buffer_counts_only_what_it_delivers() {
    let e = env("readdirplus");
    for i in 0..20 {
        std::fs::write(e.dir.join(format!("f{i:02}")), b"x").unwrap();
    }
    let fs = e.dispatcher.fs().clone();
    let open = OpenIn::default();
    let (used, _) = e.serve(
        &[(0x1000, request(OPENDIR, 1, &[open.as_slice()]))],
        &[(0x2000, 32)],
    );
    assert_eq!(used, 32);
    let fh = e.mem.read_obj::<OpenOut>(GuestAddress(0x2010)).unwrap().fh;
    // Every entry here takes 160 bytes (entry_out 128, dirent 24, a name of at most 8): the
    // seventh ends at 1120, which the Server checks against `size` but writes into `size` - 16.
    let read = ReadIn {
        fh,
        size: 1120,
        ..Default::default()
    };
    // Exactly `size` bytes: 16 short of the header plus `size`.
    let (used, out) = e.serve(
        &[(0x1000, request(READDIRPLUS, 1, &[read.as_slice()]))],
        &[(0x4000, 1120)],
    );
    assert_eq!(out.len, used);
    // The node ids of the whole records in the reply (a record cut short is not one).
    let mut body = vec![0u8; used as usize - 16];
    e.mem.read_slice(&mut body, GuestAddress(0x4010)).unwrap();
    let mut delivered = 0;
    let mut pos = 0;
    while pos + 152 <= body.len() {
        let nodeid = u64::from_ne_bytes(body[pos..pos + 8].try_into().unwrap());
        let namelen = u32::from_ne_bytes(body[pos + 144..pos + 148].try_into().unwrap()) as usize;
        let reclen = (152 + namelen + 7) & !7;
        if pos + reclen > body.len() {
            break;
        }
        delivered += usize::from(nodeid != 0);
        pos += reclen;
    }
    assert_eq!(
        fs.table_sizes(),
        (1 + delivered, 1),
        "references held beyond the {delivered} entries delivered"
    );
}

/// An IOCTL whose reply (header, fuse_ioctl_out, then up to out_size bytes of the result) does
/// not fit the guest's buffer: the header used to be written and the used length left at 0, a
/// reply the guest would never see (found by fuzzing). Now EINVAL, before the ioctl runs.
#[test]
fn an_ioctl_reply_that_cannot_fit_is_refused() {
    let e = env("ioctl");
    let (used, _) = e.serve(
        &[(0x1000, request(LOOKUP, 1, &[b"hello.txt\0"]))],
        &[(0x2000, 144)],
    );
    assert_eq!(used, 144);
    let node: u64 = e.mem.read_obj(GuestAddress(0x2010)).unwrap();
    let open = OpenIn::default();
    let (used, _) = e.serve(
        &[(0x1000, request(OPEN, node, &[open.as_slice()]))],
        &[(0x2000, 32)],
    );
    assert_eq!(used, 32);
    let fh = e.mem.read_obj::<OpenOut>(GuestAddress(0x2010)).unwrap().fh;
    let getflags = IoctlIn {
        fh,
        cmd: 0x8008_6601, // FS_IOC_GETFLAGS
        out_size: 4,
        ..Default::default()
    };
    // 16 + 16 + 4 bytes needed, 24 given.
    let (used, out) = e.serve(
        &[(0x1000, request(IOCTL, node, &[getflags.as_slice()]))],
        &[(0x2000, 24)],
    );
    assert_eq!(used, 16);
    assert_eq!((out.len, out.error, out.unique), (16, -libc::EINVAL, 77));
}
