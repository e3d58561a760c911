//! The device state as it travels from the source daemon to the destination: plain data, and
//! its versioned wire format.
//!
//! ```text
//! magic    16 bytes  "vufsd-devstate\0\0"
//! version  u32 LE    FORMAT_VERSION
//! length   u64 LE    of the body
//! body     ...       the fields of `State`, in order (integers LE, byte strings u32-length
//!                    prefixed, options a 0/1 byte then the value)
//! checksum u64 LE    FNV-1a of the body
//! ```
//!
//! The stream comes from another process (through QEMU's migration stream or a snapshot file),
//! so nothing in it is trusted: every length is bounded by what is left, counts by what their
//! records could occupy, and a wrong magic, version or checksum is refused with one line that
//! says which.

use std::fmt;

/// "vufsd-devstate", NUL padded: what another daemon's stream (upstream virtiofsd's) will not
/// start with.
pub const MAGIC: [u8; 16] = *b"vufsd-devstate\0\0";
/// Bumped whenever the body changes; a daemon reads only its own version.
pub const FORMAT_VERSION: u32 = 1;

/// Where the source's shared directory was, to tell whether the destination serves the same one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootIdentity {
    pub dev: u64,
    pub ino: u64,
    /// The root's file handle where the filesystem has them.
    pub handle: Option<Handle>,
}

/// A file handle as name_to_handle_at(2) gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

/// One inode the guest knows (holds a lookup count on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeRecord {
    /// The FUSE node id the guest uses.
    pub id: u64,
    /// Lookups the guest has not forgotten yet.
    pub refcount: u64,
    /// S_IFMT bits.
    pub file_type: u32,
    /// (st_dev, st_ino) on the source.
    pub dev: u64,
    pub ino: u64,
    /// Path relative to the shared directory, components separated by '/'; None when the inode
    /// had none (unlinked, moved out of the share, or already lost on the source).
    pub path: Option<Vec<u8>>,
    /// Its file handle on the source, where the filesystem has them.
    pub handle: Option<Handle>,
}

/// One open file or directory of the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleRecord {
    /// The FUSE file handle the guest uses.
    pub fh: u64,
    /// The node it was opened on.
    pub inode: u64,
    /// The host open flags as F_GETFL reports them (access mode, O_APPEND, O_NOATIME, ...).
    pub flags: i32,
    /// Whether the O_NOATIME policy allowed the flag on this handle: a masked handle stays
    /// masked on the destination too.
    pub noatime_allowed: bool,
}

/// What FUSE_INIT negotiated: the guest does not send INIT again after the switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseState {
    pub writeback: bool,
    pub posix_acl: bool,
}

/// Everything the destination needs to go on serving the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub fuse: FuseState,
    pub root: RootIdentity,
    /// The next node id and file handle the source would have handed out: ids are never
    /// reused, across the switch too.
    pub next_inode: u64,
    pub next_handle: u64,
    pub inodes: Vec<InodeRecord>,
    pub handles: Vec<HandleRecord>,
}

/// Why a stream cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a vufsd device state at all (upstream virtiofsd's, say).
    NotOurs,
    /// A vufsd state of another format version.
    Version(u32),
    /// Cut short, or longer than it says.
    Truncated,
    /// The checksum does not match the body.
    Checksum,
    /// A field holds a value no daemon would write.
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOurs => write!(
                f,
                "the device state is not vufsd's (another daemon's, such as upstream \
                 virtiofsd's?): vufsd can only take over from vufsd"
            ),
            Self::Version(v) => write!(
                f,
                "the device state has format version {v}; this vufsd reads version \
                 {FORMAT_VERSION} only: migrate between the same vufsd versions"
            ),
            Self::Truncated => write!(f, "the device state is cut short"),
            Self::Checksum => write!(f, "the device state is corrupt (checksum mismatch)"),
            Self::Invalid(what) => write!(f, "the device state is invalid: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Appends fields to a body.
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        // Paths and handles are far below 4 GiB (PATH_MAX, MAX_HANDLE_SZ).
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
    }
    fn handle(&mut self, h: &Option<Handle>) {
        match h {
            None => self.bool(false),
            Some(h) => {
                self.bool(true);
                self.i32(h.handle_type);
                self.bytes(&h.bytes);
            }
        }
    }
}

/// Reads fields from a body, never past its end.
struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("a flag that is neither 0 nor 1")),
        }
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::Invalid(
                "a path or handle longer than possible",
            ));
        }
        self.take(len).map(<[u8]>::to_vec)
    }
    fn handle(&mut self) -> Result<Option<Handle>, DecodeError> {
        if !self.bool()? {
            return Ok(None);
        }
        let handle_type = self.i32()?;
        // MAX_HANDLE_SZ.
        let bytes = self.bytes(128)?;
        Ok(Some(Handle { handle_type, bytes }))
    }
    /// A record count, bounded by the bytes left (each record takes at least `min_size`).
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.u64()?;
        let fits = self.0.len() / min_size.max(1);
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= fits)
            .ok_or(DecodeError::Truncated)
    }
}

/// PATH_MAX: no path inside a share is longer.
const MAX_PATH: usize = 4096;
/// Smallest encoded inode and handle records (fixed fields, absent options).
const MIN_INODE: usize = 8 + 8 + 4 + 8 + 8 + 1 + 1;
const MIN_HANDLE: usize = 8 + 8 + 4 + 1;

