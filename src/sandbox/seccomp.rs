//! The seccomp filter: an allowlist of the system calls vufsd makes once it serves a guest.
//!
//! Installed after the sandbox and the filesystem are set up and before the first thread is
//! created, so every thread runs under it. A call outside the list is, by `--seccomp`:
//! - `kill`: the whole process dies with SIGSYS (the kernel logs it to the audit log);
//! - `log`: allowed, and logged to the audit log (`dmesg`/`journalctl -k`, type=1326) — how a
//!   user finds a system call the list lacks;
//! - `trap`: SIGSYS, whose handler here names the call on stderr and exits.
//!
//! Built with rust-vmm's seccompiler, which compiles the list to BPF in Rust (no libseccomp);
//! installed with prctl(PR_SET_SECCOMP) (see `sys::install_seccomp_filter`).
//! The list covers what vufsd, its crates and glibc call on the paths a guest can reach; the
//! VM test suite runs under `kill`, so a missing entry fails a test. Mount, namespace, root,
//! process, exec, socket, ptrace, module and key calls are all absent.

use std::collections::BTreeMap;
use std::fmt;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::sys;

/// What happens on a system call outside the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Kill,
    Log,
    Trap,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Kill => "kill",
            Action::Log => "log",
            Action::Trap => "trap",
        })
    }
}

impl Action {
    fn mismatch(self) -> SeccompAction {
        match self {
            Action::Kill => SeccompAction::KillProcess,
            Action::Log => SeccompAction::Log,
            Action::Trap => SeccompAction::Trap,
        }
    }
}

