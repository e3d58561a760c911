//! Open files and directories, keyed by the FUSE file handle we return from open/opendir.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::dir::DirStream;
use super::idhash::IdMap;
use super::inodes::InodeData;

/// Keeps the handle's inode holding its fd while the handle is open (see `inodes::budget`).
#[derive(Debug)]
struct Pin(Arc<InodeData>);

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.unpin();
    }
}

/// One open host file or directory.
#[derive(Debug)]
pub struct HandleData {
    /// The node id this handle was opened on; requests naming another node are refused.
    pub inode: u64,
    /// The host device of its file (whose filesystem decides what a short read means).
    pub dev: u64,
    file: OwnedFd,
    /// Directory handles: the getdents64 batch being served (and its lock serialises
    /// readdirs of one handle). Unused, and empty, for files.
    pub dir: Mutex<DirStream>,
    /// Whether O_NOATIME is currently set on the host fd.
    pub noatime_on: AtomicBool,
    /// Whether the O_NOATIME policy allowed it on this handle at open. A masked handle stays
    /// masked: later flag changes from the guest never re-add it.
    pub noatime_allowed: bool,
    _pin: Pin,
}

impl HandleData {
    /// A handle on `inode`, which keeps its fd as long as the handle is open.
    pub fn new(
        inode: &Arc<InodeData>,
        file: OwnedFd,
        noatime_on: bool,
        noatime_allowed: bool,
    ) -> Self {
        inode.pin();
        Self {
            inode: inode.id,
            dev: inode.key.dev,
            _pin: Pin(inode.clone()),
            file,
            // Every handle is made on an fd just opened: at the start of the directory.
            dir: Mutex::new(DirStream::at_start()),
            noatime_on: AtomicBool::new(noatime_on),
            noatime_allowed,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

pub struct HandleStore {
    map: RwLock<IdMap<u64, Arc<HandleData>>>,
    next: AtomicU64,
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl Default for HandleStore {
    fn default() -> Self {
        Self {
            map: RwLock::new(IdMap::default()),
            // 0 means "no handle" in FUSE replies.
            next: AtomicU64::new(1),
        }
    }
}

impl HandleStore {
    pub fn insert(&self, data: HandleData) -> io::Result<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .write()
            .map_err(|_| ebadf())?
            .insert(id, Arc::new(data));
        Ok(id)
    }

    /// The handle `id`, which must belong to node `inode`.
    pub fn get(&self, id: u64, inode: u64) -> io::Result<Arc<HandleData>> {
        let map = self.map.read().map_err(|_| ebadf())?;
        match map.get(&id) {
            Some(h) if h.inode == inode => Ok(h.clone()),
            _ => Err(ebadf()),
        }
    }

    pub fn remove(&self, id: u64, inode: u64) -> io::Result<Arc<HandleData>> {
        let mut map = self.map.write().map_err(|_| ebadf())?;
        match map.get(&id) {
            Some(h) if h.inode == inode => map.remove(&id).ok_or_else(ebadf),
            _ => Err(ebadf()),
        }
    }

    /// Every open handle, for a migration's state.
    pub fn entries(&self) -> Vec<(u64, Arc<HandleData>)> {
        self.map
            .read()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// The id the next handle gets.
    pub fn next_id(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Go on numbering after `next`.
    pub fn continue_ids_from(&self, next: u64) {
        self.next.fetch_max(next, Ordering::Relaxed);
    }

    /// Put back a handle a migration brought over, under the id the guest knows. 0 and ids in
    /// use are refused.
    pub fn restore(&self, id: u64, data: HandleData) -> io::Result<()> {
        let mut map = self.map.write().map_err(|_| ebadf())?;
        if id == 0 || map.contains_key(&id) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        map.insert(id, Arc::new(data));
        drop(map);
        self.continue_ids_from(id.saturating_add(1));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Close every handle (the guest unmounted: it will never release them); returns how many
    /// there were.
    pub fn clear(&self) -> usize {
        self.map.write().map_or(0, |mut m| {
            let n = m.len();
            m.clear();
            n
        })
    }
}