impl State {
    /// The state as a stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Enc(Vec::with_capacity(64 + self.inodes.len() * 64));
        b.bool(self.fuse.writeback);
        b.bool(self.fuse.posix_acl);
        b.u64(self.root.dev);
        b.u64(self.root.ino);
        b.handle(&self.root.handle);
        b.u64(self.next_inode);
        b.u64(self.next_handle);
        b.u64(self.inodes.len() as u64);
        for i in &self.inodes {
            b.u64(i.id);
            b.u64(i.refcount);
            b.u32(i.file_type);
            b.u64(i.dev);
            b.u64(i.ino);
            match &i.path {
                None => b.bool(false),
                Some(p) => {
                    b.bool(true);
                    b.bytes(p);
                }
            }
            b.handle(&i.handle);
        }
        b.u64(self.handles.len() as u64);
        for h in &self.handles {
            b.u64(h.fh);
            b.u64(h.inode);
            b.i32(h.flags);
            b.bool(h.noatime_allowed);
        }
        let body = b.0;
        let mut out = Vec::with_capacity(body.len() + 36);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&fnv1a(&body).to_le_bytes());
        out
    }

    /// Reads a stream written by [`encode`](Self::encode), refusing anything else.
    pub fn decode(stream: &[u8]) -> Result<State, DecodeError> {
        let mut d = Dec(stream);
        if d.take(MAGIC.len()).map_err(|_| DecodeError::NotOurs)? != MAGIC {
            return Err(DecodeError::NotOurs);
        }
        let version = d.u32()?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let len = usize::try_from(d.u64()?).map_err(|_| DecodeError::Truncated)?;
        let body = d.take(len)?;
        let sum = d.u64()?;
        if !d.0.is_empty() {
            return Err(DecodeError::Invalid("bytes after the end of the state"));
        }
        if fnv1a(body) != sum {
            return Err(DecodeError::Checksum);
        }
        let mut d = Dec(body);
        let fuse = FuseState {
            writeback: d.bool()?,
            posix_acl: d.bool()?,
        };
        let root = RootIdentity {
            dev: d.u64()?,
            ino: d.u64()?,
            handle: d.handle()?,
        };
        let next_inode = d.u64()?;
        let next_handle = d.u64()?;
        let n = d.count(MIN_INODE)?;
        let mut inodes = Vec::with_capacity(n);
        for _ in 0..n {
            let id = d.u64()?;
            let refcount = d.u64()?;
            let file_type = d.u32()?;
            let dev = d.u64()?;
            let ino = d.u64()?;
            let path = if d.bool()? {
                Some(d.bytes(MAX_PATH)?)
            } else {
                None
            };
            let handle = d.handle()?;
            inodes.push(InodeRecord {
                id,
                refcount,
                file_type,
                dev,
                ino,
                path,
                handle,
            });
        }
        let n = d.count(MIN_HANDLE)?;
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            handles.push(HandleRecord {
                fh: d.u64()?,
                inode: d.u64()?,
                flags: d.i32()?,
                noatime_allowed: d.bool()?,
            });
        }
        if !d.0.is_empty() {
            return Err(DecodeError::Invalid("bytes after the last record"));
        }
        Ok(State {
            fuse,
            root,
            next_inode,
            next_handle,
            inodes,
            handles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            fuse: FuseState {
                writeback: true,
                posix_acl: false,
            },
            root: RootIdentity {
                dev: 2049,
                ino: 2,
                handle: Some(Handle {
                    handle_type: 1,
                    bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
                }),
            },
            next_inode: 10,
            next_handle: 4,
            inodes: vec![
                InodeRecord {
                    id: 2,
                    refcount: 3,
                    file_type: libc::S_IFDIR,
                    dev: 2049,
                    ino: 17,
                    path: Some(b"a/b".to_vec()),
                    handle: None,
                },
                InodeRecord {
                    id: 9,
                    refcount: 1,
                    file_type: libc::S_IFREG,
                    dev: 2049,
                    ino: 18,
                    path: None,
                    handle: Some(Handle {
                        handle_type: 1,
                        bytes: vec![9; 8],
                    }),
                },
            ],
            handles: vec![HandleRecord {
                fh: 3,
                inode: 9,
                flags: libc::O_RDWR | libc::O_APPEND,
                noatime_allowed: true,
            }],
        }
    }

    #[test]
    fn a_state_survives_the_round_trip() {
        let s = sample();
        assert_eq!(State::decode(&s.encode()), Ok(s));
        let empty = State::default();
        assert_eq!(State::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn foreign_old_and_damaged_streams_are_refused_by_name() {
        let good = sample().encode();
        assert_eq!(State::decode(b""), Err(DecodeError::NotOurs));
        assert_eq!(
            State::decode(b"\x01\x00\x00\x00some other daemon's state"),
            Err(DecodeError::NotOurs)
        );
        let mut v2 = good.clone();
        v2[16] = 2;
        assert_eq!(State::decode(&v2), Err(DecodeError::Version(2)));
        let mut flipped = good.clone();
        let mid = good.len() / 2;
        flipped[mid] ^= 0x40;
        assert_eq!(State::decode(&flipped), Err(DecodeError::Checksum));
        for cut in [20, 28, good.len() - 1] {
            assert_eq!(State::decode(&good[..cut]), Err(DecodeError::Truncated));
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(State::decode(&longer).is_err());
    }

    #[test]
    fn counts_and_lengths_cannot_ask_for_more_than_the_stream_holds() {
        // A body claiming 2^40 inodes after the fixed fields: refused, not allocated.
        let mut b = Enc(Vec::new());
        b.bool(false);
        b.bool(false);
        b.u64(1);
        b.u64(2);
        b.handle(&None);
        b.u64(2);
        b.u64(1);
        b.u64(1 << 40);
        let body = b.0;
        let mut s = MAGIC.to_vec();
        s.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        s.extend_from_slice(&(body.len() as u64).to_le_bytes());
        s.extend_from_slice(&body);
        s.extend_from_slice(&fnv1a(&body).to_le_bytes());
        assert_eq!(State::decode(&s), Err(DecodeError::Truncated));
    }
}
