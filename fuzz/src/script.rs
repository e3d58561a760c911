//! Requests from fuzz bytes: a small bytecode, one step per request, that names node ids and
//! file handles by picking from those earlier replies handed out, so that a sequence like
//! INIT, LOOKUP, OPEN, READ reaches the filesystem with ids it knows.
//!
//! A step is: opcode selector, header flags (and the overrides they announce), the node,
//! the opcode's fields, and the chain layout. [`Step`] is the same format as a value, for
//! the seed generator.

use fuse_backend_rs::abi::fuse_abi::{
    Attr, CopyFileRangeIn, CreateIn, EntryOut, FallocateIn, FileLock, FlushIn, FsyncIn, GetattrIn,
    GetxattrIn, InHeader, InitIn, InitIn2, IoctlIn, LinkIn, LkIn, LseekIn, MkdirIn, MknodIn,
    OpenIn, OpenOut, PollIn, ReadIn, ReleaseIn, Rename2In, RenameIn, SetattrIn, SetxattrIn,
    WriteIn,
};
use vm_memory::ByteValued;

use crate::bytes::Input;
use crate::guest::{Layout, MAX_SEG};
use crate::shape::layout;
pub use crate::shape::LayoutSpec;

/// FUSE opcodes: the load generator's table (one source of truth for the wire numbers).
pub use vufsd_bench::fuse_abi::opcode as op;

/// The opcodes a step selects from (an index byte below [`RAW_OP`]).
pub const OPS: &[u32] = &[
    op::LOOKUP,
    op::FORGET,
    op::GETATTR,
    op::SETATTR,
    op::READLINK,
    op::SYMLINK,
    op::MKNOD,
    op::MKDIR,
    op::UNLINK,
    op::RMDIR,
    op::RENAME,
    op::LINK,
    op::OPEN,
    op::READ,
    op::WRITE,
    op::STATFS,
    op::RELEASE,
    op::FSYNC,
    op::SETXATTR,
    op::GETXATTR,
    op::LISTXATTR,
    op::REMOVEXATTR,
    op::FLUSH,
    op::INIT,
    op::OPENDIR,
    op::READDIR,
    op::RELEASEDIR,
    op::FSYNCDIR,
    op::GETLK,
    op::SETLK,
    op::SETLKW,
    op::ACCESS,
    op::CREATE,
    op::INTERRUPT,
    op::BMAP,
    op::DESTROY,
    op::IOCTL,
    op::POLL,
    op::NOTIFY_REPLY,
    op::BATCH_FORGET,
    op::FALLOCATE,
    op::READDIRPLUS,
    op::RENAME2,
    op::LSEEK,
    op::COPY_FILE_RANGE,
    op::SETUPMAPPING,
    op::REMOVEMAPPING,
    op::SYNCFS,
    op::TMPFILE,
];

/// Selector bytes from here on mean "any opcode, any body".
pub const RAW_OP: u8 = 0xe0;

/// Names a step can pick by index (0xf0..=0xfe: fresh names n0..n14; 0xff: raw bytes).
pub const NAMES: &[&[u8]] = &[
    b"hello.txt",
    b"empty",
    b"sub",
    b"inner.txt",
    b"deeper",
    b"fifo",
    b"abs-escape",
    b"rel-escape",
    b"up",
    b".",
    b"..",
    b"",
    b"a/b",
    b"../canary-file",
    b"canary",
    b"canary-file",
    b"secret",
    &[b'x'; 255],
    &[b'y'; 256],
];

pub const XATTRS: &[&[u8]] = &[
    b"user.a",
    b"user.b",
    b"trusted.t",
    b"security.capability",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"",
    b"user.",
];

pub const TARGETS: &[&[u8]] = &[
    b"hello.txt",
    b"../canary/secret",
    b"/etc/passwd",
    b"..",
    b"sub",
    b"",
];

pub const IOCTLS: &[u32] = &[
    0x8008_6601, // FS_IOC_GETFLAGS
    0x4008_6602, // FS_IOC_SETFLAGS
    0x8004_6601, // FS_IOC32_GETFLAGS
    0x4004_6602, // FS_IOC32_SETFLAGS
    0x801c_581f, // FS_IOC_FSGETXATTR
    0x401c_5820, // FS_IOC_FSSETXATTR
    0x5401,      // TCGETS: not served
];