/// System calls allowed whatever their arguments, each with who makes it.
#[rustfmt::skip]
const ALLOWED: &[(i64, &str)] = &[
    // The filesystem (fs/, sys.rs): every host call is *at on an fd we hold.
    (libc::SYS_openat, "open files and directories, reopen through /proc/self/fd"),
    (libc::SYS_name_to_handle_at, "an inode's identity before its fd is evicted; migration state (needs no capability)"),
    (libc::SYS_open_by_handle_at, "reopen an inode from its file handle, when chosen (--inode-file-handles, a migration); EPERM from `refusing_handles` without CAP_DAC_READ_SEARCH"),
    (libc::SYS_newfstatat, "stat (fstatat, fstat with AT_EMPTY_PATH)"),
    (libc::SYS_fstat, "fstat (std, glibc)"),
    (libc::SYS_statx, "std's File::metadata"),
    (libc::SYS_readlinkat, "readlink"),
    (libc::SYS_mkdirat, "mkdir"),
    (libc::SYS_mknodat, "mknod"),
    (libc::SYS_symlinkat, "symlink"),
    (libc::SYS_unlinkat, "unlink, rmdir, removing the socket file"),
    (libc::SYS_renameat2, "rename"),
    (libc::SYS_linkat, "link"),
    (libc::SYS_fchmodat, "chmod without a handle"),
    (libc::SYS_fchmod, "chmod on a handle"),
    (libc::SYS_fchownat, "chown"),
    (libc::SYS_utimensat, "utimes, futimens"),
    (libc::SYS_ftruncate, "truncate"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_fdatasync, "fdatasync"),
    (libc::SYS_syncfs, "syncfs"),
    (libc::SYS_fallocate, "fallocate"),
    (libc::SYS_lseek, "readdir offsets, SEEK_DATA/SEEK_HOLE"),
    (libc::SYS_copy_file_range, "copy_file_range"),
    (libc::SYS_fstatfs, "statfs"),
    (libc::SYS_getdents64, "readdir"),
    (libc::SYS_fcntl, "O_NOATIME changes, OFD locks, FD_CLOEXEC"),
    (libc::SYS_flock, "flock"),
    (libc::SYS_preadv, "read into guest memory"),
    (libc::SYS_pwritev, "write from guest memory"),
    (libc::SYS_preadv2, "preadv on newer glibc"),
    (libc::SYS_pwritev2, "pwritev on newer glibc"),
    (libc::SYS_getxattr, "xattrs and ACLs, through /proc/self/fd/N"),
    (libc::SYS_setxattr, "xattrs and ACLs"),
    (libc::SYS_listxattr, "xattrs"),
    (libc::SYS_removexattr, "xattrs and ACLs"),
    (libc::SYS_setfsuid, "create files as the guest caller (root daemon)"),
    (libc::SYS_setfsgid, "create files as the guest caller (root daemon)"),
    (libc::SYS_umask, "the guest caller's umask under POSIX ACLs (fs/creds.rs)"),
    (libc::SYS_close, "close"),
    // vhost-user: the frontend's socket, guest memory, eventfds, worker loops.
    (libc::SYS_accept4, "accept the frontend's connection"),
    (libc::SYS_recvmsg, "vhost-user messages and the fds they carry"),
    (libc::SYS_sendmsg, "vhost-user replies"),
    (libc::SYS_sendto, "sd_notify on the socket connected before the sandbox"),
    (libc::SYS_read, "eventfds, messages"),
    (libc::SYS_write, "eventfds, logging"),
    (libc::SYS_readv, "std's vectored reads"),
    (libc::SYS_writev, "std's vectored writes"),
    (libc::SYS_mmap, "guest memory, thread stacks, the allocator"),
    (libc::SYS_munmap, "guest memory, thread stacks, the allocator"),
    (libc::SYS_mremap, "the allocator"),
    (libc::SYS_mprotect, "thread stack guard pages"),
    (libc::SYS_madvise, "the allocator, thread exit"),
    (libc::SYS_brk, "the allocator"),
    (libc::SYS_epoll_create1, "vring worker loops"),
    (libc::SYS_epoll_ctl, "vring worker loops"),
    (libc::SYS_epoll_wait, "vring worker loops"),
    (libc::SYS_epoll_pwait, "vring worker loops"),
    (libc::SYS_eventfd2, "exit and kick events"),
    // Threads and the runtime.
    (libc::SYS_clone, "threads (older glibc)"),
    (libc::SYS_clone3, "threads: the pool, lock waits"),
    (libc::SYS_set_robust_list, "thread start"),
    (libc::SYS_rseq, "thread start"),
    (libc::SYS_sigaltstack, "std's stack overflow guard in each thread"),
    (libc::SYS_rt_sigprocmask, "thread start, signal masks"),
    (libc::SYS_rt_sigtimedwait, "the signal thread's sigwait"),
    (libc::SYS_rt_sigreturn, "return from a signal handler"),
    (libc::SYS_rt_sigaction, "glibc's handlers for its internal signals, at the first thread"),
    (libc::SYS_futex, "locks, condition variables, thread join"),
    (libc::SYS_sched_yield, "spin loops"),
    (libc::SYS_sched_getaffinity, "glibc's pthread_getattr_np at thread start"),
    (libc::SYS_getrandom, "HashMap seeds"),
    (libc::SYS_gettid, "glibc"),
    (libc::SYS_getpid, "glibc"),
    (libc::SYS_getppid, "--exit-with-parent: tell the parent's exit from another SIGTERM"),
    (libc::SYS_clock_gettime, "log timestamps (when the vDSO falls back)"),
    (libc::SYS_exit, "thread exit"),
    (libc::SYS_exit_group, "process exit"),
];

/// A rule matching when argument `index` equals `value` (compared as 32 bits for an int
/// argument, 64 for a long one).
fn arg_is(
    index: u8,
    len: SeccompCmpArgLen,
    value: u64,
) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        len,
        SeccompCmpOp::Eq,
        value,
    )?])
}

fn arg_eq(index: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    arg_is(index, SeccompCmpArgLen::Dword, value)
}

/// The allowlist as seccompiler rules: [`ALLOWED`] plus calls allowed only with some arguments.
fn rules(pid: u32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&(nr, _why)| (nr, Vec::new())).collect();
    // Threads name themselves; no other prctl (no capability, seccomp or dumpable changes).
    rules.insert(libc::SYS_prctl, vec![arg_eq(0, libc::PR_SET_NAME as u64)?]);
    // abort() signals its own thread; signals to anyone else stay forbidden.
    rules.insert(libc::SYS_tgkill, vec![arg_eq(0, u64::from(pid))?]);
    // A worker's own fs_struct, for its umask (fs/creds.rs); never a new namespace.
    rules.insert(libc::SYS_unshare, vec![arg_eq(0, libc::CLONE_FS as u64)?]);
    // The inode-attribute ioctls the filesystem passes through (sys::inode_ioctl), no other.
    let ioctls = [
        crate::sys::FS_IOC_GETFLAGS,
        crate::sys::FS_IOC_SETFLAGS,
        crate::sys::FS_IOC_FSGETXATTR,
        crate::sys::FS_IOC_FSSETXATTR,
    ]
    .into_iter()
    .map(|cmd| arg_is(1, SeccompCmpArgLen::Qword, u64::from(cmd)))
    .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    Ok(rules)
}

