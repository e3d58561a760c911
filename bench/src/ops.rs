//! Typed FUSE operations: each builds a [`FuseRequest`] shaped as Linux sends it and a parser
//! for the reply. Transport-agnostic: the blocking [`crate::FuseClient`] and the pipelined
//! [`crate::Pipeline`] both run them.

use vm_memory::ByteValued;

use crate::error::{Error, Result};
use crate::fuse_abi::*;
use crate::fuse_req::{FuseReply, FuseRequest, Payload};

/// A request plus the function that turns its reply into `T`.
#[derive(Debug, Clone)]
pub struct Call<T> {
    /// The request.
    pub req: FuseRequest,
    /// Reply parser.
    pub parse: fn(&FuseReply) -> Result<T>,
}

fn exact<T: ByteValued + Default>(op: &str, r: &FuseReply) -> Result<T> {
    let n = std::mem::size_of::<T>();
    if r.body_len != n {
        return Err(Error::Protocol(format!(
            "{op}: reply payload is {} bytes, expected {n}",
            r.body_len
        )));
    }
    read_pod(&r.body).ok_or_else(|| Error::Protocol(format!("{op}: short reply")))
}

fn empty(r: &FuseReply) -> Result<()> {
    if r.body_len != 0 {
        return Err(Error::Protocol(format!(
            "reply carries {} unexpected payload bytes",
            r.body_len
        )));
    }
    Ok(())
}

fn entry(r: &FuseReply) -> Result<EntryOut> {
    exact("entry reply", r)
}

fn attr(r: &FuseReply) -> Result<AttrOut> {
    exact("attr reply", r)
}

fn open(r: &FuseReply) -> Result<OpenOut> {
    exact("open reply", r)
}

fn data(r: &FuseReply) -> Result<Vec<u8>> {
    Ok(r.body.clone())
}

fn data_len(r: &FuseReply) -> Result<usize> {
    Ok(r.body_len)
}

/// FUSE_INIT with the given protocol minor, readahead and flags (flags2 in the high half).
pub fn init(minor: u32, max_readahead: u32, flags: u64) -> Call<InitOut> {
    let arg = InitIn {
        major: FUSE_KERNEL_VERSION,
        minor,
        max_readahead,
        flags: flags as u32,
        flags2: (flags >> 32) as u32,
        unused: [0; 11],
    };
    Call {
        req: FuseRequest::new(opcode::INIT, 0)
            .arg(&arg)
            .out(std::mem::size_of::<InitOut>()),
        parse: |r| {
            // Daemons speaking an older minor may send a shorter fuse_init_out; the kernel
            // accepts any length up to the full struct and zero-fills the rest.
            if r.body_len < 24 || r.body_len > std::mem::size_of::<InitOut>() {
                return Err(Error::Protocol(format!(
                    "init reply payload is {} bytes",
                    r.body_len
                )));
            }
            let mut full = r.body.clone();
            full.resize(std::mem::size_of::<InitOut>(), 0);
            read_pod(&full).ok_or_else(|| Error::Protocol("init: short reply".into()))
        },
    }
}

/// FUSE_LOOKUP.
pub fn lookup(parent: u64, name: &[u8]) -> Call<EntryOut> {
    Call {
        req: FuseRequest::new(opcode::LOOKUP, parent)
            .name(name)
            .out(std::mem::size_of::<EntryOut>()),
        parse: entry,
    }
}

/// FUSE_FORGET (high-priority queue, no reply).
pub fn forget(nodeid: u64, nlookup: u64) -> Call<()> {
    let mut req = FuseRequest::new(opcode::FORGET, nodeid).arg(&ForgetIn { nlookup });
    req.no_reply = true;
    Call {
        req,
        parse: |_| Ok(()),
    }
}

/// FUSE_BATCH_FORGET (no reply).
pub fn batch_forget(items: &[(u64, u64)]) -> Call<()> {
    let mut req = FuseRequest::new(opcode::BATCH_FORGET, 0).arg(&BatchForgetIn {
        count: items.len() as u32,
        dummy: 0,
    });
    for &(nodeid, nlookup) in items {
        req = req.arg(&ForgetOne { nodeid, nlookup });
    }
    req.no_reply = true;
    Call {
        req,
        parse: |_| Ok(()),
    }
}

