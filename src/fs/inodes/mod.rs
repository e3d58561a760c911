//! The inode table: FUSE node ids to host inodes.
//!
//! A host inode is identified by (st_dev, st_ino). The guest refers to it by a node id we hand
//! out (never reused, so generation numbers can stay 0) and keeps it alive with lookup counts:
//! every successful lookup/create/mkdir/... adds one, FORGET subtracts. At zero the entry goes
//! away. The root (node id 1) is pinned.
//!
//! An O_PATH fd per inode is the fastest way to reach an inode again, but a guest walking a
//! large tree (a Nix store) can hold more inodes than the daemon may open fds. So the table
//! keeps at most a budget of fds (half the open-file limit, `budget`): past it, the least
//! recently used inodes give theirs back, and are reopened when used again — relative to the
//! directory they were last found in, by name, and checked to be the same inode (`data`,
//! `identity`); or, only when chosen (`--inode-file-handles=prefer`, which needs
//! CAP_DAC_READ_SEARCH), from their file handle. Directories are evicted like files: they are
//! reopened the same way, from their own parent.
//!
//! A LOOKUP of a name that leads to an inode already in the table (the guest revalidating a
//! dentry, `ls -l` of a directory it has listed before) needs only the name's (device, inode
//! number): the table remembers the (parent, name) each inode was first found under, and a
//! `fstatat` of the name confirms it — one syscall instead of open, stat and close. The hint is
//! never trusted: a name that now leads elsewhere takes the full path (and the new inode it
//! finds takes the hint over). It is taken only for an inode that holds its fd: the fd keeps
//! the host from giving its number to another file.

mod budget;
mod data;
mod identity;
#[cfg(test)]
mod tests;

use std::ffi::CStr;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use log::debug;

use super::idhash::IdMap;
use crate::sys::{self, Stat};
use budget::FdBudget;
use data::NewInode;
pub use data::{InodeData, InodeFd};

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

/// Where an inode was found: `name` in the directory `parent`.
#[derive(Clone, Copy)]
pub struct Found<'a> {
    pub parent: &'a Arc<InodeData>,
    pub name: &'a CStr,
}

impl Found<'_> {
    fn hint(&self) -> NameKey {
        NameKey::new(self.parent.id, self.name)
    }
}

#[derive(Default)]
struct Tables {
    by_id: IdMap<u64, Arc<InodeData>>,
    by_key: IdMap<InodeKey, u64>,
    /// Lookup hints: the inode a name was first found to lead to.
    by_name: IdMap<NameKey, u64>,
}

impl Tables {
    /// After a guest forgot most of a big tree (a `find` over a store, then memory pressure),
    /// give the tables' memory back rather than keep their high-water mark for ever. Shrinks
    /// to twice the entries left once a table is under a quarter full, so that a table that
    /// goes up and down by a few entries never rehashes. (The allocator is asked to return
    /// the freed memory later, once the forgetting stops: [`InodeStore::settle_memory`].)
    fn shrink_if_sparse(&mut self) {
        const MIN: usize = 4096;
        let sparse = |cap: usize, len: usize| cap > MIN && len < cap / 4;
        if sparse(self.by_id.capacity(), self.by_id.len()) {
            self.by_id.shrink_to(self.by_id.len() * 2);
            self.by_key.shrink_to(self.by_key.len() * 2);
        }
        if sparse(self.by_name.capacity(), self.by_name.len()) {
            self.by_name.shrink_to(self.by_name.len() * 2);
        }
    }
}

pub struct InodeStore {
    tables: RwLock<Tables>,
    next_id: AtomicU64,
    budget: Arc<FdBudget>,
    /// Inodes forgotten since memory was last given back ([`Self::settle_memory`]).
    freed: AtomicUsize,
}

/// How the store may hold inodes.
#[derive(Clone, Copy, Debug)]
pub struct HoldPolicy {
    /// Inode fds to hold at most.
    pub fd_budget: usize,
    /// Whether evicted inodes may be reopened from their file handles.
    pub handles: bool,
}

impl HoldPolicy {
    /// Fds without a limit, never handles (tests).
    pub const FDS_ONLY: HoldPolicy = HoldPolicy {
        fd_budget: usize::MAX,
        handles: false,
    };
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

/// What [`InodeStore::existing`] found for a host inode number.
enum Existing {
    /// Nothing usable: make a new entry.
    None,
    /// That inode, counted: it holds an fd.
    Held(Arc<InodeData>),
    /// That inode, counted: it had no fd and takes the one just opened.
    Adopt(Arc<InodeData>),
}

impl InodeStore {
    /// A store holding only the root, whose O_PATH fd and stat are given.
    pub fn new(root_fd: OwnedFd, root_st: &Stat, policy: HoldPolicy) -> Self {
        let budget = Arc::new(FdBudget::new(policy.fd_budget, policy.handles));
        let root = InodeData::new(
            NewInode {
                id: ROOT_ID,
                st: Some(root_st),
                file_type: root_st.st_mode & libc::S_IFMT,
                fd: Some(root_fd),
                at: None,
                hint: None,
                on_clock: false,
            },
            &budget,
        );
        // Pinned: the guest never forgets the root more often than it looked it up, but a
        // hostile guest might try.
        root.refcount.store(u64::MAX / 2, Ordering::Relaxed);
        let mut tables = Tables::default();
        tables.by_key.insert(root.key, ROOT_ID);
        tables.by_id.insert(ROOT_ID, root);
        Self {
            tables: RwLock::new(tables),
            next_id: AtomicU64::new(ROOT_ID + 1),
            budget,
            freed: AtomicUsize::new(0),
        }
    }