fn arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("no seccomp filter for this architecture: {e}"))
}

/// The filter stacked before the allowlist of a daemon that keeps no CAP_DAC_READ_SEARCH:
/// open_by_handle_at gets EPERM, everything else passes to the allowlist. The allowlist itself
/// allows the call: of two filters' verdicts the kernel takes the stricter, and ERRNO is
/// stricter than ALLOW but not than KILL, so the answer is EPERM (what the call says without
/// the capability) in every `--seccomp` mode, and a migration's file-handles mode falls back
/// to paths instead of killing the daemon.
fn refusing_handles() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_open_by_handle_at, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The compiled filter for `action`, and how many system calls it allows.
fn program(action: Action) -> Result<(BpfProgram, usize), String> {
    let arch = arch()?;
    let rules = rules(std::process::id()).map_err(|e| e.to_string())?;
    let allowed = rules.len();
    let filter = SeccompFilter::new(rules, action.mismatch(), SeccompAction::Allow, arch)
        .map_err(|e| e.to_string())?;
    let program = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    Ok((program, allowed))
}

/// SIGSYS under `--seccomp=trap`: name the call and exit at once. Only async-signal-safe work:
/// the message is assembled in a stack buffer.
extern "C" fn on_trap(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes the SIGSYS siginfo to this SA_SIGINFO handler.
    let nr = unsafe { sys::sigsys_syscall(info) };
    let mut buf = [0u8; 200];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    };
    push(b"vufsd: error: the seccomp filter trapped system call ");
    let mut digits = [0u8; 12];
    let mut n = nr.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push(&digits[i..]);
    push(b" (see docs/security.md to find its name and report it)\n");
    sys::write_stderr_and_exit(&buf[..len], 128 + libc::SIGSYS);
}

