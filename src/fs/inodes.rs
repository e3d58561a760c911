//! The inode table: FUSE node ids to host inodes, held as O_PATH fds or file handles.
//!
//! A host inode is identified by (st_dev, st_ino). The guest refers to it by a node id we hand
//! out (never reused, so generation numbers can stay 0) and keeps it alive with lookup counts:
//! every successful lookup/create/mkdir/... adds one, FORGET subtracts. At zero the entry and its
//! fd go away. The root (node id 1) is pinned.
//!
//! An O_PATH fd per inode is the fastest way to reach an inode again, but a guest walking a
//! large tree (a Nix store) can hold more inodes than the daemon may open fds. Past a budget
//! (half the open-file limit), non-directory inodes are held as file handles instead, and
//! opened from the handle when needed — if the daemon may (CAP_DAC_READ_SEARCH) and the
//! filesystem has handles. Directories always keep their fd: they are the `*at` parents.
//!
//! A LOOKUP of a name that leads to an inode already in the table (the guest revalidating a
//! dentry, `ls -l` of a directory it has listed before) needs only the name's (device, inode
//! number): the table remembers the (parent, name) each inode was first found under, and a
//! `fstatat` of the name confirms it — one syscall instead of open, stat and close. The hint is
//! never trusted: a name that now leads elsewhere takes the full path (and the new inode it
//! finds takes the hint over).

use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::sys::{self, FileHandle, Stat};

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

/// A name in a directory, as a key of the lookup hint (a hash: a collision only costs the
/// full lookup, since every hint is checked against the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameKey {
    parent: u64,
    name: u64,
}

impl NameKey {
    pub fn new(parent: u64, name: &CStr) -> Self {
        let mut h = DefaultHasher::new();
        name.to_bytes().hash(&mut h);
        Self {
            parent,
            name: h.finish(),
        }
    }
}

/// How an inode is held.
#[derive(Debug)]
enum Held {
    /// O_PATH | O_NOFOLLOW fd: names the inode without granting read or write access.
    Fd(OwnedFd),
    /// A file handle, and an fd on the same mount to open it with.
    Handle(FileHandle, Arc<OwnedFd>),
    /// Nothing: a migration could not find this inode on the destination
    /// (`--migration-on-error=guest-error`). The guest gets ESTALE for it until it forgets it.
    Lost,
}

fn estale() -> io::Error {
    io::Error::from_raw_os_error(libc::ESTALE)
}

/// An fd for an inode: borrowed from the table, or opened from its handle for this one use.
pub enum InodeFd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for InodeFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            InodeFd::Borrowed(fd) => *fd,
            InodeFd::Owned(fd) => fd.as_fd(),
        }
    }
}

impl AsRawFd for InodeFd<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

#[derive(Debug)]
pub struct InodeData {
    pub id: u64,
    pub key: InodeKey,
    held: Held,
    /// File type bits (S_IFMT), fixed for the life of an inode.
    pub file_type: u32,
    /// The owner as last seen. Used only for the O_NOATIME decision, which tolerates staleness
    /// (a wrong guess costs one retried open).
    owner: AtomicU32,
    refcount: AtomicU64,
    /// The name this inode was first found under: its lookup hint, removed with it.
    name: Option<NameKey>,
}