    /// Give the memory of forgotten inodes back to the system, once enough were forgotten
    /// since the last time. Called when the guest's FORGETs stop coming (their queue is
    /// empty): returning memory while they still come is undone by the frees that follow,
    /// which write into the returned pages again (a guest that listed and forgot 100,000
    /// files kept 17 MB that way).
    pub fn settle_memory(&self) {
        const ENOUGH: usize = 256;
        if self.freed.load(Ordering::Relaxed) >= ENOUGH
            && self.freed.swap(0, Ordering::Relaxed) >= ENOUGH
        {
            crate::sys::release_free_memory();
        }
    }

    /// Make handles on the mount `dir` (a directory opened for reading) is on openable.
    pub fn add_mount(&self, dir: OwnedFd) -> io::Result<()> {
        let (_, mount_id) = sys::name_to_handle(dir.as_fd())?;
        self.budget.add_mount(mount_id, dir);
        Ok(())
    }

    /// How many inode fds the table keeps at most (past it, the least recently used go).
    pub fn fd_budget(&self) -> usize {
        self.budget.limit()
    }

    /// Inode fds held now (the mounts' fds not counted).
    pub fn fds_held(&self) -> usize {
        self.budget.held()
    }

    pub fn get(&self, id: u64) -> io::Result<Arc<InodeData>> {
        let tables = self.tables.read().map_err(|_| ebadf())?;
        tables.by_id.get(&id).cloned().ok_or_else(ebadf)
    }

    /// The inode with host key `key`, if the table has it.
    pub fn find(&self, key: InodeKey) -> Option<Arc<InodeData>> {
        let tables = self.tables.read().ok()?;
        tables
            .by_key
            .get(&key)
            .and_then(|id| tables.by_id.get(id))
            .cloned()
    }

    /// Whether a lookup of `name` has a hint worth checking (see the module's comment).
    pub fn has_hint(&self, name: &NameKey) -> bool {
        self.tables.read().is_ok_and(|t| {
            t.by_name
                .get(name)
                .and_then(|id| t.by_id.get(id))
                .is_some_and(|i| i.has_fd())
        })
    }

    /// Count one more guest reference to the inode `name` led to before, if it is the inode a
    /// stat of the name just found (`st`); None when the hint is stale or gone.
    pub fn add_ref_hinted(&self, name: &NameKey, st: &Stat) -> Option<Arc<InodeData>> {
        let tables = self.tables.read().ok()?;
        let found = tables
            .by_name
            .get(name)
            .and_then(|id| tables.by_id.get(id))?;
        // Only while it holds its fd is its number its own.
        if found.key != InodeKey::of(st) || !found.has_fd() {
            return None;
        }
        // Under the read lock, so a FORGET cannot remove it in between (it needs the write
        // lock, and then sees this reference).
        found.refcount.fetch_add(1, Ordering::Relaxed);
        found.note_owner(st.st_uid);
        Some(found.clone())
    }

    /// Count one more guest reference to the inode `fd`/`st` describe, adding it to the table
    /// if it is new (an fd for an inode already holding one is simply dropped). `at`, where the
    /// inode was found by name, is where it is reopened from once evicted, and the lookup hint
    /// of a new inode.
    pub fn add_ref(
        &self,
        fd: OwnedFd,
        st: &Stat,
        at: Option<Found<'_>>,
    ) -> io::Result<Arc<InodeData>> {
        let key = InodeKey::of(st);
        let found = match self.existing(key, &fd, st)? {
            Existing::Held(found) => found,
            Existing::Adopt(found) => {
                found.adopt(fd);
                found
            }
            Existing::None => return self.insert(fd, st, at),
        };
        if let Some(at) = at {
            found.note_location(at.parent, at.name);
        }
        Ok(found)
    }

