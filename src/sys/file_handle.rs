//! File handles: name_to_handle_at(2) and open_by_handle_at(2).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{check, EMPTY};

/// MAX_HANDLE_SZ from linux/fcntl.h.
const MAX_HANDLE_SZ: usize = 128;

/// A file handle from name_to_handle_at(2): names an inode on its filesystem without an open
/// fd. Opening it again needs CAP_DAC_READ_SEARCH and an fd on the same mount.
#[derive(Clone)]
pub struct FileHandle {
    handle_type: i32,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileHandle(type {}, {} bytes)",
            self.handle_type,
            self.bytes.len()
        )
    }
}

impl FileHandle {
    /// A handle from its parts, as a migration stream carries them; None when it could not be
    /// a handle (longer than the kernel's MAX_HANDLE_SZ).
    pub fn from_parts(handle_type: i32, bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() <= MAX_HANDLE_SZ).then_some(Self { handle_type, bytes })
    }

    pub fn handle_type(&self) -> i32 {
        self.handle_type
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl PartialEq for FileHandle {
    fn eq(&self, other: &Self) -> bool {
        self.handle_type == other.handle_type && self.bytes == other.bytes
    }
}

impl Eq for FileHandle {}

/// struct file_handle with room for the largest handle.
#[repr(C)]
struct RawFileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The handle of the inode `fd` refers to (O_PATH fds included), and its mount id.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<(FileHandle, i32)> {
    let mut raw = RawFileHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a file_handle with handle_bytes set to the room it has; the kernel
    // writes at most that much, plus the mount id into `mount_id`.
    check(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &mut raw as *mut RawFileHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        ) as libc::c_int
    })?;
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((
        FileHandle {
            handle_type: raw.handle_type,
            bytes: raw.f_handle[..len].to_vec(),
        },
        mount_id,
    ))
}

/// open_by_handle_at(2): open the inode `handle` names, on the mount `mount_fd` is on.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle: &FileHandle,
    flags: i32,
) -> io::Result<OwnedFd> {
    let mut raw = RawFileHandle {
        handle_bytes: handle.bytes.len() as u32,
        handle_type: handle.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
    // SAFETY: `raw` is a valid file_handle of handle_bytes bytes; the returned fd is checked
    // and then owned by exactly one OwnedFd.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut raw as *mut RawFileHandle,
            flags | libc::O_CLOEXEC,
        ) as libc::c_int
    })?;
    // SAFETY: just returned by the kernel, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{openat, stat_fd};
    use std::ffi::CString;
    use std::os::fd::AsFd;

    #[test]
    fn handles_round_trip() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("vufsd-handle-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        let top = std::fs::File::open(&dir).unwrap();
        let name = CString::new(path.file_name().unwrap().as_encoded_bytes()).unwrap();
        let fd = openat(top.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
        let (h, _mnt) = name_to_handle(fd.as_fd()).unwrap();
        let again = open_by_handle(top.as_fd(), &h, libc::O_PATH);
        let st = again.and_then(|f| stat_fd(f.as_fd()));
        std::fs::remove_file(&path).unwrap();
        assert!(st.is_ok(), "{st:?}");
    }
}
