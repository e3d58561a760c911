//! Thin, safe wrappers around the host syscalls vufsd uses.
//!
//! Every `unsafe` block that talks to the kernel lives here (or, for vhost plumbing, in the
//! crates we build on), so the filesystem code above it can be written in safe Rust. Each wrapper
//! returns `io::Result` with the raw errno preserved, because the errno is what the guest gets.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

mod file_handle;
mod memory;

use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;

/// `stat64` as the kernel fills it and as fuse-backend-rs consumes it.
pub type Stat = libc::stat64;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// An empty C string, for the `AT_EMPTY_PATH` family of calls.
pub const EMPTY: &CStr = c"";

/// `openat(2)`. O_CLOEXEC is always added: no fd of ours may leak into a child.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the returned fd is checked and then
    // owned by exactly one OwnedFd.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just returned by the kernel and is not owned by anything else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(2)` with `AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW` semantics when `name` is empty.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<Stat> {
    let mut st = MaybeUninit::<Stat>::zeroed();
    // SAFETY: `st` is a valid, writable stat64 buffer and `name` is NUL-terminated.
    check(unsafe { libc::fstatat64(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: the kernel filled the struct on success (and it was zeroed before).
    Ok(unsafe { st.assume_init() })
}

/// Stat of the object an (O_PATH) fd refers to, never following a symlink.
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    fstatat(fd, EMPTY, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

/// The birth time of the inode `fd` refers to (statx `STATX_BTIME`), or None where the
/// filesystem keeps none.
pub fn birth_time(fd: BorrowedFd<'_>) -> io::Result<Option<(i64, u32)>> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `stx` is a writable struct statx; EMPTY with AT_EMPTY_PATH names `fd` itself.
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BTIME,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: zeroed before, filled by the kernel on success.
    let stx = unsafe { stx.assume_init() };
    Ok((stx.stx_mask & libc::STATX_BTIME != 0)
        .then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec)))
}

/// A symlink's target, read into unzeroed room for PATH_MAX bytes (most targets are a few
/// dozen bytes: zeroing the whole buffer first would be wasted work).
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fill_spare(&mut buf, libc::PATH_MAX as usize, |ptr, len| {
        // SAFETY: `ptr` is writable for `len` bytes (fill_spare's spare capacity).
        unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), ptr.cast(), len) }
    })?;
    Ok(buf)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; renameat2 has no glibc-side state.
    check(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        ) as libc::c_int
    })
    .map(drop)
}

pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `fchownat`; `u32::MAX` (-1) leaves an id unchanged, as in chown(2).
pub fn fchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: u32,
    gid: u32,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    times: &[libc::timespec; 2],
    flags: i32,
) -> io::Result<()> {
    // SAFETY: `times` points at two valid timespecs; `name` is NUL-terminated.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })
        .map(drop)
}

pub fn futimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `times` points at two valid timespecs.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::ftruncate64(fd.as_raw_fd(), len) }).map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain syscall on a valid fd.
    let ret = unsafe { libc::lseek64(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as u64)
    }
}

fn to_off(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    let mut off_in = to_off(off_in)?;
    let mut off_out = to_off(off_out)?;
    // SAFETY: the offsets are valid, writable i64s that live across the call.
    check_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut off_in,
            fd_out.as_raw_fd(),
            &mut off_out,
            len,
            flags,
        )
    })
}

/// The filesystem type (`f_type`, linux/magic.h) of the filesystem `fd` is on.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = MaybeUninit::<libc::statfs64>::zeroed();
    // SAFETY: `st` is a valid, writable buffer.
    check(unsafe { libc::fstatfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by the kernel on success.
    Ok(unsafe { st.assume_init() }.f_type)
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs64> {
    let mut st = MaybeUninit::<libc::statvfs64>::zeroed();
    // SAFETY: `st` is a valid, writable buffer.
    check(unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by the kernel on success.
    Ok(unsafe { st.assume_init() })
}

/// `getdents64(2)` into `buf`'s spare capacity, which becomes part of `buf`; returns the bytes
/// added (0 at end of directory). Nothing is zeroed first: a directory handle reads a batch
/// of records, usually a few hundred bytes of it, and zeroing the whole batch cost more than
/// the parsing (`ls -lR` opens a directory per READDIR or two).
pub fn getdents64_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    fill_spare(buf, room, |ptr, len| {
        // SAFETY: `ptr` is writable for `len` bytes (fill_spare's contract).
        unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), ptr, len) as isize }
    })
}

