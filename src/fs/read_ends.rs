//! Whether a short read from a host file means that the file ended there.
//!
//! A guest reads ahead in large requests (128 KiB and more) whatever the file's size, so most
//! READs of small files come back short. The guest kernel takes a short reply as the end of
//! the file (FUSE has no other way to say it), so the daemon must not reply short in the
//! middle of one: where a filesystem may return less than asked before the end (NFS, CIFS, a
//! FUSE filesystem on the host), it reads again until it gets 0, one more system call per READ
//! that reaches the end. Filesystems on local storage return less only at the end (the
//! daemon's threads take no signals that could cut a read short), so there the first short
//! read is the last one, as it is for upstream virtiofsd everywhere.
use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use crate::sys;

/// Devices seen so far are remembered, up to this many (a share holds a few mounts at most;
/// past it, every short read asks the host again, which is correct, just slower).
const REMEMBERED: usize = 64;

/// Per host device (st_dev), whether its filesystem ends reads short only at end of file.
#[derive(Default)]
pub struct ReadEnds {
    known: Mutex<Vec<(u64, bool)>>,
}

impl ReadEnds {
    /// Whether a read of `fd`, a file on device `dev`, that returned less than asked reached
    /// the end of the file. Asked only after a short read; the first time for a device it
    /// costs an fstatfs. Unknown (fstatfs failed, a poisoned lock) means no: read again.
    pub fn short_read_is_end(&self, dev: u64, fd: BorrowedFd<'_>) -> bool {
        let Ok(mut known) = self.known.lock() else {
            return false;
        };
        if let Some(&(_, local)) = known.iter().find(|(d, _)| *d == dev) {
            return local;
        }
        let local = sys::fstatfs_type(fd).is_ok_and(ends_reads_only_at_eof);
        if known.len() < REMEMBERED {
            known.push((dev, local));
        }
        local
    }
}

/// Filesystem types (linux/magic.h) whose reads of a regular file return less than asked
/// only at its end: block-device and memory filesystems. Anything else, overlayfs included
/// (its files may live on any filesystem), is read until 0.
fn ends_reads_only_at_eof(f_type: i64) -> bool {
    const EXT4: i64 = 0xEF53; // ext2, ext3 and ext4
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const TMPFS: i64 = 0x0102_1994;
    const F2FS: i64 = 0xF2F5_2010;
    matches!(f_type, EXT4 | XFS | BTRFS | TMPFS | F2FS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn only_local_filesystems_end_reads_short() {
        assert!(ends_reads_only_at_eof(0xEF53));
        assert!(ends_reads_only_at_eof(0x5846_5342));
        assert!(!ends_reads_only_at_eof(0x6969)); // NFS
        assert!(!ends_reads_only_at_eof(0x6573_5546)); // FUSE
        assert!(!ends_reads_only_at_eof(0x794C_7630)); // overlayfs
    }

    #[test]
    fn a_device_is_asked_once_and_remembered() {
        let f = std::fs::File::open("/proc/self/status").unwrap(); // procfs: not local storage
        let ends = ReadEnds::default();
        assert!(!ends.short_read_is_end(7, f.as_fd()));
        // Remembered for device 7: a different fd on it gets the same answer.
        let tmp = std::fs::File::open("/").unwrap();
        assert!(!ends.short_read_is_end(7, tmp.as_fd()));
        assert_eq!(ends.known.lock().unwrap().len(), 1);
    }
}
