//! Writes the seed corpus: well-formed request sequences (and a few deliberately malformed
//! chains) in the fuzz target's input format, one file each.
//!
//!     cargo run --release --bin fuzz-seeds -- fuzz/corpus/fuzz_request

use std::path::PathBuf;

use vufsd_fuzz::bytes::Enc;
use vufsd_fuzz::guest::Place;
use vufsd_fuzz::script::{name_byte, op, op_byte, uses_handle, LayoutSpec};

/// A seed under construction.
struct Seed(Enc);

/// Node selectors: 0 is the root (or, for handle requests, the handle's node); n picks the
/// n-th node id handed out so far (1-based).
const ROOT: u8 = 0;
/// Handle selector: the last handle opened.
const LAST: u8 = 0;

impl Seed {
    fn new(cfg: u8, cfg2: u8) -> Self {
        let mut e = Enc::default();
        e.u8(cfg).u8(cfg2);
        let mut s = Seed(e);
        // INIT as Linux sends it.
        s.op(op::INIT, ROOT).u8(0);
        s.std();
        s
    }

    /// Start a step: opcode, no header overrides, node (and handle) selectors. The opcode's
    /// fields follow on the returned encoder, then a layout.
    fn op(&mut self, opcode: u32, node: u8) -> &mut Enc {
        self.0.u8(op_byte(opcode)).u8(0).u8(node);
        if uses_handle(opcode) {
            self.0.u8(LAST);
        }
        &mut self.0
    }

    fn std(&mut self) -> &mut Self {
        self.0.u8(0);
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.buf
    }
}

fn name<'a>(e: &'a mut Enc, n: &[u8]) -> &'a mut Enc {
    e.u8(name_byte(n))
}

/// A fresh name n0..n14.
fn fresh(e: &mut Enc, i: u8) -> &mut Enc {
    e.u8(0xf0 + i)
}

fn read_file() -> Vec<u8> {
    let mut s = Seed::new(0, 0);
    name(s.op(op::LOOKUP, ROOT), b"hello.txt");
    s.std();
    s.op(op::OPEN, 1).u32(libc::O_RDONLY as u32);
    s.std();
    s.op(op::READ, 0).small(0).u32(4096).u32(0);
    s.std();
    s.op(op::GETATTR, 1).u8(1).u8(LAST);
    s.std();
    s.op(op::FLUSH, 0).small(7);
    s.std();
    s.op(op::RELEASE, 0).u32(0).u32(0).small(7);
    s.std();
    s.op(op::FORGET, 1).small(1);
    s.std();
    s.bytes()
}

fn read_dirs() -> Vec<u8> {
    let mut s = Seed::new(0, 0);
    s.op(op::OPENDIR, ROOT).u32(libc::O_RDONLY as u32);
    s.std();
    s.op(op::READDIRPLUS, 0).small(0).u32(4096).u32(0);
    s.std();
    s.op(op::READDIR, 0).small(0).u32(200).u32(0);
    s.std();
    s.op(op::FSYNCDIR, 0).u32(0);
    s.std();
    s.op(op::RELEASEDIR, 0).u32(0).u32(0).small(0);
    s.std();
    name(s.op(op::LOOKUP, ROOT), b"sub");
    s.std();
    name(s.op(op::LOOKUP, 0xfc), b"deeper");
    s.std();
    name(s.op(op::LOOKUP, 0xfc), b"..");
    s.std();
    s.op(op::OPENDIR, 1).u32(libc::O_RDONLY as u32);
    s.std();
    s.op(op::READDIRPLUS, 0).small(0).u32(65536).u32(0);
    s.std();
    s.bytes()
}

fn write_file() -> Vec<u8> {
    let mut s = Seed::new(0, 0);
    let e = s.op(op::CREATE, ROOT);
    e.u32((libc::O_RDWR | libc::O_CREAT) as u32)
        .u32(0o100644)
        .u32(0o022);
    fresh(e, 0);
    s.std();
    s.op(op::WRITE, 0)
        .small(0)
        .blob(b"some data for the new file")
        .u8(0)
        .u32(0);
    s.std();
    s.op(op::READ, 0).small(5).u32(100).u32(0);
    s.std();
    s.op(op::FSYNC, 0).u32(1);
    s.std();
    s.op(op::LSEEK, 0).small(0).u8(libc::SEEK_DATA as u8);
    s.std();
    s.op(op::FALLOCATE, 0).small(0).small(8192).u32(0);
    s.std();
    s.op(op::SETATTR, 1)
        .u32(1 << 3 | 1 << 0) // SIZE | MODE
        .u8(0xfd)
        .small(3)
        .u32(0o100600)
        .u32(0)
        .u32(0)
        .small(0)
        .small(0)
        .u32(0)
        .u32(0);
    s.std();
    s.op(op::FLUSH, 0).small(1);
    s.std();
    s.op(op::RELEASE, 0).u32(0).u32(0).small(1);
    s.std();
    fresh(s.op(op::UNLINK, ROOT), 0);
    s.std();
    s.bytes()
}