impl InodeData {
    /// An O_PATH fd for the inode, to use while the returned value lives.
    pub fn fd(&self) -> io::Result<InodeFd<'_>> {
        match &self.held {
            Held::Fd(fd) => Ok(InodeFd::Borrowed(fd.as_fd())),
            Held::Handle(handle, mount) => {
                sys::open_by_handle(mount.as_fd(), handle, libc::O_PATH).map(InodeFd::Owned)
            }
            Held::Lost => Err(estale()),
        }
    }

    /// A real fd for the inode, opened with `flags`: through `/proc/self/fd` (the `proc_self_fd`
    /// directory) for an O_PATH fd, or straight from the handle.
    pub fn open(&self, proc_self_fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        let flags = flags & !libc::O_NOFOLLOW;
        match &self.held {
            Held::Fd(fd) => sys::openat(proc_self_fd, &sys::fd_name(fd.as_raw_fd()), flags, 0),
            Held::Handle(handle, mount) => sys::open_by_handle(mount.as_fd(), handle, flags),
            Held::Lost => Err(estale()),
        }
    }

    /// Whether the inode is held by a file handle rather than an fd.
    pub fn by_handle(&self) -> bool {
        matches!(self.held, Held::Handle(..))
    }

    /// Whether the table holds an O_PATH fd for it (what the fd budget counts).
    fn holds_fd(&self) -> bool {
        matches!(self.held, Held::Fd(_))
    }

    /// Whether a migration lost this inode (see [`Held::Lost`]).
    pub fn is_lost(&self) -> bool {
        matches!(self.held, Held::Lost)
    }

    /// Lookups the guest has not forgotten.
    pub fn refcount(&self) -> u64 {
        self.refcount.load(Ordering::Relaxed)
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
    /// Lookup hints: the inode a name was first found to lead to.
    by_name: HashMap<NameKey, u64>,
}

impl Tables {
    /// After a guest forgot most of a big tree (a `find` over a store, then memory pressure),
    /// give the tables' memory back rather than keep their high-water mark for ever. Shrinks
    /// to twice the entries left once a table is under a quarter full, so that a table that
    /// goes up and down by a few entries never rehashes.
    fn shrink_if_sparse(&mut self) {
        const MIN: usize = 4096;
        let sparse = |cap: usize, len: usize| cap > MIN && len < cap / 4;
        let mut shrunk = false;
        if sparse(self.by_id.capacity(), self.by_id.len()) {
            self.by_id.shrink_to(self.by_id.len() * 2);
            self.by_key.shrink_to(self.by_key.len() * 2);
            shrunk = true;
        }
        if sparse(self.by_name.capacity(), self.by_name.len()) {
            self.by_name.shrink_to(self.by_name.len() * 2);
            shrunk = true;
        }
        if shrunk {
            crate::sys::release_free_memory();
        }
    }
}

pub struct InodeStore {
    tables: RwLock<Tables>,
    next_id: AtomicU64,
    /// Inode fds held; past `fd_budget`, new non-directory inodes are held by handle.
    fds_held: AtomicUsize,
    fd_budget: usize,
    /// Whether file handles may be used (CAP_DAC_READ_SEARCH, and not --inode-file-handles=never).
    handles: bool,
    /// A directory fd per mount (by mount id) to open handles with.
    mounts: Mutex<HashMap<i32, Arc<OwnedFd>>>,
}

/// How the store may hold inodes.
#[derive(Clone, Copy, Debug)]
pub struct HoldPolicy {
    /// Inode fds to hold before turning to handles.
    pub fd_budget: usize,
    /// Whether handles may be used at all.
    pub handles: bool,
}

