//! Acting as the guest's user for operations that create inodes.
//!
//! When vufsd runs as root, a file the guest creates must belong to the guest caller, and
//! setgid-directory inheritance must follow the host's rules for that caller. Switching this
//! thread's fsuid/fsgid for the duration of the syscall does both without a chown afterwards
//! (which would race and clear set-id bits). An unprivileged daemon cannot switch and creates
//! everything as itself.

use crate::sys;

/// Restores the thread's fsuid/fsgid on drop.
pub struct AsCaller {
    restore: Option<(u32, u32)>,
}

impl AsCaller {
    /// Switch to (`uid`, `gid`) if `can_switch` and they differ from root's. setfsuid(2)
    /// does not fail, it just keeps the old id: in a user namespace (`--uid-map`) an id with no
    /// mapping cannot be taken, and creating the file as the daemon instead would give it the
    /// wrong owner. So the switch is read back (a second call returns the id now in force), and
    /// an id that did not take is EOVERFLOW, what a local filesystem answers a caller whose
    /// ids have no mapping.
    pub fn new(can_switch: bool, uid: u32, gid: u32) -> std::io::Result<Self> {
        if !can_switch || (uid == 0 && gid == 0) {
            return Ok(Self { restore: None });
        }
        // Group first: once the fsuid is no longer 0 we could not change the fsgid any more.
        let old_gid = sys::set_thread_fsgid(gid);
        let old_uid = sys::set_thread_fsuid(uid);
        let switched = Self {
            restore: Some((old_uid, old_gid)),
        };
        if sys::set_thread_fsgid(gid) != gid || sys::set_thread_fsuid(uid) != uid {
            // Dropping `switched` puts the old ids back.
            return Err(std::io::Error::from_raw_os_error(libc::EOVERFLOW));
        }
        Ok(switched)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.restore {
            sys::set_thread_fsuid(uid);
            sys::set_thread_fsgid(gid);
        }
    }
}

thread_local! {
    /// Whether this thread has its own fs_struct (and so its own umask).
    static OWN_FS_STRUCT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with this thread's umask set to `mask`, then restore 0.
///
/// With POSIX ACLs the guest sends the caller's umask instead of applying it, because only the
/// host can tell whether the parent directory's default ACL replaces it. The umask is part of
/// the fs_struct, which threads share; each worker unshares its own on first use so that one
/// request's umask cannot leak into another's.
pub fn with_thread_umask<R>(
    mask: u32,
    f: impl FnOnce() -> std::io::Result<R>,
) -> std::io::Result<R> {
    if !OWN_FS_STRUCT.get() {
        sys::unshare_fs()?;
        OWN_FS_STRUCT.set(true);
    }
    sys::umask(mask & 0o777);
    let result = f();
    sys::umask(0);
    result
}