fn namespace_ops() -> Vec<u8> {
    let mut s = Seed::new(0, 0);
    let e = s.op(op::MKDIR, ROOT).u32(0o755).u32(0o022);
    fresh(e, 1);
    s.std();
    name(s.op(op::LOOKUP, ROOT), b"sub");
    s.std();
    // RENAME hello.txt -> sub/n2
    let e = s.op(op::RENAME, ROOT).u8(2);
    name(e, b"hello.txt");
    fresh(e, 2);
    s.std();
    name(s.op(op::LOOKUP, 2), b"inner.txt");
    s.std();
    // LINK sub/inner.txt as n3 in the root
    let e = s.op(op::LINK, ROOT).u8(3);
    fresh(e, 3);
    s.std();
    let e = s.op(op::SYMLINK, ROOT);
    fresh(e, 4);
    e.u8(1); // -> ../canary/secret
    s.std();
    s.op(op::READLINK, 0xfc);
    s.std();
    let e = s
        .op(op::MKNOD, ROOT)
        .u32(libc::S_IFIFO | 0o644)
        .u32(0)
        .u32(0);
    fresh(e, 5);
    s.std();
    let e = s.op(op::RENAME2, 2).u8(0).u32(libc::RENAME_EXCHANGE);
    fresh(e, 2);
    fresh(e, 1);
    s.std();
    fresh(s.op(op::RMDIR, ROOT), 2);
    s.std();
    s.op(op::STATFS, ROOT);
    s.std();
    s.op(op::ACCESS, 1).u32(libc::R_OK as u32);
    s.std();
    s.bytes()
}

