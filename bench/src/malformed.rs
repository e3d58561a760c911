//! Malformed descriptor chains a misbehaving guest driver could send, for protocol tests of any
//! vhost-user-fs daemon: each must get an error reply or be dropped, never crash or hang it.

use std::sync::Arc;

use crate::fuse_abi::{opcode, to_bytes, InHeader};
use crate::memory::{GuestBuf, GuestMemory};
use crate::queue::{Chain, Segment};
use crate::virtqueue::{RawDesc, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use crate::{Error, Result};

/// A request header as the chains here use them (unique 4242), for tests that build their own.
pub fn hdr(op: u32, len: u32, nodeid: u64) -> InHeader {
    InHeader {
        len,
        opcode: op,
        unique: 4242,
        nodeid,
        ..Default::default()
    }
}

/// `(what is wrong, the chain)` pairs, for a guest memory of `mem` bytes at address 0. Every
/// request names the root (node 1).
pub fn chains(mem: u64) -> Vec<(&'static str, Chain)> {
    vec![
        (
            "truncated in_header",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::GETATTR, 40, 1))[..20].to_vec()),
                Segment::Out(256),
            ]),
        ),
        (
            "in_header.len larger than the chain",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::LOOKUP, 4000, 1))),
                Segment::In(b"hello.txt\0".to_vec()),
                Segment::Out(16 + 128),
            ]),
        ),
        (
            "in_header.len smaller than the header",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::LOOKUP, 3, 1))),
                Segment::In(b"hello.txt\0".to_vec()),
                Segment::Out(16 + 128),
            ]),
        ),
        (
            "in_header.len of 4 GiB",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::WRITE, u32::MAX, 1))),
                Segment::Out(64),
            ]),
        ),
        (
            "no writable buffer",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::GETATTR, 56, 1))),
                Segment::In(vec![0; 16]),
            ]),
        ),
        (
            "reply buffer smaller than a header",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::GETATTR, 56, 1))),
                Segment::In(vec![0; 16]),
                Segment::Out(8),
            ]),
        ),
        (
            "writable before readable",
            Chain::new(vec![
                Segment::Out(16 + 104),
                Segment::In(to_bytes(&hdr(opcode::GETATTR, 56, 1))),
                Segment::In(vec![0; 16]),
            ]),
        ),
        (
            "readable buffer past the end of guest memory",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::GETATTR, 56, 1))),
                Segment::InAt {
                    addr: mem - 8,
                    len: 16,
                },
                Segment::Out(16 + 104),
            ]),
        ),
        (
            "writable buffer at an address that is not guest memory",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::GETATTR, 56, 1))),
                Segment::In(vec![0; 16]),
                Segment::OutAt {
                    addr: 1 << 40,
                    len: 4096,
                },
            ]),
        ),
        (
            "readdir asking for 4 GiB into a small buffer",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::READDIR, 80, 1))),
                Segment::In({
                    // fuse_read_in: fh, offset, size=u32::MAX, ...
                    let mut v = vec![0u8; 40];
                    v[16..20].copy_from_slice(&u32::MAX.to_ne_bytes());
                    v
                }),
                Segment::Out(4096),
            ]),
        ),
        (
            "setxattr whose size field lies",
            Chain::new(vec![
                Segment::In(to_bytes(&hdr(opcode::SETXATTR, 40 + 8 + 8, 1))),
                Segment::In({
                    let mut v = vec![0u8; 8];
                    v[0..4].copy_from_slice(&1000u32.to_ne_bytes());
                    v
                }),
                Segment::In(b"user.x\0y".to_vec()),
                Segment::Out(16),
            ]),
        ),
    ]
}

/// A GETATTR of the root whose descriptor chain loops back on itself (the second descriptor
/// links to the first), laid out in `mem`: the buffer, to keep until the request is answered or
/// given up on, and the descriptors, for `FuseClient::raw_descs`.
pub fn looping_chain(mem: &Arc<GuestMemory>) -> Result<(GuestBuf, [RawDesc; 3])> {
    let b = mem
        .alloc(4096, 4096)
        .ok_or_else(|| Error::Config("guest memory is full".into()))?;
    b.write_at(0, &to_bytes(&hdr(opcode::GETATTR, 56, 1)))?;
    let descs = [
        RawDesc {
            addr: b.gpa(),
            len: 40,
            flags: VRING_DESC_F_NEXT,
            next: 1,
        },
        RawDesc {
            addr: b.gpa() + 64,
            len: 16,
            flags: VRING_DESC_F_NEXT,
            next: 0,
        },
        RawDesc {
            addr: b.gpa() + 1024,
            len: 200,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        },
    ];
    Ok((b, descs))
}