/// Let `call(ptr, len)` (a system call returning a byte count or -1) write into the first
/// `max` bytes of `buf`'s spare capacity (reserved here), and make what it wrote part of `buf`.
/// Returns the bytes added.
fn fill_spare(
    buf: &mut Vec<u8>,
    max: usize,
    call: impl FnOnce(*mut libc::c_void, usize) -> isize,
) -> io::Result<usize> {
    buf.reserve(max);
    let room = &mut buf.spare_capacity_mut()[..max];
    let n = check_size(call(room.as_mut_ptr().cast(), room.len()))?.min(room.len());
    // SAFETY: the call initialised the first `n` (at most `room.len()`) spare bytes.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// `fcntl(F_GETFL)`.
pub fn get_fl(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// `fcntl(F_SETFL)`.
pub fn set_fl(fd: BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// POSIX record lock operations (`F_OFD_*` are used by the callers: per open file, not per
/// process, which is what the guest's lock owners map to).
pub fn fcntl_lock(fd: BorrowedFd<'_>, cmd: i32, lock: &mut libc::flock64) -> io::Result<()> {
    // SAFETY: `lock` is a valid flock64 for the duration of the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock64) }).map(drop)
}

pub fn flock(fd: BorrowedFd<'_>, op: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let off = to_off(off)?;
    // SAFETY: `buf` is writable for its length.
    check_size(unsafe { libc::pread64(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })
}

/// The inode-attribute ioctls vufsd passes through (lsattr/chattr, xfs_io's fsxattr), with
/// the size of the argument each reads or writes. Only these reach the host: an ioctl's
/// argument layout is per command, so an unknown one cannot be forwarded safely.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
pub const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;
pub const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

/// (command as the host wants it, argument size, whether the kernel writes the argument).
pub fn inode_ioctl(cmd: u32) -> Option<(u32, usize, bool)> {
    match cmd {
        // The flags argument is an int, whatever the command's size field says.
        FS_IOC_GETFLAGS | FS_IOC32_GETFLAGS => Some((FS_IOC_GETFLAGS, 4, true)),
        FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS => Some((FS_IOC_SETFLAGS, 4, false)),
        FS_IOC_FSGETXATTR => Some((FS_IOC_FSGETXATTR, 28, true)),
        FS_IOC_FSSETXATTR => Some((FS_IOC_FSSETXATTR, 28, false)),
        _ => None,
    }
}

/// Run one of the [`inode_ioctl`] commands on `fd` with `arg` as its argument buffer.
pub fn run_inode_ioctl(fd: BorrowedFd<'_>, cmd: u32, arg: &mut [u8]) -> io::Result<()> {
    let (host_cmd, size, _) =
        inode_ioctl(cmd).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTTY))?;
    if arg.len() < size {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `host_cmd` is one of the commands above, each of which reads or writes exactly
    // `size` bytes at the pointer, and `arg` is at least that long.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), host_cmd as libc::c_ulong, arg.as_mut_ptr()) })
        .map(drop)
}

// --- extended attributes -----------------------------------------------------------------------

/// `getxattr(2)` on a path (callers pass `/proc/self/fd/N` for an O_PATH fd).
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; strings are NUL-terminated.
    check_size(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// `getxattr(2)` into `buf`'s spare capacity, which becomes part of `buf`: nothing is zeroed
/// first, since most such calls fail (ENODATA: `ls -l` asks every file for its ACL and
/// security label) or fill a few bytes of a buffer the guest sized for the largest value. At
/// most `max` bytes are read (the capacity may be larger): a longer value is ERANGE.
pub fn getxattr_into(path: &CStr, name: &CStr, buf: &mut Vec<u8>, max: usize) -> io::Result<()> {
    fill_spare(buf, max, |ptr, len| {
        // SAFETY: `ptr` is writable for `len` bytes (fill_spare's contract); the strings are
        // NUL-terminated.
        unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), ptr, len) }
    })
    .map(drop)
}

pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: `value` is readable for its length; strings are NUL-terminated.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    check_size(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: strings are NUL-terminated.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

// --- credentials ---------------------------------------------------------------------------

/// Set this thread's filesystem uid. Linux credentials are per thread and the raw syscall
/// (unlike glibc's setuid family) does not broadcast to other threads, which is what we want:
/// one request's identity must not leak into another worker's.
pub fn set_thread_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid cannot fail in a way that corrupts memory; it returns the previous fsuid.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

pub fn set_thread_fsgid(gid: u32) -> u32 {
    // SAFETY: as for setfsuid.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as u32 }
}

/// Make the fd table hold at least `count` fds now (below `limit`, RLIMIT_NOFILE), so that
/// opening that many does not grow it step by step: each growth of a shared table waits for an
/// RCU grace period. Best effort: the table is grown by placing a duplicate at the highest
/// number wanted and closing it (tables never shrink).
pub fn reserve_fds(any: BorrowedFd<'_>, count: usize, limit: u64) {
    let top = (count as u64).min(limit.saturating_sub(1));
    let Ok(top) = libc::c_int::try_from(top) else {
        return;
    };
    if top < 256 {
        return;
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates a valid fd (or fails) into a new fd we own.
    let fd = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if fd >= 0 {
        // SAFETY: `fd` was just created and is closed once.
        unsafe { libc::close(fd) };
    }
}

pub fn geteuid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::getegid() }
}

/// Give the calling thread its own fs_struct (root, cwd, umask), `unshare(CLONE_FS)`.
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: plain syscall; CLONE_FS may be unshared by one thread of a multi-threaded process.
    check(unsafe { libc::unshare(libc::CLONE_FS) }).map(drop)
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: always succeeds. Affects the calling thread's fs_struct (shared by all threads
    // unless the thread unshared it).
    unsafe { libc::umask(mask) }
}

