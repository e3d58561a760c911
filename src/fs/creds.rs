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
    /// Switch to (`uid`, `gid`) if `can_switch` and they differ from root's.
    pub fn new(can_switch: bool, uid: u32, gid: u32) -> Self {
        if !can_switch || (uid == 0 && gid == 0) {
            return Self { restore: None };
        }
        // Group first: once the fsuid is no longer 0 we could not change the fsgid any more.
        let old_gid = sys::set_thread_fsgid(gid);
        let old_uid = sys::set_thread_fsuid(uid);
        Self {
            restore: Some((old_uid, old_gid)),
        }
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
