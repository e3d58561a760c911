//! The device state as it travels from the source daemon to the destination: plain data, and
//! its versioned wire format.
//!
//! ```text
//! magic    16 bytes  "vufsd-devstate\0\0"
//! version  u32 LE    FORMAT_VERSION
//! length   u64 LE    of the body
//! body     ...       the fields of `State`, in order
//! checksum u64 LE    FNV-1a of the body
//! ```
//!
//! In the body, integers are LEB128 varints (i32s zigzagged), byte strings a varint length and
//! the bytes, and each inode record starts with a byte of flags (has a path, has a handle, on
//! the root's device). Inode records go in path order and each path is front-coded: the length
//! it shares with the previous record's path, then the rest. A tree of 100,000 inodes then
//! takes about 25 bytes per inode instead of 75.
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
pub const FORMAT_VERSION: u32 = 2;

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

/// What FUSE_INIT negotiated: the guest does not send INIT again after the switch, and goes
/// on relying on each of these (even on the shape of its requests: SETXATTR_EXT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseState {
    pub writeback: bool,
    pub posix_acl: bool,
    pub submounts: bool,
    pub killpriv_v2: bool,
    pub setxattr_ext: bool,
}

impl FuseState {
    const BITS: [u64; 5] = [1, 2, 4, 8, 16];

    fn to_bits(self) -> u64 {
        [
            self.writeback,
            self.posix_acl,
            self.submounts,
            self.killpriv_v2,
            self.setxattr_ext,
        ]
        .iter()
        .zip(Self::BITS)
        .filter(|(on, _)| **on)
        .map(|(_, bit)| bit)
        .sum()
    }

    fn from_bits(bits: u64) -> Option<Self> {
        if bits & !Self::BITS.iter().sum::<u64>() != 0 {
            return None;
        }
        let on = |i: usize| bits & Self::BITS[i] != 0;
        Some(Self {
            writeback: on(0),
            posix_acl: on(1),
            submounts: on(2),
            killpriv_v2: on(3),
            setxattr_ext: on(4),
        })
    }
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

/// Inode record flags.
const HAS_PATH: u8 = 1;
const HAS_HANDLE: u8 = 2;
/// On the same device as the root: `dev` is not repeated.
const ROOT_DEV: u8 = 4;

/// Appends fields to a body.
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn var(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn i32(&mut self, v: i32) {
        self.var(u64::from(((v << 1) ^ (v >> 31)) as u32));
    }
    fn bytes(&mut self, v: &[u8]) {
        self.var(v.len() as u64);
        self.0.extend_from_slice(v);
    }
    fn handle(&mut self, h: &Handle) {
        self.i32(h.handle_type);
        self.bytes(&h.bytes);
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
    fn var(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("an integer longer than 64 bits"))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.var()?).map_err(|_| DecodeError::Invalid("a 32-bit field out of range"))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let z = self.u32()?;
        Ok(((z >> 1) as i32) ^ -((z & 1) as i32))
    }
    fn len(&mut self, max: usize) -> Result<usize, DecodeError> {
        let len = self.var()?;
        usize::try_from(len)
            .ok()
            .filter(|l| *l <= max)
            .ok_or(DecodeError::Invalid(
                "a path or handle longer than possible",
            ))
    }
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, DecodeError> {
        let len = self.len(max)?;
        self.take(len).map(<[u8]>::to_vec)
    }
    fn handle(&mut self) -> Result<Handle, DecodeError> {
        let handle_type = self.i32()?;
        // MAX_HANDLE_SZ.
        let bytes = self.bytes(128)?;
        Ok(Handle { handle_type, bytes })
    }
    /// A record count, bounded by the bytes left (each record takes at least `min_size`).
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.var()?;
        let fits = self.0.len() / min_size.max(1);
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= fits)
            .ok_or(DecodeError::Truncated)
    }
}

