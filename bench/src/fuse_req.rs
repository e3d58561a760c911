//! FUSE request encoding and reply decoding, laid out as Linux's virtiofs driver does
//! (fs/fuse/virtio_fs.c, `virtio_fs_enqueue_req`):
//!
//! device-readable:  `fuse_in_header` | all in-args copied into one buffer | data pages
//! device-writable:  `fuse_out_header` | all fixed out-args in one buffer | data pages
//!
//! Each data page is its own descriptor (4 KiB), as `sg_init_fuse_pages` makes them.

use vm_memory::ByteValued;

use crate::error::{Error, Result};
use crate::fuse_abi::{read_pod, InHeader, OutHeader};
use crate::memory::PAGE_SIZE;
use crate::queue::{Chain, Completion, Segment};

/// Caller credentials placed in every `fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    /// uid of the "guest process".
    pub uid: u32,
    /// gid of the "guest process".
    pub gid: u32,
    /// pid of the "guest process".
    pub pid: u32,
}

impl Default for Creds {
    fn default() -> Self {
        Creds {
            uid: 0,
            gid: 0,
            pid: 1,
        }
    }
}

/// Request payload pages (WRITE data).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Payload {
    /// No data pages.
    #[default]
    None,
    /// Bytes copied into guest memory for this request.
    Bytes(Vec<u8>),
    /// Data already in guest memory (e.g. a pre-filled buffer reused by a benchmark).
    Guest {
        /// Guest physical address.
        gpa: u64,
        /// Length in bytes.
        len: u32,
    },
}

impl Payload {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::None => 0,
            Payload::Bytes(b) => b.len(),
            Payload::Guest { len, .. } => *len as usize,
        }
    }

    /// True if there is no payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A FUSE request before it gets a `unique` and a place in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseRequest {
    /// FUSE opcode.
    pub opcode: u32,
    /// Target node id.
    pub nodeid: u64,
    /// In-args, concatenated (the driver's single argument buffer).
    pub args: Vec<u8>,
    /// Data pages after the args (WRITE).
    pub data: Payload,
    /// Size of the fixed out-args buffer.
    pub out_args: u32,
    /// Size of the out data pages (READ, READDIR, READDIRPLUS, GETXATTR...).
    pub out_data: u32,
    /// Copy the out data pages back (false: only header and fixed out-args).
    pub keep_data: bool,
    /// FORGET-style requests: no writable buffers, no reply.
    pub no_reply: bool,
}

impl FuseRequest {
    /// A request with no arguments that expects a bare `fuse_out_header`.
    pub fn new(opcode: u32, nodeid: u64) -> Self {
        FuseRequest {
            opcode,
            nodeid,
            args: Vec::new(),
            data: Payload::None,
            out_args: 0,
            out_data: 0,
            keep_data: true,
            no_reply: false,
        }
    }

    /// Appends a fixed-size in-arg.
    pub fn arg<T: ByteValued>(mut self, v: &T) -> Self {
        self.args.extend_from_slice(v.as_slice());
        self
    }

    /// Appends raw bytes to the in-args.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.args.extend_from_slice(b);
        self
    }

    /// Appends a name and its terminating NUL.
    pub fn name(mut self, name: &[u8]) -> Self {
        self.args.extend_from_slice(name);
        self.args.push(0);
        self
    }

    /// Sets the fixed out-args size.
    pub fn out(mut self, n: usize) -> Self {
        self.out_args = n as u32;
        self
    }

    /// Sets the out data size.
    pub fn out_data(mut self, n: u32) -> Self {
        self.out_data = n;
        self
    }

    /// Sets the WRITE payload.
    pub fn payload(mut self, p: Payload) -> Self {
        self.data = p;
        self
    }

    /// `fuse_in_header.len`: header, in-args and payload.
    pub fn in_len(&self) -> usize {
        std::mem::size_of::<InHeader>() + self.args.len() + self.data.len()
    }

    /// The header this request is sent with.
    pub fn header(&self, unique: u64, creds: Creds) -> InHeader {
        InHeader {
            len: self.in_len() as u32,
            opcode: self.opcode,
            unique,
            nodeid: self.nodeid,
            uid: creds.uid,
            gid: creds.gid,
            pid: creds.pid,
            total_extlen: 0,
            padding: 0,
        }
    }

    /// The descriptor chain Linux would build for this request.
    pub fn to_chain(&self, unique: u64, creds: Creds) -> Chain {
        let mut segs = vec![Segment::In(self.header(unique, creds).as_slice().to_vec())];
        if !self.args.is_empty() {
            segs.push(Segment::In(self.args.clone()));
        }
        match &self.data {
            Payload::None => {}
            Payload::Bytes(b) => {
                segs.extend(
                    b.chunks(PAGE_SIZE as usize)
                        .map(|c| Segment::In(c.to_vec())),
                );
            }
            Payload::Guest { gpa, len } => segs.extend(pages(*len).map(|(off, n)| Segment::InAt {
                addr: gpa + off,
                len: n,
            })),
        }
        let mut readback = usize::MAX;
        if !self.no_reply {
            segs.push(Segment::Out(std::mem::size_of::<OutHeader>() as u32));
            if self.out_args > 0 {
                segs.push(Segment::Out(self.out_args));
            }
            segs.extend(pages(self.out_data).map(|(_, n)| Segment::Out(n)));
            if !self.keep_data {
                readback = std::mem::size_of::<OutHeader>() + self.out_args as usize;
            }
        }
        Chain {
            segments: segs,
            mode: None,
            readback_limit: readback,
        }
    }
}