pub const ROOT: u64 = 1;

/// What earlier replies handed out.
#[derive(Default, Debug)]
pub struct Known {
    /// Node ids, with the number of references the guest holds on each.
    pub nodes: Vec<(u64, u64)>,
    /// Open handles: (fh, node id).
    pub handles: Vec<(u64, u64)>,
    pub unique: u64,
    /// A reply was written where it overwrote itself: what it handed out is unknown.
    pub unaccountable: bool,
}

impl Known {
    pub fn add_node(&mut self, id: u64) {
        match self.nodes.iter_mut().find(|(n, _)| *n == id) {
            Some((_, refs)) => *refs += 1,
            None => self.nodes.push((id, 1)),
        }
    }

    fn node(&self, sel: u8, input: &mut Input) -> u64 {
        match sel {
            0 => ROOT,
            0xfc => self.nodes.last().map_or(ROOT, |n| n.0),
            0xfd => 0,
            0xfe => u64::MAX,
            0xff => input.u64(),
            s => match self.nodes.len() {
                0 => ROOT,
                n => self.nodes[(s as usize - 1) % n].0,
            },
        }
    }

    /// (fh, the node it was opened on).
    fn handle(&self, sel: u8, input: &mut Input) -> (u64, u64) {
        match sel {
            0 => self.handles.last().copied().unwrap_or((0, ROOT)),
            0xfd => (0, ROOT),
            0xfe => (u64::MAX, ROOT),
            0xff => (input.u64(), ROOT),
            s => match self.handles.len() {
                0 => (0, ROOT),
                n => self.handles[(s as usize - 1) % n],
            },
        }
    }
}

/// One request, ready to be laid into a chain.
#[derive(Debug)]
pub struct Request {
    pub header: InHeader,
    pub body: Vec<u8>,
    /// The reply buffer a kernel would give (0 for requests without a reply).
    pub out_len: u32,
    pub layout: Layout,
}

impl Request {
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = self.header.as_slice().to_vec();
        v.extend_from_slice(&self.body);
        v
    }
}

fn push<T: ByteValued>(body: &mut Vec<u8>, v: T) {
    body.extend_from_slice(v.as_slice());
}

fn name(input: &mut Input) -> Vec<u8> {
    match input.u8() {
        0xff => input.blob().to_vec(),
        s @ 0xf0.. => {
            let mut n = format!("n{}", s - 0xf0).into_bytes();
            n.push(0);
            n
        }
        s => {
            let mut n = NAMES[s as usize % NAMES.len()].to_vec();
            n.push(0);
            n
        }
    }
}

fn pick(input: &mut Input, table: &[&[u8]]) -> Vec<u8> {
    match input.u8() {
        0xff => input.blob().to_vec(),
        s => {
            let mut n = table[s as usize % table.len()].to_vec();
            n.push(0);
            n
        }
    }
}

pub(crate) const HDR: u32 = std::mem::size_of::<InHeader>() as u32;
pub(crate) const OUT: u32 = 16;
const ENTRY: u32 = std::mem::size_of::<EntryOut>() as u32;
const OPEN_OUT: u32 = std::mem::size_of::<OpenOut>() as u32;
/// fuse_attr_out: timeouts, then the attributes.
const ATTR_OUT: u32 = OUT + 16 + std::mem::size_of::<Attr>() as u32;

fn capped(size: u64) -> u32 {
    OUT + size.min(u64::from(MAX_SEG - OUT)) as u32
}

/// Opcodes whose handle is the point: their node defaults to the handle's.
pub fn uses_handle(opcode: u32) -> bool {
    matches!(
        opcode,
        op::READ
            | op::WRITE
            | op::RELEASE
            | op::FSYNC
            | op::FLUSH
            | op::READDIR
            | op::RELEASEDIR
            | op::FSYNCDIR
            | op::GETLK
            | op::SETLK
            | op::SETLKW
            | op::IOCTL
            | op::POLL
            | op::FALLOCATE
            | op::READDIRPLUS
            | op::LSEEK
            | op::COPY_FILE_RANGE
    )
}