/// Capability numbers from linux/capability.h.
pub const CAP_FOWNER: u32 = 3;
pub const CAP_DAC_READ_SEARCH: u32 = 2;

/// The effective capability set of this thread (the low 64 bits, which cover every
/// capability Linux defines today).
pub fn effective_caps() -> io::Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and a two-element data array are what capget v3 expects.
    check(unsafe {
        libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) as libc::c_int
    })?;
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// The decimal name of an fd, for use relative to an open `/proc/self/fd` directory.
pub fn fd_name(fd: RawFd) -> CString {
    // A decimal integer never contains a NUL byte.
    CString::new(fd.to_string()).unwrap_or_default()
}

/// Whether the open file description behind `fd` holds any POSIX (OFD) or flock(2) lock. The
/// kernel lists exactly those locks as `lock:` lines of `/proc/self/fdinfo/N`, reached here
/// from the `/proc/self/fd` directory `proc_self_fd` (inside a sandbox `/proc` has no path).
pub fn fd_holds_locks(proc_self_fd: BorrowedFd<'_>, fd: RawFd) -> io::Result<bool> {
    let name = CString::new(format!("../fdinfo/{fd}"))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // Plain read(2)s: the seccomp filter has no pread64 or statx for this.
    let mut info = std::fs::File::from(openat(proc_self_fd, &name, libc::O_RDONLY, 0)?);
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = std::io::Read::read(&mut info, &mut buf)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    Ok(text.split(|b| *b == b'\n').any(|l| l.starts_with(b"lock:")))
}

/// A path for the path-based xattr calls, which have no `*at` form: `N`, resolved against the
/// working directory, which `fs::Passthrough` sets to `/proc/self/fd` (an absolute
/// `/proc/self/fd/N` would not exist inside a chroot or namespace sandbox).
pub fn proc_fd_path(fd: RawFd) -> CString {
    fd_name(fd)
}

/// `fchdir(2)`. Process-wide: every thread shares the working directory.
pub fn fchdir(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchdir(dir.as_raw_fd()) }).map(drop)
}

// --- file I/O straight between host files and guest memory ------------------------------------

/// A borrowed host fd that fuse-backend-rs's zero-copy reader/writer can move data through.
/// Reads and writes are positional (preadv/pwritev): the fd's own offset is never used, so one
/// handle can serve concurrent requests. The iovec array lives on the stack for the common case,
/// keeping allocation off the data path.
pub struct HostIo<'a>(pub BorrowedFd<'a>);

const STACK_IOVECS: usize = 16;

fn with_iovecs<R>(bufs: &[FileVolatileSlice], f: impl FnOnce(&[libc::iovec]) -> R) -> R {
    let to_iovec = |s: &FileVolatileSlice| libc::iovec {
        iov_base: s.as_ptr().cast(),
        iov_len: s.len(),
    };
    if bufs.len() <= STACK_IOVECS {
        let mut arr = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; STACK_IOVECS];
        for (dst, src) in arr.iter_mut().zip(bufs) {
            *dst = to_iovec(src);
        }
        f(&arr[..bufs.len()])
    } else {
        let v: Vec<libc::iovec> = bufs.iter().map(to_iovec).collect();
        f(&v)
    }
}