impl HoldPolicy {
    /// Only fds, never handles (tests, and --inode-file-handles=never).
    pub const FDS_ONLY: HoldPolicy = HoldPolicy {
        fd_budget: usize::MAX,
        handles: false,
    };
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl InodeStore {
    /// A store holding only the root, whose O_PATH fd and stat are given.
    pub fn new(root_fd: OwnedFd, root_st: &Stat, policy: HoldPolicy) -> Self {
        let root = Arc::new(InodeData {
            id: ROOT_ID,
            key: InodeKey::of(root_st),
            held: Held::Fd(root_fd),
            file_type: root_st.st_mode & libc::S_IFMT,
            owner: AtomicU32::new(root_st.st_uid),
            // Pinned: the guest never forgets the root more often than it looked it up, but a
            // hostile guest might try.
            refcount: AtomicU64::new(u64::MAX / 2),
            name: None,
        });
        let mut tables = Tables::default();
        tables.by_key.insert(root.key, ROOT_ID);
        tables.by_id.insert(ROOT_ID, root);
        Self {
            tables: RwLock::new(tables),
            next_id: AtomicU64::new(ROOT_ID + 1),
            fds_held: AtomicUsize::new(1),
            fd_budget: policy.fd_budget,
            handles: policy.handles,
            mounts: Mutex::new(HashMap::new()),
        }
    }

    /// How to hold a new inode: its fd while under budget (and always for directories), else
    /// its file handle when handles work; the fd otherwise.
    fn hold(&self, fd: OwnedFd, st: &Stat) -> Held {
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir || !self.handles || self.fds_held.load(Ordering::Relaxed) < self.fd_budget {
            self.fds_held.fetch_add(1, Ordering::Relaxed);
            return Held::Fd(fd);
        }
        let Ok((handle, mount_id)) = sys::name_to_handle(fd.as_fd()) else {
            self.fds_held.fetch_add(1, Ordering::Relaxed);
            return Held::Fd(fd);
        };
        // Only on a mount we hold a real (non-O_PATH) fd for: open_by_handle_at refuses O_PATH
        // fds as its mount fd. That is the share's own mount; inodes on mounts inside the
        // share keep their fds.
        let mount = self
            .mounts
            .lock()
            .ok()
            .and_then(|m| m.get(&mount_id).cloned());
        match mount {
            Some(mount) => Held::Handle(handle, mount),
            None => {
                self.fds_held.fetch_add(1, Ordering::Relaxed);
                Held::Fd(fd)
            }
        }
    }

    /// Make handles on the mount `dir` (a directory opened for reading) is on openable.
    pub fn add_mount(&self, dir: OwnedFd) -> io::Result<()> {
        let (_, mount_id) = sys::name_to_handle(dir.as_fd())?;
        if let Ok(mut mounts) = self.mounts.lock() {
            mounts.insert(mount_id, Arc::new(dir));
        }
        Ok(())
    }

    /// How many inode fds may be held before new inodes are held by handle.
    pub fn fd_budget(&self) -> usize {
        self.fd_budget
    }

    /// Inode fds held now (the mounts' fds not counted).
    pub fn fds_held(&self) -> usize {
        self.fds_held.load(Ordering::Relaxed)
    }

    pub fn get(&self, id: u64) -> io::Result<Arc<InodeData>> {
        let tables = self.tables.read().map_err(|_| ebadf())?;
        tables.by_id.get(&id).cloned().ok_or_else(ebadf)
    }

    /// Whether a lookup of `name` has a hint worth checking (see the module's comment).
    pub fn has_hint(&self, name: &NameKey) -> bool {
        self.tables
            .read()
            .is_ok_and(|t| t.by_name.contains_key(name))
    }

    /// Count one more guest reference to the inode `name` led to before, if it is the inode a
    /// stat of the name just found (`st`); None when the hint is stale or gone.
    pub fn add_ref_hinted(&self, name: &NameKey, st: &Stat) -> Option<Arc<InodeData>> {
        let tables = self.tables.read().ok()?;
        let found = tables
            .by_name
            .get(name)
            .and_then(|id| tables.by_id.get(id))?;
        if found.key != InodeKey::of(st) {
            return None;
        }
        // Under the read lock, so a FORGET cannot remove it in between (it needs the write
        // lock, and then sees this reference).
        found.refcount.fetch_add(1, Ordering::Relaxed);
        found.note_owner(st.st_uid);
        Some(found.clone())
    }

    /// Count one more guest reference to the inode `fd`/`st` describe, adding it to the table
    /// if it is new. An fd for an inode already present is simply dropped. `name`, where the
    /// inode was found by name, becomes the lookup hint of a new inode.
    pub fn add_ref(
        &self,
        fd: OwnedFd,
        st: &Stat,
        name: Option<NameKey>,
    ) -> io::Result<Arc<InodeData>> {
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
            held: self.hold(fd, st),
            file_type: st.st_mode & libc::S_IFMT,
            owner: AtomicU32::new(st.st_uid),
            refcount: AtomicU64::new(1),
            name,
        });
        tables.by_key.insert(key, id);
        tables.by_id.insert(id, data.clone());
        if let Some(name) = name {
            tables.by_name.insert(name, id);
        }
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
            if let Some(name) = inode.name {
                if tables.by_name.get(&name) == Some(&id) {
                    tables.by_name.remove(&name);
                }
            }
            if inode.holds_fd() {
                self.fds_held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        tables.shrink_if_sparse();
        true
    }