/// FUSE_GETATTR, optionally by file handle.
pub fn getattr(nodeid: u64, fh: Option<u64>) -> Call<AttrOut> {
    let arg = GetattrIn {
        getattr_flags: if fh.is_some() { FUSE_GETATTR_FH } else { 0 },
        dummy: 0,
        fh: fh.unwrap_or(0),
    };
    Call {
        req: FuseRequest::new(opcode::GETATTR, nodeid)
            .arg(&arg)
            .out(std::mem::size_of::<AttrOut>()),
        parse: attr,
    }
}

/// FUSE_SETATTR with a caller-filled `fuse_setattr_in`.
pub fn setattr(nodeid: u64, arg: &SetattrIn) -> Call<AttrOut> {
    Call {
        req: FuseRequest::new(opcode::SETATTR, nodeid)
            .arg(arg)
            .out(std::mem::size_of::<AttrOut>()),
        parse: attr,
    }
}

/// FUSE_OPEN.
pub fn open_file(nodeid: u64, flags: u32) -> Call<OpenOut> {
    Call {
        req: FuseRequest::new(opcode::OPEN, nodeid)
            .arg(&OpenIn {
                flags,
                open_flags: 0,
            })
            .out(std::mem::size_of::<OpenOut>()),
        parse: open,
    }
}

/// FUSE_CREATE: returns the new entry and the open file.
pub fn create(
    parent: u64,
    name: &[u8],
    flags: u32,
    mode: u32,
    umask: u32,
) -> Call<(EntryOut, OpenOut)> {
    let arg = CreateIn {
        flags,
        mode,
        umask,
        open_flags: 0,
    };
    Call {
        req: FuseRequest::new(opcode::CREATE, parent)
            .arg(&arg)
            .name(name)
            .out(std::mem::size_of::<EntryOut>() + std::mem::size_of::<OpenOut>()),
        parse: |r| {
            let n = std::mem::size_of::<EntryOut>();
            if r.body_len != n + std::mem::size_of::<OpenOut>() {
                return Err(Error::Protocol(format!(
                    "create reply payload is {} bytes",
                    r.body_len
                )));
            }
            let e = read_pod(&r.body).ok_or_else(|| Error::Protocol("create: short".into()))?;
            let o = read_pod(r.body.get(n..).unwrap_or_default())
                .ok_or_else(|| Error::Protocol("create: short".into()))?;
            Ok((e, o))
        },
    }
}

/// FUSE_READ of `size` bytes at `offset`; returns the data.
pub fn read(nodeid: u64, fh: u64, offset: u64, size: u32) -> Call<Vec<u8>> {
    Call {
        req: read_req(opcode::READ, nodeid, fh, offset, size),
        parse: data,
    }
}

/// FUSE_READ that leaves the data in guest memory and returns only its length.
pub fn read_discard(nodeid: u64, fh: u64, offset: u64, size: u32) -> Call<usize> {
    let mut req = read_req(opcode::READ, nodeid, fh, offset, size);
    req.keep_data = false;
    Call {
        req,
        parse: data_len,
    }
}

fn read_req(op: u32, nodeid: u64, fh: u64, offset: u64, size: u32) -> FuseRequest {
    FuseRequest::new(op, nodeid)
        .arg(&ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        })
        .out_data(size)
}

/// FUSE_WRITE; returns the count written.
pub fn write(nodeid: u64, fh: u64, offset: u64, data: Payload) -> Call<u32> {
    let arg = WriteIn {
        fh,
        offset,
        size: data.len() as u32,
        ..Default::default()
    };
    Call {
        req: FuseRequest::new(opcode::WRITE, nodeid)
            .arg(&arg)
            .payload(data)
            .out(std::mem::size_of::<WriteOut>()),
        parse: |r| exact::<WriteOut>("write reply", r).map(|w| w.size),
    }
}