impl HostIo<'_> {
    fn preadv(&self, bufs: &[FileVolatileSlice], off: u64) -> io::Result<usize> {
        let off = to_off(off)?;
        with_iovecs(bufs, |iov| {
            let n = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: each iovec describes guest memory that the FileVolatileSlice guarantees is
            // mapped and valid for its length for the duration of this call.
            check_size(unsafe { libc::preadv64(self.0.as_raw_fd(), iov.as_ptr(), n, off) })
        })
    }

    fn pwritev(&self, bufs: &[FileVolatileSlice], off: u64) -> io::Result<usize> {
        let off = to_off(off)?;
        with_iovecs(bufs, |iov| {
            let n = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: as for preadv; the kernel only reads from these buffers.
            check_size(unsafe { libc::pwritev64(self.0.as_raw_fd(), iov.as_ptr(), n, off) })
        })
    }
}

impl FileReadWriteVolatile for HostIo<'_> {
    // Only positional I/O is meaningful for a handle shared by concurrent requests; the
    // transport never uses the streaming calls, and a silent offset-0 fallback would corrupt.
    fn read_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::ESPIPE))
    }

    fn write_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::ESPIPE))
    }

    fn read_at_volatile(&mut self, slice: FileVolatileSlice, offset: u64) -> io::Result<usize> {
        self.preadv(&[slice], offset)
    }

    fn read_vectored_at_volatile(
        &mut self,
        bufs: &[FileVolatileSlice],
        offset: u64,
    ) -> io::Result<usize> {
        self.preadv(bufs, offset)
    }

    fn write_at_volatile(&mut self, slice: FileVolatileSlice, offset: u64) -> io::Result<usize> {
        self.pwritev(&[slice], offset)
    }

    fn write_vectored_at_volatile(
        &mut self,
        bufs: &[FileVolatileSlice],
        offset: u64,
    ) -> io::Result<usize> {
        self.pwritev(bufs, offset)
    }
}

// --- process-level plumbing used by the daemon module --------------------------------------

/// The parent's pid (as this process's pid namespace sees it).
pub fn getppid() -> i32 {
    // SAFETY: always succeeds.
    unsafe { libc::getppid() }
}

/// Send `sig` to this process when the thread that created it exits (PR_SET_PDEATHSIG). The
/// kernel forgets the setting when the calling thread's credentials change (uid, fsuid,
/// capabilities gained), so call it after the last such change on that thread.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and nothing else.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Block `signals` in the calling thread (and every thread it spawns afterwards), so that one
/// dedicated thread can wait for them with [`wait_signal`].
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset/sigaddset initialise and modify the set we own; pthread_sigmask only
    // reads it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// Wait for one of `signals` (which must be blocked) and return it.
pub fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    let mut sig: libc::c_int = 0;
    // SAFETY: as above; sigwait writes the received signal number into `sig`.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        let rc = libc::sigwait(set.as_ptr(), &mut sig);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(sig)
}

/// Take ownership of an inherited fd that must be a listening unix stream socket.
pub fn take_listening_socket(fd: RawFd) -> io::Result<std::os::unix::net::UnixListener> {
    let mut st = MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: fstat only writes into `st`; an invalid fd gives EBADF.
    check(unsafe { libc::fstat64(fd, st.as_mut_ptr()) })?;
    // SAFETY: filled by fstat on success.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `listening`/`len` are valid for getsockopt to write an int.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    if listening == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the fd is an open listening socket that nothing else in this process owns: it
    // was inherited for us to use.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    // Inherited fds may lack FD_CLOEXEC; children must not inherit the listener.
    // SAFETY: plain fcntl on the fd we now own.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(listener)
}

/// The gid of the group called `name` (through NSS, so LDAP and systemd's dynamic groups
/// resolve too), or None when there is no such group.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 1024];
    loop {
        let mut grp = MaybeUninit::<libc::group>::zeroed();
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer refers to memory we own for the duration of the call; the
        // result, if any, points into `grp` and `buf`, and we only read its gid.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                grp.as_mut_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            // SAFETY: on success `found` points to `grp`, which getgrnam_r filled.
            0 => return Ok(Some(unsafe { (*found).gr_gid })),
            libc::ERANGE if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

pub use file_handle::{name_to_handle, open_by_handle, FileHandle};
pub use memory::{fix_trim_threshold, release_free_memory};

/// The soft RLIMIT_NOFILE.
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}