/// `(offset, len)` of each 4 KiB page of a `len`-byte buffer.
fn pages(len: u32) -> impl Iterator<Item = (u64, u32)> {
    let p = PAGE_SIZE as u32;
    (0..len.div_ceil(p)).map(move |i| (u64::from(i * p), p.min(len - i * p)))
}

/// A successful FUSE reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseReply {
    /// The reply header (error is 0).
    pub header: OutHeader,
    /// Bytes after the header that were read back (out-args, then data if kept).
    pub body: Vec<u8>,
    /// Bytes after the header the daemon claims (`header.len - 16`).
    pub body_len: usize,
}

/// Validates a completion against the request it answers and splits off the header.
///
/// Strict where Linux trusts the daemon: the used length must equal `out.len`, `out.unique`
/// must match, `out.len` must fit the buffers we offered, and error replies must be a bare
/// header with a valid negative errno. A FUSE error comes back as [`Error::Fuse`].
pub fn decode_reply(req: &FuseRequest, unique: u64, c: &Completion) -> Result<FuseReply> {
    let op = req.opcode;
    let hsz = std::mem::size_of::<OutHeader>();
    let Some(h) = read_pod::<OutHeader>(&c.written) else {
        return Err(Error::Protocol(format!(
            "opcode {op}: reply of {} bytes is shorter than fuse_out_header",
            c.used_len
        )));
    };
    if (c.used_len as usize) < hsz {
        return Err(Error::Protocol(format!(
            "opcode {op}: used length {} is shorter than fuse_out_header",
            c.used_len
        )));
    }
    if h.unique != unique {
        return Err(Error::Protocol(format!(
            "opcode {op}: reply unique {} != request unique {unique}",
            h.unique
        )));
    }
    let len = h.len as usize;
    if len < hsz || len > c.out_capacity {
        return Err(Error::Protocol(format!(
            "opcode {op}: out.len {len} outside [{hsz}, {}]",
            c.out_capacity
        )));
    }
    if len != c.used_len as usize {
        return Err(Error::Protocol(format!(
            "opcode {op}: out.len {len} != used length {}",
            c.used_len
        )));
    }
    if h.error != 0 {
        if !(-4095..0).contains(&h.error) {
            return Err(Error::Protocol(format!(
                "opcode {op}: out.error {} is not a negative errno",
                h.error
            )));
        }
        if len != hsz {
            return Err(Error::Protocol(format!(
                "opcode {op}: error reply {} carries {} bytes of payload",
                h.error,
                len - hsz
            )));
        }
        return Err(Error::Fuse {
            opcode: op,
            errno: -h.error,
        });
    }
    let kept = c.written.len().min(len);
    Ok(FuseReply {
        header: h,
        body: c.written[hsz..kept].to_vec(),
        body_len: len - hsz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse_abi::{opcode, ReadIn, WriteIn};

    #[test]
    fn write_chain_matches_linux_layout() {
        let req = FuseRequest::new(opcode::WRITE, 5)
            .arg(&WriteIn {
                size: 9000,
                ..Default::default()
            })
            .payload(Payload::Bytes(vec![1; 9000]))
            .out(8);
        let c = req.to_chain(2, Creds::default());
        let lens: Vec<_> = c
            .segments
            .iter()
            .map(|s| match s {
                Segment::In(b) => (false, b.len()),
                Segment::Out(n) => (true, *n as usize),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            lens,
            vec![
                (false, 40),
                (false, 40),
                (false, 4096),
                (false, 4096),
                (false, 808),
                (true, 16),
                (true, 8)
            ]
        );
        assert_eq!(req.in_len(), 40 + 40 + 9000);
    }

    #[test]
    fn read_reply_is_validated() {
        let req = FuseRequest::new(opcode::READ, 5)
            .arg(&ReadIn::default())
            .out_data(4096);
        let mut hdr = OutHeader {
            len: 16 + 3,
            error: 0,
            unique: 8,
        };
        let mut written = hdr.as_slice().to_vec();
        written.extend_from_slice(b"abc");
        let mut c = Completion {
            used_len: 19,
            written: written.clone(),
            out_capacity: 16 + 4096,
            latency: Default::default(),
        };
        let r = decode_reply(&req, 8, &c).unwrap();
        assert_eq!(r.body, b"abc");
        assert!(matches!(
            decode_reply(&req, 10, &c),
            Err(Error::Protocol(_))
        ));
        c.used_len = 18;
        assert!(matches!(decode_reply(&req, 8, &c), Err(Error::Protocol(_))));
        hdr.error = -2;
        hdr.len = 16;
        c.written = hdr.as_slice().to_vec();
        c.used_len = 16;
        assert_eq!(decode_reply(&req, 8, &c).unwrap_err().errno(), Some(2));
        c.written.truncate(10);
        assert!(matches!(decode_reply(&req, 8, &c), Err(Error::Protocol(_))));
    }
}