/// FUSE_RELEASE.
pub fn release(nodeid: u64, fh: u64, flags: u32) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::RELEASE, nodeid).arg(&ReleaseIn {
            fh,
            flags,
            ..Default::default()
        }),
        parse: empty,
    }
}

/// FUSE_FLUSH (sent by close(2) before RELEASE).
pub fn flush(nodeid: u64, fh: u64, lock_owner: u64) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::FLUSH, nodeid).arg(&FlushIn {
            fh,
            lock_owner,
            ..Default::default()
        }),
        parse: empty,
    }
}

/// FUSE_FSYNC.
pub fn fsync(nodeid: u64, fh: u64, datasync: bool) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::FSYNC, nodeid).arg(&FsyncIn {
            fh,
            fsync_flags: u32::from(datasync),
            padding: 0,
        }),
        parse: empty,
    }
}

/// FUSE_OPENDIR.
pub fn opendir(nodeid: u64, flags: u32) -> Call<OpenOut> {
    Call {
        req: FuseRequest::new(opcode::OPENDIR, nodeid)
            .arg(&OpenIn {
                flags,
                open_flags: 0,
            })
            .out(std::mem::size_of::<OpenOut>()),
        parse: open,
    }
}

/// FUSE_RELEASEDIR.
pub fn releasedir(nodeid: u64, fh: u64) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::RELEASEDIR, nodeid).arg(&ReleaseIn {
            fh,
            ..Default::default()
        }),
        parse: empty,
    }
}

/// One `fuse_dirent` (from READDIR, or the tail of a READDIRPLUS record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Offset to resume after this entry.
    pub off: u64,
    /// DT_* type.
    pub typ: u32,
    /// Name bytes.
    pub name: Vec<u8>,
    /// READDIRPLUS only: the lookup result (nodeid 0 = no lookup reference taken).
    pub entry: Option<EntryOut>,
}

/// FUSE_READDIR into a `size`-byte buffer (Linux uses one page).
pub fn readdir(nodeid: u64, fh: u64, offset: u64, size: u32) -> Call<Vec<DirEntry>> {
    Call {
        req: read_req(opcode::READDIR, nodeid, fh, offset, size),
        parse: |r| parse_dirents(&r.body, false),
    }
}

/// FUSE_READDIRPLUS into a `size`-byte buffer (Linux uses one page).
pub fn readdirplus(nodeid: u64, fh: u64, offset: u64, size: u32) -> Call<Vec<DirEntry>> {
    Call {
        req: read_req(opcode::READDIRPLUS, nodeid, fh, offset, size),
        parse: |r| parse_dirents(&r.body, true),
    }
}

/// Parses a READDIR / READDIRPLUS buffer, checking every record's bounds and padding.
pub fn parse_dirents(mut buf: &[u8], plus: bool) -> Result<Vec<DirEntry>> {
    let esz = std::mem::size_of::<EntryOut>();
    let dsz = std::mem::size_of::<Dirent>();
    let mut out = Vec::new();
    while !buf.is_empty() {
        let entry = if plus {
            let e: EntryOut =
                read_pod(buf).ok_or_else(|| Error::Protocol("truncated fuse_direntplus".into()))?;
            buf = &buf[esz..];
            Some(e)
        } else {
            None
        };
        let d: Dirent =
            read_pod(buf).ok_or_else(|| Error::Protocol("truncated fuse_dirent".into()))?;
        let namelen = d.namelen as usize;
        if namelen == 0 || namelen > 1024 {
            return Err(Error::Protocol(format!("dirent name length {namelen}")));
        }
        let name = buf
            .get(dsz..dsz + namelen)
            .ok_or_else(|| Error::Protocol("dirent name runs past the buffer".into()))?
            .to_vec();
        let rec = dirent_align(dsz + namelen);
        if rec > buf.len() {
            return Err(Error::Protocol(
                "dirent padding runs past the buffer".into(),
            ));
        }
        buf = &buf[rec..];
        out.push(DirEntry {
            ino: d.ino,
            off: d.off,
            typ: d.typ,
            name,
            entry,
        });
    }
    Ok(out)
}

