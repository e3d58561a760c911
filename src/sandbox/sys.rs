//! The syscalls only the sandbox makes: namespaces, mounts, root changes, process control,
//! capabilities and limits. Thin wrappers, one `unsafe` each, `io::Result` with the errno kept.
//! (The filesystem's syscalls live in `crate::sys`.)

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare only changes this process's namespace membership.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `mount(2)`; `None` passes NULL, as for a propagation change or a bind mount.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let source = source.map(cpath).transpose()?;
    let target = cpath(target)?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call; no data.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// `MOUNT_ATTR_NODEV`: device nodes on the mount cannot be opened.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `mount_setattr(2)` with `AT_RECURSIVE`: add the `MOUNT_ATTR_*` flags `set` to the mount at
/// `target` and to every mount below it, leaving their other flags as they are (Linux 5.12).
pub fn mount_setattr_recursive(target: &Path, set: u64) -> io::Result<()> {
    /// struct mount_attr from linux/mount.h.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let target = cpath(target)?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a NUL-terminated path and a struct mount_attr of the size passed, which the
    // kernel only reads.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) as libc::c_int
    })
    .map(drop)
}

pub fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `pivot_root(".", ".")`: the current directory becomes the root, the old root is stacked on
/// top of it until it is unmounted.
pub fn pivot_root_to_cwd() -> io::Result<()> {
    let dot = c".";
    // SAFETY: two NUL-terminated strings; glibc has no wrapper.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int })
        .map(drop)
}

pub fn chroot(dir: &Path) -> io::Result<()> {
    let dir = cpath(dir)?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chroot(dir.as_ptr()) }).map(drop)
}

pub fn chdir(dir: &Path) -> io::Result<()> {
    let dir = cpath(dir)?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chdir(dir.as_ptr()) }).map(drop)
}

/// `open(2)` of a directory as an O_PATH handle (close-on-exec).
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let path = cpath(path)?;
    // SAFETY: NUL-terminated path; the fd is checked and then owned by one OwnedFd.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Which side of a fork we are on.
pub enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// `fork(2)`. The caller must be single-threaded: the child gets only the calling thread, and
/// any lock another thread held would stay locked forever in it.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees no other thread exists; the child continues in plain Rust.
    match check(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
}

/// `waitpid(pid, WNOHANG)`: the child's end if it has ended (and is now reaped).
pub fn try_wait(pid: libc::pid_t) -> io::Result<Option<ChildExit>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid int for waitpid to fill.
    let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if ret == 0 {
        return Ok(None);
    }
    if libc::WIFEXITED(status) {
        Ok(Some(ChildExit::Code(libc::WEXITSTATUS(status))))
    } else if libc::WIFSIGNALED(status) {
        Ok(Some(ChildExit::Signal(libc::WTERMSIG(status))))
    } else {
        // Stopped or continued: not an end (we never ask for those, but be exact).
        Ok(None)
    }
}

/// `waitpid(pid, 0)`, through EINTR: how the child ended (it is reaped).
pub fn wait(pid: libc::pid_t) -> io::Result<ChildExit> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid int for waitpid to fill.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if libc::WIFEXITED(status) {
            return Ok(ChildExit::Code(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(ChildExit::Signal(libc::WTERMSIG(status)));
        }
    }
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: always succeeds.
    unsafe { libc::getpid() }
}

/// End a forked helper now: no destructor or exit handler of the parent's state runs twice.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) does not return.
    unsafe { libc::_exit(code) }
}

/// Real, effective and saved uid and gid (gid first: once the uid is not 0 any more, the gid
/// could not change). Single-threaded callers only: the raw calls change this thread alone.
pub fn set_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on integers.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } as libc::c_int)?;
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } as libc::c_int).map(drop)
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; sends a signal to our own child.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

pub fn getegid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::getegid() }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether the other end of a pipe has been closed (checked without blocking).
pub fn pipe_hung_up(read_end: BorrowedFd<'_>) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0.
    check(unsafe { libc::poll(&mut p, 1, 0) })?;
    Ok(p.revents & libc::POLLHUP != 0)
}

/// A signalfd for `signals` (which must be blocked), close-on-exec.
pub fn signalfd(signals: &[i32]) -> io::Result<OwnedFd> {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset/sigaddset initialise the set we own; signalfd only reads it and
    // returns a new fd, checked and then owned by one OwnedFd.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        let fd = check(libc::signalfd(-1, set.as_ptr(), libc::SFD_CLOEXEC))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The number of the next signal queued on a signalfd (blocks until there is one).
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut info = MaybeUninit::<libc::signalfd_siginfo>::zeroed();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: `info` is writable for `size` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != size {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        // SAFETY: the kernel filled the whole struct.
        return Ok(unsafe { info.assume_init() }.ssi_signo as i32);
    }
}

