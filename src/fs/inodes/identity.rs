//! What tells a host inode from a later one that got the same inode number.
//!
//! While the table holds an O_PATH fd for an inode, the host cannot free it, so its (device,
//! inode number) cannot go to another file. Once the fd is given back (evicted past the fd
//! budget, or forgotten while a child still names it as its parent), the number can be reused
//! as soon as the file is deleted — immediately on ext4. Before the fd goes, the table takes
//! the inode's identity; whatever is found later under the same number must show the same
//! identity to be taken for it.
//!
//! The best identity is the file handle (`name_to_handle_at`, no capability needed): on
//! ext4, xfs, btrfs and tmpfs it holds the inode's generation, which changes on reuse. Where
//! the filesystem has no handles, the birth time (`statx`) stands in; where it keeps neither,
//! only the device and inode number are compared (docs/design.md says so).

use std::os::fd::BorrowedFd;

use crate::sys::{self, FileHandle};

/// An inode's identity beyond its (device, inode number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Its file handle, and the mount it came from (what `open_by_handle_at` needs).
    Handle { handle: FileHandle, mount_id: i32 },
    /// Its birth time, on a filesystem without handles.
    Birth { sec: i64, nsec: u32 },
    /// Neither: the filesystem keeps no handle and no birth time.
    Unknown,
}

impl Identity {
    /// The identity of the inode `fd` refers to (an O_PATH fd will do).
    pub fn of(fd: BorrowedFd<'_>) -> Identity {
        if let Ok((handle, mount_id)) = sys::name_to_handle(fd) {
            return Identity::Handle { handle, mount_id };
        }
        match sys::birth_time(fd) {
            Ok(Some((sec, nsec))) => Identity::Birth { sec, nsec },
            _ => Identity::Unknown,
        }
    }

    /// Whether `fd` (whose device and inode number already matched) is the inode this
    /// identity was taken from. A check that cannot be made counts as a mismatch.
    pub fn matches(&self, fd: BorrowedFd<'_>) -> bool {
        match self {
            Identity::Handle { handle, .. } => {
                sys::name_to_handle(fd).is_ok_and(|(h, _)| h == *handle)
            }
            Identity::Birth { sec, nsec } => {
                sys::birth_time(fd).is_ok_and(|b| b == Some((*sec, *nsec)))
            }
            Identity::Unknown => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn open(p: &std::path::Path) -> std::os::fd::OwnedFd {
        let top = std::fs::File::open("/").unwrap();
        let rel =
            std::ffi::CString::new(p.strip_prefix("/").unwrap().as_os_str().as_encoded_bytes())
                .unwrap();
        sys::openat(top.as_fd(), &rel, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap()
    }

    #[test]
    fn a_file_replaced_under_its_reused_number_does_not_match() {
        let dir = std::env::temp_dir().join(format!("vufsd-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"one").unwrap();
        let first = open(&f);
        let id = Identity::of(first.as_fd());
        assert!(id.matches(first.as_fd()));
        assert!(id.matches(open(&f).as_fd()), "the same file, opened again");
        let other = dir.join("g");
        std::fs::write(&other, b"two").unwrap();
        if id != Identity::Unknown {
            assert!(!id.matches(open(&other).as_fd()), "another file");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