/// FUSE_MKDIR.
pub fn mkdir(parent: u64, name: &[u8], mode: u32, umask: u32) -> Call<EntryOut> {
    Call {
        req: FuseRequest::new(opcode::MKDIR, parent)
            .arg(&MkdirIn { mode, umask })
            .name(name)
            .out(std::mem::size_of::<EntryOut>()),
        parse: entry,
    }
}

/// FUSE_MKNOD.
pub fn mknod(parent: u64, name: &[u8], mode: u32, rdev: u32, umask: u32) -> Call<EntryOut> {
    Call {
        req: FuseRequest::new(opcode::MKNOD, parent)
            .arg(&MknodIn {
                mode,
                rdev,
                umask,
                padding: 0,
            })
            .name(name)
            .out(std::mem::size_of::<EntryOut>()),
        parse: entry,
    }
}

/// FUSE_SYMLINK: `name` in `parent` pointing at `target`.
pub fn symlink(parent: u64, name: &[u8], target: &[u8]) -> Call<EntryOut> {
    Call {
        req: FuseRequest::new(opcode::SYMLINK, parent)
            .name(name)
            .name(target)
            .out(std::mem::size_of::<EntryOut>()),
        parse: entry,
    }
}

/// FUSE_READLINK (Linux offers one page).
pub fn readlink(nodeid: u64) -> Call<Vec<u8>> {
    Call {
        req: FuseRequest::new(opcode::READLINK, nodeid).out_data(PAGE as u32),
        parse: data,
    }
}

const PAGE: usize = 4096;

/// FUSE_LINK: a new name for `nodeid` in `newparent`.
pub fn link(nodeid: u64, newparent: u64, newname: &[u8]) -> Call<EntryOut> {
    Call {
        req: FuseRequest::new(opcode::LINK, newparent)
            .arg(&LinkIn { oldnodeid: nodeid })
            .name(newname)
            .out(std::mem::size_of::<EntryOut>()),
        parse: entry,
    }
}

/// FUSE_UNLINK.
pub fn unlink(parent: u64, name: &[u8]) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::UNLINK, parent).name(name),
        parse: empty,
    }
}

/// FUSE_RMDIR.
pub fn rmdir(parent: u64, name: &[u8]) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::RMDIR, parent).name(name),
        parse: empty,
    }
}

/// FUSE_RENAME2 (flags 0 = plain rename).
pub fn rename(parent: u64, name: &[u8], newparent: u64, newname: &[u8], flags: u32) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::RENAME2, parent)
            .arg(&Rename2In {
                newdir: newparent,
                flags,
                padding: 0,
            })
            .name(name)
            .name(newname),
        parse: empty,
    }
}

/// FUSE_SETLK (`wait`: SETLKW) of `lock_type` (F_RDLCK, F_WRLCK, F_UNLCK) over the whole
/// file for `owner`; `flock`: flock(2) semantics (FUSE_LK_FLOCK), else a POSIX lock.
pub fn setlk(
    nodeid: u64,
    fh: u64,
    owner: u64,
    lock_type: i32,
    flock: bool,
    wait: bool,
) -> Call<()> {
    let mut body = Vec::with_capacity(48);
    body.extend_from_slice(&fh.to_ne_bytes());
    body.extend_from_slice(&owner.to_ne_bytes());
    body.extend_from_slice(&0u64.to_ne_bytes()); // start
    body.extend_from_slice(&(i64::MAX as u64).to_ne_bytes()); // end: to EOF
    body.extend_from_slice(&(lock_type as u32).to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes()); // pid
    body.extend_from_slice(&u32::from(flock).to_ne_bytes()); // lk_flags: FUSE_LK_FLOCK = 1
    body.extend_from_slice(&0u32.to_ne_bytes()); // padding
    let op = if wait { opcode::SETLKW } else { opcode::SETLK };
    Call {
        req: FuseRequest::new(op, nodeid).bytes(&body),
        parse: empty,
    }
}

/// FUSE_STATFS.
pub fn statfs(nodeid: u64) -> Call<Kstatfs> {
    Call {
        req: FuseRequest::new(opcode::STATFS, nodeid).out(std::mem::size_of::<Kstatfs>()),
        parse: |r| exact("statfs reply", r),
    }
}