/// Decode the next request. `known` supplies node ids and handles.
pub fn next_request(input: &mut Input, known: &mut Known) -> Request {
    let sel = input.u8();
    let flags = input.u8();
    known.unique += 2;
    let mut header = InHeader {
        len: 0,
        opcode: 0,
        unique: known.unique,
        nodeid: ROOT,
        uid: 0,
        gid: 0,
        pid: 1,
        padding: 0,
    };
    let len_override = (flags & 1 != 0).then(|| input.u32());
    if flags & 2 != 0 {
        header.uid = input.u32();
        header.gid = input.u32();
    }
    let raw_node = (flags & 4 != 0).then(|| input.u64());
    if flags & 8 != 0 {
        header.unique = input.u64();
    }
    let opcode = if sel >= RAW_OP {
        input.u32()
    } else {
        OPS[sel as usize % OPS.len()]
    };
    header.opcode = opcode;
    let node_sel = if raw_node.is_none() { input.u8() } else { 0 };
    // The handle comes first so that the node can default to the one it was opened on.
    let (fh, fh_node) = if uses_handle(opcode) {
        known.handle(input.u8(), input)
    } else {
        (0, ROOT)
    };
    header.nodeid = match raw_node {
        Some(n) => n,
        None if node_sel == 0 && uses_handle(opcode) => fh_node,
        None => known.node(node_sel, input),
    };
    let (body, out_len) = if sel >= RAW_OP {
        let body = input.blob().to_vec();
        (body, u32::from(input.u16()).min(MAX_SEG))
    } else {
        body_for(opcode, fh, input, known)
    };
    header.len = len_override.unwrap_or(HDR + body.len() as u32);
    let layout = layout(input, HDR as usize + body.len(), out_len);
    Request {
        header,
        body,
        out_len,
        layout,
    }
}