    /// A new entry for the inode `fd`/`st` describe, found at `at`.
    fn insert(&self, fd: OwnedFd, st: &Stat, at: Option<Found<'_>>) -> io::Result<Arc<InodeData>> {
        let key = InodeKey::of(st);
        let mut tables = self.tables.write().map_err(|_| ebadf())?;
        // Someone may have inserted it since: with our fd open, that can only be our inode.
        if let Some(found) = tables.by_key.get(&key).and_then(|id| tables.by_id.get(id)) {
            found.refcount.fetch_add(1, Ordering::Relaxed);
            return Ok(found.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let hint = at.map(|a| a.hint());
        let data = InodeData::new(
            NewInode {
                id,
                st: Some(st),
                file_type: st.st_mode & libc::S_IFMT,
                fd: Some(fd),
                at: at.map(|a| (a.parent, a.name)),
                hint,
                on_clock: true,
            },
            &self.budget,
        );
        tables.by_key.insert(key, id);
        tables.by_id.insert(id, data.clone());
        if let Some(hint) = hint {
            tables.by_name.insert(hint, id);
        }
        drop(tables);
        self.budget.make_room();
        Ok(data)
    }

    /// The entry the host inode number `key` has in the table, if it is still the inode `fd`
    /// is open on, counted. An entry without an fd is checked against `fd`'s identity: the
    /// number may have gone to a new file since the entry's was deleted, and the entry is then
    /// stale — ESTALE for the guest's old node id, and out of the way of the new inode.
    fn existing(&self, key: InodeKey, fd: &OwnedFd, st: &Stat) -> io::Result<Existing> {
        let candidate = {
            let tables = self.tables.read().map_err(|_| ebadf())?;
            let Some(found) = tables.by_key.get(&key).and_then(|id| tables.by_id.get(id)) else {
                return Ok(Existing::None);
            };
            if found.has_fd() {
                found.refcount.fetch_add(1, Ordering::Relaxed);
                found.note_owner(st.st_uid);
                return Ok(Existing::Held(found.clone()));
            }
            found.clone()
        };
        // A system call or two: outside the table's lock.
        if candidate.same_as(fd.as_fd()) {
            let tables = self.tables.read().map_err(|_| ebadf())?;
            if tables.by_key.get(&key) != Some(&candidate.id) {
                // Forgotten meanwhile.
                return Ok(Existing::None);
            }
            candidate.refcount.fetch_add(1, Ordering::Relaxed);
            candidate.note_owner(st.st_uid);
            return Ok(Existing::Adopt(candidate));
        }
        debug!(
            "node {}: its inode number {} now belongs to another file; the node is stale",
            candidate.id, key.ino
        );
        let mut tables = self.tables.write().map_err(|_| ebadf())?;
        if tables.by_key.get(&key) == Some(&candidate.id) {
            tables.by_key.remove(&key);
        }
        if let Some(hint) = candidate.hint {
            if tables.by_name.get(&hint) == Some(&candidate.id) {
                tables.by_name.remove(&hint);
            }
        }
        drop(tables);
        candidate.lose();
        Ok(Existing::None)
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
        let Some(inode) = tables.by_id.remove(&id) else {
            return false;
        };
        if tables.by_key.get(&inode.key) == Some(&id) {
            tables.by_key.remove(&inode.key);
        }
        if let Some(hint) = inode.hint {
            if tables.by_name.get(&hint) == Some(&id) {
                tables.by_name.remove(&hint);
            }
        }
        tables.shrink_if_sparse();
        drop(tables);
        self.freed.fetch_add(1, Ordering::Relaxed);
        // Children still held name it as their parent: then it is worth its identity.
        inode.forgotten(Arc::strong_count(&inode) > 1);
        true
    }

    /// Forget every inode but the root, whatever its lookup count: at unmount the guest
    /// kernel drops its inodes without sending FORGETs (they are only sent while the
    /// superblock is active), so without this the daemon would hold them, and the space of
    /// files unlinked meanwhile, until it exits. Returns how many were dropped.
    pub fn forget_all(&self) -> usize {
        let ids: Vec<u64> = self
            .tables
            .read()
            .map(|t| {
                t.by_id
                    .keys()
                    .copied()
                    .filter(|&id| id != ROOT_ID)
                    .collect()
            })
            .unwrap_or_default();
        ids.into_iter()
            .filter(|&id| self.forget(id, u64::MAX))
            .count()
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
    /// already in use, or the root's, is refused: the stream would be lying. Where it can be
    /// reopened from, if it is ever evicted, is for the caller to say
    /// ([`InodeData::note_location`]).
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
        let (fd, st) = match found {
            Some((fd, st)) => (Some(fd), Some(st)),
            None => (None, None),
        };
        let data = InodeData::new(
            NewInode {
                id,
                st,
                file_type,
                fd,
                at: None,
                hint: None,
                on_clock: true,
            },
            &self.budget,
        );
        data.refcount.store(refcount.max(1), Ordering::Relaxed);
        // Two node ids for one host inode (a hard link the source had not matched): lookups
        // find the first. A lost inode is never in `by_key`: no lookup can lead to it.
        if !data.is_lost() {
            tables.by_key.entry(data.key).or_insert(id);
        }
        tables.by_id.insert(id, data.clone());
        drop(tables);
        self.continue_ids_from(id.saturating_add(1));
        self.budget.make_room();
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