/// FUSE_ACCESS.
pub fn access(nodeid: u64, mask: u32) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::ACCESS, nodeid).arg(&AccessIn { mask, padding: 0 }),
        parse: empty,
    }
}

/// FUSE_GETXATTR with `size` 0: returns the value's size.
pub fn getxattr_size(nodeid: u64, name: &[u8]) -> Call<u32> {
    Call {
        req: FuseRequest::new(opcode::GETXATTR, nodeid)
            .arg(&GetxattrIn {
                size: 0,
                padding: 0,
            })
            .name(name)
            .out(std::mem::size_of::<GetxattrOut>()),
        parse: |r| exact::<GetxattrOut>("getxattr reply", r).map(|o| o.size),
    }
}

/// FUSE_GETXATTR into a `size`-byte buffer: returns the value.
pub fn getxattr(nodeid: u64, name: &[u8], size: u32) -> Call<Vec<u8>> {
    Call {
        req: FuseRequest::new(opcode::GETXATTR, nodeid)
            .arg(&GetxattrIn { size, padding: 0 })
            .name(name)
            .out_data(size),
        parse: data,
    }
}

/// FUSE_SETXATTR in the FUSE_SETXATTR_EXT layout (negotiated by default).
pub fn setxattr(nodeid: u64, name: &[u8], value: &[u8], flags: u32) -> Call<()> {
    setxattr_ext(nodeid, name, value, flags, 0)
}

/// FUSE_SETXATTR in the FUSE_SETXATTR_EXT layout with its `setxattr_flags` word
/// (`FUSE_SETXATTR_ACL_KILL_SGID` = 1).
pub fn setxattr_ext(
    nodeid: u64,
    name: &[u8],
    value: &[u8],
    flags: u32,
    setxattr_flags: u32,
) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::SETXATTR, nodeid)
            .arg(&SetxattrIn {
                size: value.len() as u32,
                flags,
                setxattr_flags,
                padding: 0,
            })
            .name(name)
            .bytes(value),
        parse: empty,
    }
}

/// FUSE_LSEEK.
pub fn lseek(nodeid: u64, fh: u64, offset: u64, whence: u32) -> Call<u64> {
    Call {
        req: FuseRequest::new(opcode::LSEEK, nodeid)
            .arg(&LseekIn {
                fh,
                offset,
                whence,
                padding: 0,
            })
            .out(std::mem::size_of::<LseekOut>()),
        parse: |r| exact::<LseekOut>("lseek reply", r).map(|o| o.offset),
    }
}

/// FUSE_FALLOCATE.
pub fn fallocate(nodeid: u64, fh: u64, offset: u64, length: u64, mode: u32) -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::FALLOCATE, nodeid).arg(&FallocateIn {
            fh,
            offset,
            length,
            mode,
            padding: 0,
        }),
        parse: empty,
    }
}

/// FUSE_DESTROY (sent at unmount; the daemon replies with a bare header).
pub fn destroy() -> Call<()> {
    Call {
        req: FuseRequest::new(opcode::DESTROY, 0),
        parse: empty,
    }
}

/// FUSE_INTERRUPT for request `unique` (high-priority queue, no reply).
pub fn interrupt(unique: u64) -> Call<()> {
    let mut req = FuseRequest::new(opcode::INTERRUPT, 0).arg(&InterruptIn { unique });
    req.no_reply = true;
    Call {
        req,
        parse: |_| Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirents_parse_and_reject_overruns() {
        let mut buf = Vec::new();
        for (i, name) in [&b"a"[..], b"hello"].iter().enumerate() {
            let d = Dirent {
                ino: 10 + i as u64,
                off: i as u64 + 1,
                namelen: name.len() as u32,
                typ: 8,
            };
            buf.extend_from_slice(d.as_slice());
            buf.extend_from_slice(name);
            buf.resize(dirent_align(buf.len()), 0);
        }
        let v = parse_dirents(&buf, false).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].name, b"hello");
        buf.truncate(buf.len() - 3);
        assert!(parse_dirents(&buf, false).is_err());
    }
}