/// Wait until `a` or `b` (when given) is readable, or hung up; which ones are.
pub fn poll_two(a: BorrowedFd<'_>, b: Option<BorrowedFd<'_>>) -> io::Result<(bool, bool)> {
    let entry = |fd: BorrowedFd<'_>| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [entry(a), entry(b.unwrap_or(a))];
    let n = if b.is_some() { 2 } else { 1 };
    loop {
        // SAFETY: `fds` holds `n` valid pollfds; no timeout.
        match check(unsafe { libc::poll(fds.as_mut_ptr(), n, -1) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => break,
        }
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok((ready(&fds[0]), b.is_some() && ready(&fds[1])))
}

/// Set `sig` to be ignored (for SIGCHLD: the kernel then reaps children itself).
pub fn ignore_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: installing SIG_IGN runs no code of ours in signal context.
    let prev = unsafe { libc::signal(sig, libc::SIG_IGN) };
    if prev == libc::SIG_ERR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drop every supplementary group.
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: a zero-length list; glibc applies it to every thread.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

pub fn supplementary_groups() -> io::Result<usize> {
    // SAFETY: a zero size only asks for the count.
    check(unsafe { libc::getgroups(0, std::ptr::null_mut()) }).map(|n| n as usize)
}

// --- capabilities -----------------------------------------------------------------------------

/// The three capability sets of this thread, 64 bits each (every capability Linux defines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

pub fn capget() -> io::Result<CapSets> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a v3 header and the two-element data array capget v3 fills.
    check(unsafe {
        libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) as libc::c_int
    })?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Set this thread's capability sets. Threads created afterwards inherit them.
pub fn capset(sets: CapSets) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: a v3 header and two data elements, only read by the kernel.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int })
        .map(drop)
}

/// Remove `cap` from the bounding set (needs CAP_SETPCAP).
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes a capability number.
    check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Empty the ambient set.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no further arguments (they must be 0).
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
    .map(drop)
}

// --- resource limits --------------------------------------------------------------------------

/// (soft, hard) RLIMIT_NOFILE.
pub fn get_nofile() -> io::Result<(u64, u64)> {
    let mut lim = MaybeUninit::<libc::rlimit64>::zeroed();
    // SAFETY: `lim` is a valid rlimit64 for the kernel to fill.
    check(unsafe { libc::getrlimit64(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: filled on success (and zeroed before).
    let lim = unsafe { lim.assume_init() };
    Ok((lim.rlim_cur, lim.rlim_max))
}

pub fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit64, only read.
    check(unsafe { libc::setrlimit64(libc::RLIMIT_NOFILE, &lim) }).map(drop)
}

// --- seccomp ----------------------------------------------------------------------------------

/// Install a seccomp BPF filter on the calling thread (threads created later inherit it), after
/// setting no_new_privs (which an unprivileged process needs, and which stops an exec from
/// gaining privileges). Through prctl(2) rather than seccomp(2): a service manager's own filter
/// may allow the one and not the other (systemd's @system-service set has prctl, not seccomp).
pub fn install_seccomp_filter(program: &[seccompiler::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes the value 1 and zeros.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    let prog = libc::sock_fprog {
        len,
        // seccompiler's sock_filter is the kernel's struct sock_filter (u16, u8, u8, u32, repr(C)),
        // the same layout as libc's.
        filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `prog` points at `len` valid instructions that outlive the call; the kernel copies
    // them and only reads.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
            0,
            0,
        )
    })
    .map(drop)
}

// --- SIGSYS, for --seccomp=trap ---------------------------------------------------------------

/// Run `handler` (an `extern "C"` sigaction handler) for SIGSYS.
pub fn on_sigsys(
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> io::Result<()> {
    let mut act = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: `act` is zeroed (a valid empty sigaction) and then filled field by field; the
    // handler is an extern "C" fn with the SA_SIGINFO signature.
    unsafe {
        let a = act.as_mut_ptr();
        (*a).sa_sigaction = handler as usize;
        (*a).sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut (*a).sa_mask);
        check(libc::sigaction(libc::SIGSYS, a, std::ptr::null_mut())).map(drop)
    }
}

/// The system call number behind a SIGSYS from seccomp (`si_syscall`).
///
/// # Safety
/// `info` must be the siginfo the kernel passed to a SIGSYS handler.
pub unsafe fn sigsys_syscall(info: *const libc::siginfo_t) -> i32 {
    // The SIGSYS member of siginfo's union (asm-generic/siginfo.h): after the three int
    // header fields and (on 64-bit) padding come `void *_call_addr; int _syscall;`.
    #[repr(C)]
    struct SigsysInfo {
        si_signo: libc::c_int,
        si_errno: libc::c_int,
        si_code: libc::c_int,
        _pad: libc::c_int,
        call_addr: *mut libc::c_void,
        syscall: libc::c_int,
        arch: libc::c_uint,
    }
    // SAFETY: the caller passes the kernel's siginfo for SIGSYS, which has this layout on
    // 64-bit Linux and is larger than this struct.
    unsafe { (*info.cast::<SigsysInfo>()).syscall }
}

/// Write `bytes` to stderr and end the process at once, from a signal handler: both calls are
/// async-signal-safe, nothing allocates.
pub fn write_stderr_and_exit(bytes: &[u8], code: i32) -> ! {
    // SAFETY: write(2) reads `bytes` for its length; _exit(2) does not return.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(code)
    }
}