fn body_for(opcode: u32, fh: u64, input: &mut Input, known: &mut Known) -> (Vec<u8>, u32) {
    let mut b = Vec::new();
    let out = match opcode {
        op::LOOKUP => {
            b.extend(name(input));
            OUT + ENTRY
        }
        op::FORGET => {
            push(&mut b, input.small());
            0
        }
        op::GETATTR => {
            let flags = u32::from(input.u8() & 1);
            let fh = known.handle(input.u8(), input).0;
            push(
                &mut b,
                GetattrIn {
                    flags,
                    dummy: 0,
                    fh,
                },
            );
            ATTR_OUT
        }
        op::SETATTR => {
            let valid = input.u32();
            let fh = known.handle(input.u8(), input).0;
            push(
                &mut b,
                SetattrIn {
                    valid,
                    fh,
                    size: input.small(),
                    mode: input.u32(),
                    uid: input.u32(),
                    gid: input.u32(),
                    atime: input.small(),
                    mtime: input.small(),
                    atimensec: input.u32(),
                    mtimensec: input.u32(),
                    ..Default::default()
                },
            );
            ATTR_OUT
        }
        op::READLINK => OUT + 4096,
        op::SYMLINK => {
            b.extend(name(input));
            b.extend(pick(input, TARGETS));
            OUT + ENTRY
        }
        op::MKNOD => {
            let mode = input.u32();
            let rdev = input.u32();
            let umask = input.u32();
            push(
                &mut b,
                MknodIn {
                    mode,
                    rdev,
                    umask,
                    padding: 0,
                },
            );
            b.extend(name(input));
            OUT + ENTRY
        }
        op::MKDIR => {
            let mode = input.u32();
            let umask = input.u32();
            push(&mut b, MkdirIn { mode, umask });
            b.extend(name(input));
            OUT + ENTRY
        }
        op::UNLINK | op::RMDIR => {
            b.extend(name(input));
            OUT
        }
        op::RENAME | op::RENAME2 => {
            let newdir = known.node(input.u8(), input);
            if opcode == op::RENAME2 {
                let flags = input.u32();
                push(
                    &mut b,
                    Rename2In {
                        newdir,
                        flags,
                        padding: 0,
                    },
                );
            } else {
                push(&mut b, RenameIn { newdir });
            }
            b.extend(name(input));
            b.extend(name(input));
            OUT
        }
        op::LINK => {
            let oldnodeid = known.node(input.u8(), input);
            push(&mut b, LinkIn { oldnodeid });
            b.extend(name(input));
            OUT + ENTRY
        }
        op::OPEN | op::OPENDIR => {
            let flags = input.u32();
            push(
                &mut b,
                OpenIn {
                    flags,
                    fuse_flags: 0,
                },
            );
            OUT + OPEN_OUT
        }
        op::READ | op::READDIR | op::READDIRPLUS => {
            let offset = input.small();
            let size = input.u32();
            let flags = input.u32();
            push(
                &mut b,
                ReadIn {
                    fh,
                    offset,
                    size,
                    flags,
                    ..Default::default()
                },
            );
            capped(u64::from(size))
        }
        op::WRITE => {
            let offset = input.small();
            let data = input.blob().to_vec();
            let lie = input.u8();
            let size = match lie {
                0 => data.len() as u32,
                l => u32::from(l).wrapping_mul(997),
            };
            let flags = input.u32();
            push(
                &mut b,
                WriteIn {
                    fh,
                    offset,
                    size,
                    flags,
                    ..Default::default()
                },
            );
            b.extend(data);
            OUT + 8
        }
        op::STATFS => OUT + 80,
        op::RELEASE | op::RELEASEDIR => {
            let flags = input.u32();
            let release_flags = input.u32();
            let lock_owner = input.small();
            push(
                &mut b,
                ReleaseIn {
                    fh,
                    flags,
                    release_flags,
                    lock_owner,
                },
            );
            OUT
        }
        op::FSYNC | op::FSYNCDIR => {
            let fsync_flags = input.u32();
            push(
                &mut b,
                FsyncIn {
                    fh,
                    fsync_flags,
                    padding: 0,
                },
            );
            OUT
        }
        op::SETXATTR => {
            let name = pick(input, XATTRS);
            let value = input.blob().to_vec();
            let lie = input.u8();
            let size = match lie {
                0 => value.len() as u32,
                l => u32::from(l).wrapping_mul(4099),
            };
            let flags = input.u32();
            push(&mut b, SetxattrIn { size, flags });
            b.extend(name);
            b.extend(value);
            OUT
        }
        op::GETXATTR | op::LISTXATTR => {
            let size = input.u32();
            push(&mut b, GetxattrIn { size, padding: 0 });
            if opcode == op::GETXATTR {
                b.extend(pick(input, XATTRS));
            }
            if size == 0 {
                OUT + 8
            } else {
                capped(u64::from(size))
            }
        }
        op::REMOVEXATTR => {
            b.extend(pick(input, XATTRS));
            OUT
        }
        op::FLUSH => {
            let lock_owner = input.small();
            push(
                &mut b,
                FlushIn {
                    fh,
                    unused: 0,
                    padding: 0,
                    lock_owner,
                },
            );
            OUT
        }
        op::INIT => {
            // 0: what Linux 6.x sends; anything else: raw version and flags.
            let (major, minor, flags, flags2) = match input.u8() {
                0 => (7, 38, 0x73ff_fffb, 0x0000_0007),
                _ => (input.u32(), input.u32(), input.u32(), input.u32()),
            };
            push(
                &mut b,
                InitIn {
                    major,
                    minor,
                    max_readahead: 0x20000,
                    flags,
                },
            );
            if minor >= 36 {
                push(
                    &mut b,
                    InitIn2 {
                        flags2,
                        unused: [0; 11],
                    },
                );
            }
            OUT + 64
        }
        op::GETLK | op::SETLK | op::SETLKW => {
            let owner = input.small();
            let start = input.small();
            let end = match input.u8() {
                0 => i64::MAX as u64,
                0xff => input.u64(),
                e => start.saturating_add(u64::from(e)),
            };
            let type_ = match input.u8() % 4 {
                0 => libc::F_RDLCK as u32,
                1 => libc::F_WRLCK as u32,
                2 => libc::F_UNLCK as u32,
                _ => input.u32(),
            };
            let lk_flags = u32::from(input.u8() & 1);
            push(
                &mut b,
                LkIn {
                    fh,
                    owner,
                    lk: FileLock {
                        start,
                        end,
                        type_,
                        pid: 1,
                    },
                    lk_flags,
                    padding: 0,
                },
            );
            if opcode == op::GETLK {
                OUT + 24
            } else {
                OUT
            }
        }
        op::ACCESS => {
            push(&mut b, input.u32());
            push(&mut b, 0u32);
            OUT
        }
        op::CREATE | op::TMPFILE => {
            let flags = input.u32();
            let mode = input.u32();
            let umask = input.u32();
            push(
                &mut b,
                CreateIn {
                    flags,
                    mode,
                    umask,
                    fuse_flags: 0,
                },
            );
            if opcode == op::CREATE {
                b.extend(name(input));
            }
            OUT + ENTRY + OPEN_OUT
        }
        op::INTERRUPT => {
            push(&mut b, input.small());
            0
        }
        op::BMAP => {
            push(&mut b, input.u64());
            push(&mut b, input.u32());
            push(&mut b, 0u32);
            OUT + 8
        }
        op::DESTROY => OUT,
        op::IOCTL => {
            let flags = input.u32();
            let cmd = match input.u8() {
                0xff => input.u32(),
                s => IOCTLS[s as usize % IOCTLS.len()],
            };
            let arg = input.u64();
            let data = input.blob().to_vec();
            let in_size = match input.u8() {
                0 => data.len() as u32,
                _ => input.u32(),
            };
            let out_size = input.u32();
            push(
                &mut b,
                IoctlIn {
                    fh,
                    flags,
                    cmd,
                    arg,
                    in_size,
                    out_size,
                },
            );
            b.extend(data);
            OUT + 16 + out_size.min(4096)
        }
        op::POLL => {
            push(
                &mut b,
                PollIn {
                    fh,
                    kh: input.u64(),
                    flags: input.u32(),
                    events: input.u32(),
                },
            );
            OUT + 8
        }
        op::BATCH_FORGET => {
            let n = input.u8() % 16;
            let count = match input.u8() {
                0 => u32::from(n),
                _ => input.u32(),
            };
            push(&mut b, count);
            push(&mut b, 0u32);
            for _ in 0..n {
                let node = known.node(input.u8(), input);
                push(&mut b, node);
                push(&mut b, input.small());
            }
            0
        }
        op::FALLOCATE => {
            push(
                &mut b,
                FallocateIn {
                    fh,
                    offset: input.small(),
                    length: input.small(),
                    mode: input.u32(),
                    padding: 0,
                },
            );
            OUT
        }
        op::LSEEK => {
            push(
                &mut b,
                LseekIn {
                    fh,
                    offset: input.small(),
                    whence: u32::from(input.u8()),
                    padding: 0,
                },
            );
            OUT + 8
        }
        op::COPY_FILE_RANGE => {
            let offset_in = input.small();
            let (fh_out, nodeid_out) = known.handle(input.u8(), input);
            push(
                &mut b,
                CopyFileRangeIn {
                    fh_in: fh,
                    offset_in,
                    nodeid_out,
                    fh_out,
                    offset_out: input.small(),
                    len: input.small(),
                    flags: input.small(),
                },
            );
            OUT + 8
        }
        op::SYNCFS => {
            push(&mut b, 0u64);
            OUT
        }
        // NOTIFY_REPLY, SETUPMAPPING, REMOVEMAPPING: whatever bytes.
        _ => {
            b.extend_from_slice(input.blob());
            if opcode == op::NOTIFY_REPLY {
                0
            } else {
                OUT
            }
        }
    };
    (b, out)
}

/// The selector byte for `opcode`.
pub fn op_byte(opcode: u32) -> u8 {
    OPS.iter()
        .position(|&o| o == opcode)
        .expect("an opcode in OPS") as u8
}

/// The selector byte for a name in [`NAMES`].
pub fn name_byte(name: &[u8]) -> u8 {
    NAMES
        .iter()
        .position(|&n| n == name)
        .expect("a name in NAMES") as u8
}
