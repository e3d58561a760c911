//! Failures of the host's storage under the guest: an I/O error, a full or read-only disk, the
//! shared directory removed. The guest gets the errno, as it would from a local filesystem; the
//! host's administrator gets one warning per kind in the daemon's log (then debug lines), since
//! the cause is on the host and the guest may never say.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use log::{debug, warn};

/// Errnos that say something about the host's storage rather than the guest's request.
fn is_host_fault(errno: i32) -> bool {
    matches!(
        errno,
        libc::EIO | libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::ENOTCONN | libc::EUCLEAN
    )
}

#[derive(Default)]
pub struct HostFaults {
    /// Bit n: errno n was reported already.
    seen: AtomicU64,
    root_gone: AtomicBool,
}

impl HostFaults {
    /// A host call for `what` on node `node` failed with `e`.
    pub fn note(&self, what: &str, node: u64, e: &io::Error) {
        let Some(errno) = e.raw_os_error().filter(|n| is_host_fault(*n)) else {
            return;
        };
        let bit = 1u64 << (errno as u32 % 64);
        if self.seen.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            warn!(
                "the host's filesystem failed a {what} (node {node}): {e}; the guest gets this \
                 error (later ones of this kind are logged at debug level)"
            );
        } else {
            debug!("host filesystem error, {what} (node {node}): {e}");
        }
    }

    /// The shared directory has no name left on the host (its link count is 0).
    pub fn note_root_gone(&self) {
        if !self.root_gone.swap(true, Ordering::Relaxed) {
            warn!(
                "the shared directory was removed on the host: the guest gets ENOENT for \
                 everything in it (restart vufsd on an existing directory)"
            );
        }
    }
}
