//! `Dispatcher::handle_chain` on descriptor chains built by hand in guest memory: the shapes a
//! real frontend (tests/protocol.rs) cannot make, and the regression cases of the fuzz harness
//! (fuzz/) that need no running daemon.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vufsd::fs::{Config, Passthrough};
use vufsd::protocol::Dispatcher;

const LOOKUP: u32 = 1;
const DESTROY: u32 = 38;
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
    InHeader {
        len: (40 + body_len) as u32,
        opcode,
        unique: 77,
        nodeid: 1,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
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