/// PATH_MAX: no path inside a share is longer.
const MAX_PATH: usize = 4096;
/// Smallest encoded inode and handle records: flags, id, refcount, type, ino; fh, inode,
/// flags, noatime.
const MIN_INODE: usize = 5;
const MIN_HANDLE: usize = 4;

/// How many leading bytes two paths share.
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A body with the stream's header (magic, version, length) and checksum around it.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 36);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&fnv1a(body).to_le_bytes());
    out
}

impl State {
    /// The state as a stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Enc(Vec::with_capacity(64 + self.inodes.len() * 28));
        b.var(self.fuse.to_bits());
        b.var(self.root.dev);
        b.var(self.root.ino);
        match &self.root.handle {
            None => b.bool(false),
            Some(h) => {
                b.bool(true);
                b.handle(h);
            }
        }
        b.var(self.next_inode);
        b.var(self.next_handle);
        // Path order, so that each path shares most of itself with the one before.
        let mut order: Vec<&InodeRecord> = self.inodes.iter().collect();
        order.sort_by(|x, y| x.path.cmp(&y.path));
        b.var(order.len() as u64);
        let mut prev: &[u8] = &[];
        for i in order {
            let mut flags = 0;
            if i.path.is_some() {
                flags |= HAS_PATH;
            }
            if i.handle.is_some() {
                flags |= HAS_HANDLE;
            }
            if i.dev == self.root.dev {
                flags |= ROOT_DEV;
            }
            b.u8(flags);
            b.var(i.id);
            b.var(i.refcount);
            b.var(u64::from(i.file_type >> 12));
            if i.dev != self.root.dev {
                b.var(i.dev);
            }
            b.var(i.ino);
            if let Some(p) = &i.path {
                let common = shared_prefix(prev, p);
                b.var(common as u64);
                b.bytes(&p[common..]);
                prev = p;
            }
            if let Some(h) = &i.handle {
                b.handle(h);
            }
        }
        b.var(self.handles.len() as u64);
        for h in &self.handles {
            b.var(h.fh);
            b.var(h.inode);
            b.i32(h.flags);
            b.bool(h.noatime_allowed);
        }
        frame(&b.0)
    }

    /// Reads a stream written by [`encode`](Self::encode), refusing anything else.
    pub fn decode(stream: &[u8]) -> Result<State, DecodeError> {
        let header = |at: usize, n: usize| stream.get(at..at + n).ok_or(DecodeError::Truncated);
        if stream.get(..MAGIC.len()) != Some(&MAGIC[..]) {
            return Err(DecodeError::NotOurs);
        }
        let mut word = [0u8; 4];
        word.copy_from_slice(header(16, 4)?);
        let version = u32::from_le_bytes(word);
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let mut dword = [0u8; 8];
        dword.copy_from_slice(header(20, 8)?);
        let len = usize::try_from(u64::from_le_bytes(dword)).map_err(|_| DecodeError::Truncated)?;
        let body = header(28, len)?;
        let end = 28 + len;
        dword.copy_from_slice(header(end, 8)?);
        if stream.len() != end + 8 {
            return Err(DecodeError::Invalid("bytes after the end of the state"));
        }
        if fnv1a(body) != u64::from_le_bytes(dword) {
            return Err(DecodeError::Checksum);
        }
        let mut d = Dec(body);
        let fuse = FuseState::from_bits(d.var()?).ok_or(DecodeError::Invalid(
            "FUSE options this version does not know",
        ))?;
        let root = RootIdentity {
            dev: d.var()?,
            ino: d.var()?,
            handle: if d.bool()? { Some(d.handle()?) } else { None },
        };
        let next_inode = d.var()?;
        let next_handle = d.var()?;
        let n = d.count(MIN_INODE)?;
        let mut inodes = Vec::with_capacity(n);
        let mut prev: Vec<u8> = Vec::new();
        for _ in 0..n {
            let flags = d.u8()?;
            if flags & !(HAS_PATH | HAS_HANDLE | ROOT_DEV) != 0 {
                return Err(DecodeError::Invalid("unknown inode flags"));
            }
            let id = d.var()?;
            let refcount = d.var()?;
            let file_type = d.u32()?.checked_shl(12).filter(|t| *t <= 0o170000);
            let file_type = file_type.ok_or(DecodeError::Invalid("a file type out of range"))?;
            let dev = if flags & ROOT_DEV != 0 {
                root.dev
            } else {
                d.var()?
            };
            let ino = d.var()?;
            let path = if flags & HAS_PATH != 0 {
                let common = d.len(prev.len())?;
                let rest = d.bytes(MAX_PATH - common)?;
                let mut p = prev[..common].to_vec();
                p.extend_from_slice(&rest);
                prev.clone_from(&p);
                Some(p)
            } else {
                None
            };
            let handle = if flags & HAS_HANDLE != 0 {
                Some(d.handle()?)
            } else {
                None
            };
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
                fh: d.var()?,
                inode: d.var()?,
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
                killpriv_v2: true,
                setxattr_ext: true,
                ..FuseState::default()
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
        let mut s = sample();
        // Inodes come back in path order (no path first).
        s.inodes.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(State::decode(&s.encode()), Ok(s.clone()));
        let mut deep = s.clone();
        deep.inodes[1].path = Some(b"a/b/c".to_vec());
        deep.inodes.push(InodeRecord {
            id: 12,
            path: Some(b"a/bz".to_vec()),
            dev: 77,
            ..deep.inodes[0].clone()
        });
        let mut again = State::decode(&deep.encode()).unwrap();
        again.inodes.sort_by_key(|i| i.id);
        deep.inodes.sort_by_key(|i| i.id);
        assert_eq!(again, deep);
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
        let mut other = good.clone();
        other[16] = 1;
        assert_eq!(State::decode(&other), Err(DecodeError::Version(1)));
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
    fn varints_round_trip_and_overlong_ones_are_refused() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut e = Enc(Vec::new());
            e.var(v);
            assert_eq!(Dec(&e.0).var(), Ok(v));
        }
        for v in [0i32, -1, 1, i32::MIN, i32::MAX] {
            let mut e = Enc(Vec::new());
            e.i32(v);
            assert_eq!(Dec(&e.0).i32(), Ok(v));
        }
        assert!(Dec(&[0xff; 11]).var().is_err());
        assert!(Dec(&[0x80]).var().is_err());
    }

    #[test]
    fn a_front_coded_path_cannot_borrow_more_than_the_previous_one_has() {
        let mut s = sample();
        s.inodes.truncate(1);
        let mut bytes = s.encode();
        // The one path "a/b" claims 9 bytes in common with the (empty) previous path.
        let body_at = 28;
        let pos = body_at
            + bytes[body_at..]
                .windows(4)
                .position(|w| w == [0, 3, b'a', b'/'])
                .unwrap();
        bytes[pos] = 9;
        let len = bytes.len();
        let sum = fnv1a(&bytes[body_at..len - 8]);
        bytes[len - 8..].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            State::decode(&bytes),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn counts_and_lengths_cannot_ask_for_more_than_the_stream_holds() {
        // A body claiming 2^40 inodes after the fixed fields: refused, not allocated.
        let mut b = Enc(Vec::new());
        b.var(0);
        b.var(1);
        b.var(2);
        b.bool(false);
        b.var(2);
        b.var(1);
        b.var(1 << 40);
        assert_eq!(State::decode(&frame(&b.0)), Err(DecodeError::Truncated));
    }

    #[test]
    fn a_fuse_option_this_version_does_not_know_is_refused() {
        let mut b = Enc(Vec::new());
        b.var(1 << 10);
        assert!(matches!(
            State::decode(&frame(&b.0)),
            Err(DecodeError::Invalid(_))
        ));
    }
}