/// Install the filter for `action` on this thread (and so on every thread created after);
/// returns how many system calls it allows. `handles`: whether open_by_handle_at may work (the
/// daemon kept CAP_DAC_READ_SEARCH); if not, [`refusing_handles`] goes first.
pub fn install(action: Action, handles: bool) -> Result<usize, String> {
    let (program, allowed) = program(action)?;
    if action == Action::Trap {
        sys::on_sigsys(on_trap).map_err(|e| format!("cannot handle SIGSYS: {e}"))?;
    }
    // The refusal first: once the allowlist is in, prctl(PR_SET_SECCOMP) is not allowed.
    if !handles {
        sys::install_seccomp_filter(&refusing_handles()?).map_err(|e| e.to_string())?;
    }
    sys::install_seccomp_filter(&program).map_err(|e| e.to_string())?;
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child: install the filter, run `call` (raw syscalls only), exit 0 if it
    /// returned 0 and 91 if it failed; the caller gets the wait status. Only async-signal-safe
    /// work after the fork.
    fn in_child(action: Action, call: fn() -> libc::c_long) -> i32 {
        in_child_with(action, true, call)
    }

    /// As [`in_child`], with the filters of a daemon that keeps CAP_DAC_READ_SEARCH or not.
    fn in_child_with(action: Action, handles: bool, call: fn() -> libc::c_long) -> i32 {
        let (program, _) = program(action).unwrap();
        let refusing = refusing_handles().unwrap();
        // SAFETY: the child only makes raw syscalls and exits; the program was built before.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if action == Action::Trap {
                let _ = sys::on_sigsys(on_trap);
            }
            if !handles && sys::install_seccomp_filter(&refusing).is_err() {
                // SAFETY: exit at once from the child.
                unsafe { libc::_exit(89) };
            }
            if sys::install_seccomp_filter(&program).is_err() {
                // SAFETY: exit at once from the child.
                unsafe { libc::_exit(90) };
            }
            let rc = call();
            // SAFETY: as above.
            unsafe { libc::_exit(if rc == 0 { 0 } else { 91 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// uname(2), which is not on the list.
    fn uname() -> libc::c_long {
        let mut uts = std::mem::MaybeUninit::<libc::utsname>::zeroed();
        // SAFETY: uname fills the buffer it is given.
        libc::c_long::from(unsafe { libc::uname(uts.as_mut_ptr()) })
    }

    fn child_calls_uname(action: Action) -> i32 {
        in_child(action, uname)
    }

    fn killed(status: i32) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    fn succeeded(status: i32) -> bool {
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    /// ioctl `cmd` on stdin, reported as success whatever its result (ENOTTY is fine: the
    /// question is only whether the filter lets it through).
    fn ioctl_on_stdin(cmd: libc::c_ulong) -> libc::c_long {
        let mut v = 0i64;
        // SAFETY: both commands write at most 8 bytes into `v`.
        unsafe { libc::syscall(libc::SYS_ioctl, 0, cmd, &mut v) };
        0
    }

    #[test]
    fn arguments_are_checked_where_the_list_says_so() {
        // SAFETY (all closures): raw syscalls with integer arguments only.
        let own_fs = || unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_FS) };
        let new_ns = || unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS) };
        let other_process = || unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, 0) };
        let get_flags = || ioctl_on_stdin(crate::sys::FS_IOC_GETFLAGS as libc::c_ulong);
        let fionread = || ioctl_on_stdin(libc::FIONREAD);
        assert!(succeeded(in_child(Action::Kill, own_fs)));
        assert!(killed(in_child(Action::Kill, new_ns)));
        assert!(killed(in_child(Action::Kill, other_process)));
        assert!(succeeded(in_child(Action::Kill, get_flags)));
        assert!(killed(in_child(Action::Kill, fionread)));
    }

    /// open_by_handle_at(AT_FDCWD, NULL, 0): 0 when it failed with EPERM, 1 otherwise.
    fn open_by_handle_is_eperm() -> libc::c_long {
        // SAFETY: a NULL handle pointer makes the kernel fail the call (EFAULT) unless a
        // filter or a missing capability answers first; nothing is written.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                libc::AT_FDCWD,
                std::ptr::null_mut::<libc::c_void>(),
                0,
            )
        };
        // SAFETY: errno of this thread.
        let errno = unsafe { *libc::__errno_location() };
        libc::c_long::from(!(rc == -1 && errno == libc::EPERM))
    }

    #[test]
    fn open_by_handle_at_is_eperm_unless_the_daemon_keeps_the_capability() {
        for action in [Action::Kill, Action::Log, Action::Trap] {
            let status = in_child_with(action, false, open_by_handle_is_eperm);
            assert!(succeeded(status), "{action}: status {status:#x}");
            // With the capability kept the call reaches the kernel (not killed; as root it
            // fails with EFAULT rather than EPERM).
            let status = in_child_with(action, true, open_by_handle_is_eperm);
            assert!(libc::WIFEXITED(status), "{action}: status {status:#x}");
            let root_with_cap = crate::sys::effective_caps()
                .is_ok_and(|c| c & (1 << crate::sys::CAP_DAC_READ_SEARCH) != 0);
            if root_with_cap {
                assert_eq!(
                    libc::WEXITSTATUS(status),
                    91,
                    "{action}: the kernel answered"
                );
            }
        }
        // name_to_handle_at needs no capability and stays allowed: it takes an inode's
        // identity before its fd is evicted.
        let rules = rules(1).unwrap();
        assert!(rules.contains_key(&libc::SYS_name_to_handle_at));
    }

    #[test]
    fn kill_kills_on_a_call_outside_the_list() {
        let status = child_calls_uname(Action::Kill);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn log_lets_the_call_through() {
        let status = child_calls_uname(Action::Log);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }

    #[test]
    fn trap_names_the_call_and_exits() {
        let status = child_calls_uname(Action::Trap);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 128 + libc::SIGSYS);
    }

    #[test]
    fn the_list_has_no_escape_hatches() {
        let rules = rules(1).unwrap();
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_setns,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_kill,
            libc::SYS_capset,
            libc::SYS_setuid,
            libc::SYS_setresuid,
            libc::SYS_init_module,
            libc::SYS_seccomp,
        ] {
            assert!(!rules.contains_key(&nr), "syscall {nr} is allowed");
        }
        assert_eq!(rules.len(), ALLOWED.len() + 4, "no duplicates");
    }
}