fn escapes() -> Vec<u8> {
    let mut s = Seed::new(0, 0);
    for n in [&b"abs-escape"[..], b"rel-escape", b"up", b"..", b"fifo"] {
        name(s.op(op::LOOKUP, ROOT), n);
        s.std();
    }
    s.op(op::OPEN, 1).u32(libc::O_RDWR as u32);
    s.std();
    s.op(op::OPENDIR, 3).u32(0);
    s.std();
    s.op(op::OPEN, 5).u32(libc::O_RDONLY as u32);
    s.std();
    for n in [&b"abs-escape"[..], b"rel-escape"] {
        let e = s.op(op::CREATE, ROOT);
        e.u32((libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32)
            .u32(0o100644)
            .u32(0);
        name(e, n);
        s.std();
    }
    let e = s.op(op::CREATE, 3);
    e.u32((libc::O_RDWR | libc::O_CREAT) as u32)
        .u32(0o100644)
        .u32(0);
    name(e, b"canary-file");
    s.std();
    let e = s.op(op::LINK, 3).u8(1);
    name(e, b"canary");
    s.std();
    s.op(op::SETATTR, 1)
        .u32(1 << 3)
        .u8(0xfd)
        .small(0)
        .u32(0)
        .u32(0)
        .u32(0)
        .small(0)
        .small(0)
        .u32(0)
        .u32(0);
    s.std();
    name(s.op(op::LOOKUP, ROOT), b"../canary-file");
    s.std();
    s.bytes()
}

fn locks() -> Vec<u8> {
    let mut s = Seed::new(0, 0);
    name(s.op(op::LOOKUP, ROOT), b"hello.txt");
    s.std();
    s.op(op::OPEN, 1).u32(libc::O_RDWR as u32);
    s.std();
    // owner 1 write-locks bytes 0..=9, owner 2 asks, then flock
    s.op(op::SETLK, 0).small(1).small(0).u8(9).u8(1).u8(0);
    s.std();
    s.op(op::GETLK, 0).small(2).small(0).u8(0).u8(1).u8(0);
    s.std();
    s.op(op::SETLKW, 0).small(2).small(20).u8(5).u8(0).u8(0);
    s.std();
    s.op(op::SETLK, 0).small(3).small(0).u8(0).u8(1).u8(1);
    s.std();
    s.op(op::FLUSH, 0).small(1);
    s.std();
    s.op(op::GETLK, 0).small(2).small(0).u8(0).u8(1).u8(0);
    s.std();
    s.op(op::IOCTL, 0)
        .u32(0)
        .u8(0)
        .u64(0)
        .blob(b"")
        .u8(0)
        .u32(4);
    s.std();
    s.bytes()
}

fn xattrs() -> Vec<u8> {
    let mut s = Seed::new(2, 0);
    name(s.op(op::LOOKUP, ROOT), b"hello.txt");
    s.std();
    s.op(op::SETXATTR, 1).u8(0).blob(b"value").u8(0).u32(0);
    s.std();
    s.op(op::GETXATTR, 1).u32(0).u8(0);
    s.std();
    s.op(op::GETXATTR, 1).u32(64).u8(0);
    s.std();
    s.op(op::LISTXATTR, 1).u32(0);
    s.std();
    s.op(op::LISTXATTR, 1).u32(256);
    s.std();
    s.op(op::REMOVEXATTR, 1).u8(0);
    s.std();
    s.op(op::SETXATTR, ROOT)
        .u8(4)
        .blob(&[2, 0, 0, 0])
        .u8(0)
        .u32(0);
    s.std();
    s.bytes()
}

fn misc() -> Vec<u8> {
    let mut s = Seed::new(0x30, 2);
    s.op(op::TMPFILE, ROOT)
        .u32(libc::O_RDWR as u32)
        .u32(0o100600)
        .u32(0);
    s.std();
    s.op(op::WRITE, 0).small(0).blob(b"tmp").u8(0).u32(0);
    s.std();
    name(s.op(op::LOOKUP, ROOT), b"hello.txt");
    s.std();
    s.op(op::OPEN, 2).u32(libc::O_RDONLY as u32);
    s.std();
    // copy 5 bytes from hello.txt's handle (last) into the tmpfile's (the first handle)
    s.op(op::COPY_FILE_RANGE, 0)
        .small(0)
        .u8(1)
        .small(0)
        .small(5)
        .small(0);
    s.std();
    s.op(op::SYNCFS, ROOT);
    s.std();
    s.op(op::BMAP, 2).u64(0).u32(512);
    s.std();
    s.op(op::POLL, 0).u64(0).u32(0).u32(1);
    s.std();
    s.op(op::INTERRUPT, ROOT).small(4);
    s.std();
    // BATCH_FORGET of two entries: the tmpfile and hello.txt
    s.op(op::BATCH_FORGET, ROOT)
        .u8(2)
        .u8(0)
        .u8(1)
        .small(1)
        .u8(2)
        .small(1);
    s.std();
    s.op(op::DESTROY, ROOT);
    s.std();
    // An opcode nobody serves, with a raw body.
    s.0.u8(0xe0).u8(0).u32(4096).u8(0).blob(b"????").u16(16);
    s.std();
    s.bytes()
}

/// The same LOOKUP + GETATTR in every chain shape the layout byte can make.
fn layouts() -> Vec<u8> {
    let mut s = Seed::new(0, 0);
    let shapes: Vec<LayoutSpec> = vec![
        // header split in the middle
        LayoutSpec {
            segs: vec![
                (false, Place::Next, Some(20)),
                (false, Place::Next, None),
                (true, Place::Next, None),
            ],
            indirect: false,
            looped: false,
        },
        // across two memory regions
        LayoutSpec {
            segs: vec![
                (false, Place::Boundary, None),
                (true, Place::Boundary, None),
            ],
            indirect: true,
            looped: false,
        },
        // reply buffer after the hole, request in the hole
        LayoutSpec {
            segs: vec![(false, Place::Hole, None), (true, Place::AfterHole, None)],
            indirect: false,
            looped: false,
        },
        // reply buffer running off the end of memory
        LayoutSpec {
            segs: vec![(false, Place::Next, None), (true, Place::PastEnd, None)],
            indirect: false,
            looped: false,
        },
        // writable first, and a loop
        LayoutSpec {
            segs: vec![(true, Place::Next, None), (false, Place::Next, None)],
            indirect: false,
            looped: true,
        },
        // reply over the request, in small pieces
        LayoutSpec {
            segs: vec![
                (false, Place::Next, None),
                (true, Place::OverRequest, Some(16)),
                (true, Place::Next, Some(8)),
                (true, Place::Next, Some(0)),
                (true, Place::Next, Some(200)),
            ],
            indirect: false,
            looped: false,
        },
        // reply too short for an entry
        LayoutSpec {
            segs: vec![(false, Place::Next, None), (true, Place::Next, Some(16))],
            indirect: false,
            looped: false,
        },
    ];
    for shape in &shapes {
        name(s.op(op::LOOKUP, ROOT), b"hello.txt");
        shape.encode(&mut s.0);
        s.op(op::GETATTR, ROOT).u8(0).u8(0xfd);
        shape.encode(&mut s.0);
    }
    s.bytes()
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "corpus/fuzz_request".into()),
    );
    std::fs::create_dir_all(&dir).expect("creating the corpus directory");
    let seeds: [(&str, Vec<u8>); 9] = [
        ("read-file", read_file()),
        ("read-dirs", read_dirs()),
        ("write-file", write_file()),
        ("namespace", namespace_ops()),
        ("escapes", escapes()),
        ("locks", locks()),
        ("xattrs", xattrs()),
        ("misc", misc()),
        ("layouts", layouts()),
    ];
    for (name, bytes) in seeds {
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).expect("writing a seed");
        println!("{}", path.display());
    }
}
