//! Reading a `vufsd --trace` file (the format is described in vufsd's src/trace.rs) and the
//! fields of the requests and replies it holds.

use crate::error::{Error, Result};
use crate::fuse_abi::opcode as op;

/// "vufsd-trace\0".
pub const MAGIC: &[u8; 12] = b"vufsd-trace\0";
/// The one format version this reader knows.
pub const VERSION: u32 = 1;
/// fuse_in_header / fuse_out_header.
pub const IN_HEADER: usize = 40;
/// fuse_out_header.
pub const OUT_HEADER: usize = 16;
/// fuse_entry_out.
pub const ENTRY_OUT: usize = 128;

/// One request and its reply, as the daemon saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the daemon took it off its queue, ns since the trace began.
    pub start_ns: u64,
    /// When it answered.
    pub end_ns: u64,
    /// vhost-user queue index (0: high priority).
    pub queue: u16,
    /// The request's whole length (a WRITE's data included).
    pub request_len: u32,
    /// The room the guest gave for the reply.
    pub reply_room: u32,
    /// Header and arguments (no WRITE data).
    pub request: Vec<u8>,
    /// Reply header and fixed reply (READDIRPLUS: all of it; READ: the header only).
    pub reply: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Record {
    /// FUSE opcode.
    pub fn opcode(&self) -> u32 {
        u32_at(&self.request, 4).unwrap_or(0)
    }

    /// The header's node id.
    pub fn nodeid(&self) -> u64 {
        u64_at(&self.request, 16).unwrap_or(0)
    }

    /// The arguments after the header.
    pub fn args(&self) -> &[u8] {
        self.request.get(IN_HEADER..).unwrap_or(&[])
    }

    /// The reply's errno (0: success), None when there was no reply.
    pub fn errno(&self) -> Option<i32> {
        u32_at(&self.reply, 4).map(|e| -(e as i32))
    }

    /// The reply after its header.
    pub fn body(&self) -> &[u8] {
        self.reply.get(OUT_HEADER..).unwrap_or(&[])
    }

    /// The node id an entry reply handed out (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE).
    pub fn entry_nodeid(&self) -> Option<u64> {
        u64_at(self.body(), 0).filter(|n| *n != 0)
    }

    /// The file handle an OPEN, OPENDIR or CREATE reply handed out.
    pub fn reply_fh(&self) -> Option<u64> {
        match self.opcode() {
            op::OPEN | op::OPENDIR => u64_at(self.body(), 0),
            op::CREATE => u64_at(self.body(), ENTRY_OUT),
            _ => None,
        }
    }

    /// The first name in the arguments, after `skip` fixed bytes.
    pub fn name(&self, skip: usize) -> Option<&[u8]> {
        let a = self.args().get(skip..)?;
        let end = a.iter().position(|b| *b == 0)?;
        Some(&a[..end])
    }

    /// The second name (RENAME's new name, SYMLINK's target).
    pub fn second_name(&self, skip: usize) -> Option<&[u8]> {
        let a = self.args().get(skip..)?;
        let first = a.iter().position(|b| *b == 0)?;
        let rest = &a[first + 1..];
        let end = rest.iter().position(|b| *b == 0)?;
        Some(&rest[..end])
    }
}

/// Bytes of fixed arguments before the name(s) of a naming request.
pub fn name_offset(opcode: u32) -> usize {
    match opcode {
        op::MKNOD => 16,   // fuse_mknod_in
        op::MKDIR => 8,    // fuse_mkdir_in
        op::CREATE => 16,  // fuse_create_in
        op::RENAME => 8,   // fuse_rename_in
        op::RENAME2 => 16, // fuse_rename2_in
        op::LINK => 8,     // fuse_link_in
        _ => 0,            // LOOKUP, UNLINK, RMDIR, SYMLINK (name, then target)
    }
}

/// Parses a whole trace.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>> {
    let bad = |what: &str| Error::Config(format!("not a vufsd trace: {what}"));
    if bytes.get(..12) != Some(&MAGIC[..]) {
        return Err(bad("no vufsd-trace header"));
    }
    let version = u32_at(bytes, 12).ok_or_else(|| bad("cut short"))?;
    if version != VERSION {
        return Err(bad(&format!(
            "format version {version}, this reads {VERSION}"
        )));
    }
    let mut at = 16;
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u32_at(bytes, at).ok_or_else(|| bad("cut short"))? as usize;
        let rec = bytes
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| bad("a record cut short"))?;
        at += 4 + len;
        // start u64, end u64, queue u16, request_len u32, reply_room u32, n u32 [n], m u32 [m]
        let n = u32_at(rec, 26).ok_or_else(|| bad("a record cut short"))? as usize;
        let request = rec
            .get(30..30 + n)
            .ok_or_else(|| bad("a request cut short"))?;
        let m = u32_at(rec, 30 + n).ok_or_else(|| bad("a record cut short"))? as usize;
        let reply = rec
            .get(34 + n..34 + n + m)
            .ok_or_else(|| bad("a reply cut short"))?;
        out.push(Record {
            start_ns: u64_at(rec, 0).unwrap_or(0),
            end_ns: u64_at(rec, 8).unwrap_or(0),
            queue: u16::from_le_bytes([rec[16], rec[17]]),
            request_len: u32_at(rec, 18).unwrap_or(0),
            reply_room: u32_at(rec, 22).unwrap_or(0),
            request: request.to_vec(),
            reply: reply.to_vec(),
        });
    }
    Ok(out)
}