    /// Every inode but the root, for a migration's state.
    pub fn entries(&self) -> Vec<Arc<InodeData>> {
        self.tables
            .read()
            .map(|t| {
                t.by_id
                    .values()
                    .filter(|i| i.id != ROOT_ID)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node id the next new inode gets.
    pub fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Go on numbering after `next` (never below what was handed out already).
    pub fn continue_ids_from(&self, next: u64) {
        self.next_id.fetch_max(next, Ordering::Relaxed);
    }

    /// Put back an inode a migration brought over, with the node id and lookup count the guest
    /// knows it by: held by `found` (an O_PATH fd and its stat), or lost when None. A node id
    /// already in use, or the root's, is refused: the stream would be lying.
    pub fn restore(
        &self,
        id: u64,
        refcount: u64,
        file_type: u32,
        found: Option<(OwnedFd, &Stat)>,
    ) -> io::Result<Arc<InodeData>> {
        let mut tables = self.tables.write().map_err(|_| ebadf())?;
        if id == ROOT_ID || id == 0 || tables.by_id.contains_key(&id) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let (held, key, owner) = match found {
            Some((fd, st)) => (self.hold(fd, st), InodeKey::of(st), st.st_uid),
            // Never in `by_key`: no lookup can lead to a lost inode.
            None => (Held::Lost, InodeKey { dev: 0, ino: 0 }, 0),
        };
        let data = Arc::new(InodeData {
            id,
            key,
            held,
            file_type,
            owner: AtomicU32::new(owner),
            refcount: AtomicU64::new(refcount.max(1)),
            name: None,
        });
        // Two node ids for one host inode (a hard link the source had not matched): lookups
        // find the first.
        if !data.is_lost() {
            tables.by_key.entry(key).or_insert(id);
        }
        tables.by_id.insert(id, data.clone());
        self.continue_ids_from(id.saturating_add(1));
        Ok(data)
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
        let store = InodeStore::new(rfd, &rst, HoldPolicy::FDS_ONLY);

        let (fd1, st1) = open_path(&tmp.join("d"));
        let a = store.add_ref(fd1, &st1, None).unwrap();
        let (fd2, st2) = open_path(&tmp.join("d"));
        let b = store.add_ref(fd2, &st2, None).unwrap();
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
        let c = store.add_ref(fd3, &st3, None).unwrap();
        assert_ne!(c.id, a.id, "node ids are never reused");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn lookup_hints_are_checked_and_leave_with_their_inode() {
        let tmp = std::env::temp_dir().join(format!("vufsd-hints-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("d")).unwrap();
        std::fs::create_dir_all(tmp.join("e")).unwrap();
        let (rfd, rst) = open_path(&tmp);
        let store = InodeStore::new(rfd, &rst, HoldPolicy::FDS_ONLY);
        let d = NameKey::new(ROOT_ID, c"d");
        assert!(!store.has_hint(&d));

        let (fd, st) = open_path(&tmp.join("d"));
        let a = store.add_ref(fd, &st, Some(d)).unwrap();
        assert!(store.has_hint(&d));
        let again = store.add_ref_hinted(&d, &st).expect("the hint matches");
        assert_eq!(again.id, a.id);
        // The name now leads to another inode: the hint is not taken.
        let (_, other) = open_path(&tmp.join("e"));
        assert!(store.add_ref_hinted(&d, &other).is_none());
        assert!(store
            .add_ref_hinted(&NameKey::new(a.id, c"d"), &st)
            .is_none());

        // Two references (add_ref, add_ref_hinted): the hint goes with the last FORGET.
        store.forget(a.id, 1);
        assert!(store.has_hint(&d));
        store.forget(a.id, 1);
        assert!(!store.has_hint(&d));
        assert!(store.add_ref_hinted(&d, &st).is_none());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
