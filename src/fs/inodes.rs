//! The inode table: FUSE node ids to host inodes held open as O_PATH fds.
//!
//! A host inode is identified by (st_dev, st_ino). The guest refers to it by a node id we hand
//! out (never reused, so generation numbers can stay 0) and keeps it alive with lookup counts:
//! every successful lookup/create/mkdir/... adds one, FORGET subtracts. At zero the entry and its
//! fd go away. The root (node id 1) is pinned.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::sys::Stat;

/// FUSE_ROOT_ID.
pub const ROOT_ID: u64 = 1;

/// Host identity of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

impl InodeKey {
    pub fn of(st: &Stat) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

#[derive(Debug)]
pub struct InodeData {
    pub id: u64,
    pub key: InodeKey,
    /// O_PATH | O_NOFOLLOW fd: names the inode without granting read or write access.
    fd: OwnedFd,
    /// File type bits (S_IFMT), fixed for the life of an inode.
    pub file_type: u32,
    /// The owner as last seen. Used only for the O_NOATIME decision, which tolerates staleness
    /// (a wrong guess costs one retried open).
    owner: AtomicU32,
    refcount: AtomicU64,
}

impl InodeData {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn owner(&self) -> u32 {
        self.owner.load(Ordering::Relaxed)
    }

    pub fn note_owner(&self, uid: u32) {
        self.owner.store(uid, Ordering::Relaxed);
    }

    pub fn is_dir(&self) -> bool {
        self.file_type == libc::S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.file_type == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type == libc::S_IFLNK
    }
}

#[derive(Default)]
struct Tables {
    by_id: HashMap<u64, Arc<InodeData>>,
    by_key: HashMap<InodeKey, u64>,
}

pub struct InodeStore {
    tables: RwLock<Tables>,
    next_id: AtomicU64,
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl InodeStore {
    /// A store holding only the root, whose O_PATH fd and stat are given.
    pub fn new(root_fd: OwnedFd, root_st: &Stat) -> Self {
        let root = Arc::new(InodeData {
            id: ROOT_ID,
            key: InodeKey::of(root_st),
            fd: root_fd,
            file_type: root_st.st_mode & libc::S_IFMT,
            owner: AtomicU32::new(root_st.st_uid),
            // Pinned: the guest never forgets the root more often than it looked it up, but a
            // hostile guest might try.
            refcount: AtomicU64::new(u64::MAX / 2),
        });
        let mut tables = Tables::default();
        tables.by_key.insert(root.key, ROOT_ID);
        tables.by_id.insert(ROOT_ID, root);
        Self {
            tables: RwLock::new(tables),
            next_id: AtomicU64::new(ROOT_ID + 1),
        }
    }

    pub fn get(&self, id: u64) -> io::Result<Arc<InodeData>> {
        let tables = self.tables.read().map_err(|_| ebadf())?;
        tables.by_id.get(&id).cloned().ok_or_else(ebadf)
    }

    /// Count one more guest reference to the inode `fd`/`st` describe, adding it to the table
    /// if it is new. An fd for an inode already present is simply dropped.
    pub fn add_ref(&self, fd: OwnedFd, st: &Stat) -> io::Result<Arc<InodeData>> {
        let key = InodeKey::of(st);
        {
            let tables = self.tables.read().map_err(|_| ebadf())?;
            if let Some(found) = tables.by_key.get(&key).and_then(|id| tables.by_id.get(id)) {
                found.refcount.fetch_add(1, Ordering::Relaxed);
                found.note_owner(st.st_uid);
                return Ok(found.clone());
            }
        }
        let mut tables = self.tables.write().map_err(|_| ebadf())?;
        // Someone may have inserted it between the two locks.
        if let Some(found) = tables.by_key.get(&key).and_then(|id| tables.by_id.get(id)) {
            found.refcount.fetch_add(1, Ordering::Relaxed);
            return Ok(found.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = Arc::new(InodeData {
            id,
            key,
            fd,
            file_type: st.st_mode & libc::S_IFMT,
            owner: AtomicU32::new(st.st_uid),
            refcount: AtomicU64::new(1),
        });
        tables.by_key.insert(key, id);
        tables.by_id.insert(id, data.clone());
        Ok(data)
    }

    /// Count one more reference to an inode already in the table (for `link`, and for undoing a
    /// `forget` that a failed reply must not have counted).
    pub fn add_ref_existing(&self, inode: &InodeData) {
        inode.refcount.fetch_add(1, Ordering::Relaxed);
    }

    /// Drop `count` guest references; returns whether the inode left the table. Unknown ids and
    /// over-forgetting are ignored: FORGET has no reply, so there is nobody to tell.
    pub fn forget(&self, id: u64, count: u64) -> bool {
        let reached_zero = {
            let Ok(tables) = self.tables.read() else {
                return false;
            };
            let Some(inode) = tables.by_id.get(&id) else {
                return false;
            };
            let mut cur = inode.refcount.load(Ordering::Relaxed);
            loop {
                let new = cur.saturating_sub(count);
                match inode.refcount.compare_exchange_weak(
                    cur,
                    new,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break new == 0,
                    Err(actual) => cur = actual,
                }
            }
        };
        if !reached_zero || id == ROOT_ID {
            return false;
        }
        let Ok(mut tables) = self.tables.write() else {
            return false;
        };
        // A lookup may have revived it while no lock was held; only remove it if still unused.
        let still_unused = tables
            .by_id
            .get(&id)
            .is_some_and(|i| i.refcount.load(Ordering::Acquire) == 0);
        if !still_unused {
            return false;
        }
        if let Some(inode) = tables.by_id.remove(&id) {
            if tables.by_key.get(&inode.key) == Some(&id) {
                tables.by_key.remove(&inode.key);
            }
        }
        true
    }

    /// Number of inodes held (the root included).
    pub fn len(&self) -> usize {
        self.tables.read().map(|t| t.by_id.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    fn open_path(p: &std::path::Path) -> (OwnedFd, Stat) {
        let dir = std::fs::File::open("/").unwrap();
        let rel =
            std::ffi::CString::new(p.strip_prefix("/").unwrap().as_os_str().as_encoded_bytes())
                .unwrap();
        let fd = sys::openat(dir.as_fd(), &rel, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
        let st = sys::stat_fd(fd.as_fd()).unwrap();
        (fd, st)
    }

    #[test]
    fn lookup_counts_and_forget() {
        let tmp = std::env::temp_dir().join(format!("vufsd-inodes-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("d")).unwrap();
        let (rfd, rst) = open_path(&tmp);
        let store = InodeStore::new(rfd, &rst);

        let (fd1, st1) = open_path(&tmp.join("d"));
        let a = store.add_ref(fd1, &st1).unwrap();
        let (fd2, st2) = open_path(&tmp.join("d"));
        let b = store.add_ref(fd2, &st2).unwrap();
        assert_eq!(a.id, b.id, "the same host inode gets the same node id");
        assert_eq!(store.len(), 2);

        store.forget(a.id, 1);
        assert!(store.get(a.id).is_ok(), "one reference left");
        store.forget(a.id, 5);
        assert!(
            store.get(a.id).is_err(),
            "over-forgetting removes it, no panic"
        );
        store.forget(a.id, 1);
        store.forget(12345, 1);
        store.forget(ROOT_ID, u64::MAX);
        assert!(store.get(ROOT_ID).is_ok(), "the root is pinned");

        let (fd3, st3) = open_path(&tmp.join("d"));
        let c = store.add_ref(fd3, &st3).unwrap();
        assert_ne!(c.id, a.id, "node ids are never reused");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
