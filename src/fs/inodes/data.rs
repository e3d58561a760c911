//! One inode of the table, and how it is reached: its O_PATH fd while it holds one, else
//! reopened where it was last seen (or from its file handle), and checked to be the same inode.
//!
//! Each inode remembers the directory and name it was last found under (its location). An
//! inode without an fd is reopened relative to its parent, which is reopened the same way if it
//! has no fd either, up to the nearest ancestor that has one (the root always does). Every
//! inode opened again is checked against what the table knows of it — device, inode number,
//! file type and identity (`identity`) — so that a file renamed away, deleted or replaced on
//! the host is never taken for the one the guest knows: the guest gets ESTALE for it (its
//! kernel then looks the name up again), never another file.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::budget::FdBudget;
use super::identity::Identity;
use super::{InodeKey, NameKey};
use crate::sys::{self, Stat};

/// Ancestors without an fd that one reopening may go through: deeper than any tree a path can
/// name, and a bound on a loop of stale locations (a directory renamed into its own old child
/// on the host).
const MAX_CHAIN: usize = 8192;

pub fn estale() -> io::Error {
    io::Error::from_raw_os_error(libc::ESTALE)
}

/// The directory and name an inode was last found under.
#[derive(Debug)]
struct Location {
    parent: Arc<InodeData>,
    name: CString,
}

/// How an inode is held.
#[derive(Debug)]
enum Held {
    /// O_PATH | O_NOFOLLOW fd: names the inode without granting read or write access.
    Fd(Arc<OwnedFd>),
    /// No fd (evicted past the fd budget, or forgotten): reopened from its location, or its
    /// file handle, when used, and checked against its identity.
    Closed,
    /// Nothing: the host inode is gone (its number now belongs to another file), or a
    /// migration could not find it (`--migration-on-error=guest-error`). ESTALE until the
    /// guest forgets it.
    Lost,
}

#[derive(Debug)]
struct Slot {
    held: Held,
    /// Its identity, taken the first time its fd went (it never changes): what it is checked
    /// against when reopened. None while it never had to be taken (or was not worth it: a
    /// forgotten inode nothing names as a parent), and then only the key is checked.
    identity: Option<Identity>,
    at: Option<Location>,
    /// Still in the table (not forgotten): only then does a reopened fd stay.
    in_table: bool,
}

impl Slot {
    /// Whether `fd` (whose key matched) is this slot's inode: always while it holds its fd (the
    /// fd keeps the host from giving its number to another file), else as its identity says.
    fn matches(&self, fd: BorrowedFd<'_>) -> bool {
        match (&self.held, &self.identity) {
            (Held::Fd(_), _) | (Held::Closed, None) => true,
            (Held::Closed, Some(id)) => id.matches(fd),
            (Held::Lost, _) => false,
        }
    }
}

/// An fd for an inode, kept open while this value lives: the table's own (shared with it), or
/// one opened for this use alone.
pub enum InodeFd {
    Shared(Arc<OwnedFd>),
    Owned(OwnedFd),
}

impl AsFd for InodeFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            InodeFd::Shared(fd) => fd.as_fd(),
            InodeFd::Owned(fd) => fd.as_fd(),
        }
    }
}

impl AsRawFd for InodeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// What a new inode starts with.
pub(super) struct NewInode<'a> {
    pub id: u64,
    /// Its stat; None for a lost inode (no key, no owner).
    pub st: Option<&'a Stat>,
    pub file_type: u32,
    /// Its O_PATH fd; None: lost.
    pub fd: Option<OwnedFd>,
    /// Where it was found.
    pub at: Option<(&'a Arc<InodeData>, &'a CStr)>,
    pub hint: Option<NameKey>,
    /// Whether its fd may be evicted (all but the root's).
    pub on_clock: bool,
}

pub struct InodeData {
    pub id: u64,
    pub key: InodeKey,
    /// File type bits (S_IFMT), fixed for the life of an inode.
    pub file_type: u32,
    /// The owner as last seen. Used only for the O_NOATIME decision, which tolerates staleness
    /// (a wrong guess costs one retried open).
    owner: AtomicU32,
    pub(super) refcount: AtomicU64,
    /// The name this inode was first found under: its lookup hint, removed with it.
    pub(super) hint: Option<NameKey>,
    /// Used since it last came to the front of the eviction queue (see `budget`).
    marked: AtomicBool,
    /// Whether it holds an fd now (mirrors `slot`, readable without its lock).
    has_fd: AtomicBool,
    /// Open handles on it: while there are any, it keeps its fd.
    open_handles: AtomicU32,
    slot: Mutex<Slot>,
    budget: Arc<FdBudget>,
    me: Weak<InodeData>,
}

impl std::fmt::Debug for InodeData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InodeData")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("file_type", &self.file_type)
            .field("refcount", &self.refcount())
            .field("has_fd", &self.has_fd())
            .finish()
    }
}

impl InodeData {
    /// A new inode as `spec` describes it.
    pub(super) fn new(spec: NewInode<'_>, budget: &Arc<FdBudget>) -> Arc<InodeData> {
        let NewInode {
            id,
            st,
            file_type,
            fd,
            at,
            hint,
            on_clock,
        } = spec;
        let has_fd = fd.is_some();
        let inode = Arc::new_cyclic(|me| InodeData {
            id,
            key: st.map_or(InodeKey { dev: 0, ino: 0 }, InodeKey::of),
            file_type,
            owner: AtomicU32::new(st.map_or(0, |s| s.st_uid)),
            refcount: AtomicU64::new(1),
            hint,
            marked: AtomicBool::new(true),
            has_fd: AtomicBool::new(has_fd),
            open_handles: AtomicU32::new(0),
            slot: Mutex::new(Slot {
                held: fd.map_or(Held::Lost, |fd| Held::Fd(Arc::new(fd))),
                identity: None,
                at: at.map(|(parent, name)| Location {
                    parent: parent.clone(),
                    name: name.to_owned(),
                }),
                in_table: true,
            }),
            budget: budget.clone(),
            me: me.clone(),
        });
        if has_fd {
            budget.took(on_clock.then(|| inode.me.clone()));
        }
        inode
    }

    fn slot(&self) -> io::Result<MutexGuard<'_, Slot>> {
        self.slot.lock().map_err(|_| estale())
    }

    /// An O_PATH fd for the inode, to use while the returned value lives: the table's, or the
    /// inode opened again (see the module's comment).
    pub fn fd(&self) -> io::Result<InodeFd> {
        self.mark();
        match &self.slot()?.held {
            Held::Fd(fd) => return Ok(InodeFd::Shared(fd.clone())),
            Held::Lost => return Err(estale()),
            Held::Closed => {}
        }
        self.reopen()
    }

    /// A real fd for the inode, opened with `flags` through `/proc/self/fd` (the
    /// `proc_self_fd` directory).
    pub fn open(&self, proc_self_fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        let fd = self.fd()?;
        sys::openat(
            proc_self_fd,
            &sys::fd_name(fd.as_raw_fd()),
            flags & !libc::O_NOFOLLOW,
            0,
        )
    }

    /// Whether the inode is gone for good (see [`Held::Lost`]).
    pub fn is_lost(&self) -> bool {
        self.slot().map_or(true, |s| matches!(s.held, Held::Lost))
    }

    /// Whether the table holds an O_PATH fd for it now.
    pub fn has_fd(&self) -> bool {
        self.has_fd.load(Ordering::Acquire)
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

    /// The guest opened a handle on it: keep its fd until [`Self::unpin`].
    pub fn pin(&self) {
        self.open_handles.fetch_add(1, Ordering::AcqRel);
    }

    pub fn unpin(&self) {
        self.open_handles.fetch_sub(1, Ordering::AcqRel);
    }

    /// It was (just) found as `name` in `parent`: where to reopen it from now on. "." and ".."
    /// are not locations (they would make an inode its own ancestor).
    pub fn note_location(&self, parent: &Arc<InodeData>, name: &CStr) {
        if matches!(name.to_bytes(), b"." | b"..") || parent.id == self.id {
            return;
        }
        let Ok(mut slot) = self.slot() else { return };
        if let Some(at) = &slot.at {
            if at.parent.id == parent.id && at.name.as_c_str() == name {
                return;
            }
        }
        slot.at = Some(Location {
            parent: parent.clone(),
            name: name.to_owned(),
        });
    }

    fn mark(&self) {
        if !self.marked.load(Ordering::Relaxed) {
            self.marked.store(true, Ordering::Relaxed);
        }
    }

    /// Clear the clock's mark; whether it was set.
    pub(super) fn take_mark(&self) -> bool {
        self.marked.swap(false, Ordering::Relaxed)
    }

    /// Whether the clock may evict it now (checked again by [`Self::evict`]): no open handle,
    /// not busy, and a way back to it.
    pub(super) fn may_evict(&self, handles: bool) -> bool {
        if self.open_handles.load(Ordering::Acquire) > 0 {
            return false;
        }
        self.slot
            .try_lock()
            .is_ok_and(|s| s.in_table && (s.at.is_some() || handles))
    }

    /// Give the fd back, keeping the inode's identity to check it against when it is reopened.
    /// False when it may not go after all (it got an open handle, or has no way back).
    pub(super) fn evict(&self, budget: &FdBudget) -> bool {
        let Ok(mut slot) = self.slot() else {
            return false;
        };
        if !slot.in_table || self.open_handles.load(Ordering::Acquire) > 0 {
            return false;
        }
        let Slot {
            held, identity, at, ..
        } = &mut *slot;
        let Held::Fd(fd) = held else {
            return false;
        };
        let identity = identity.get_or_insert_with(|| Identity::of(fd.as_fd()));
        let reachable = at.is_some()
            || matches!(identity, Identity::Handle { mount_id, .. } if budget.mount(*mount_id).is_some());
        if !reachable {
            return false;
        }
        *held = Held::Closed;
        self.has_fd.store(false, Ordering::Release);
        budget.gave_back();
        true
    }

    /// The guest forgot it (it left the table): give its fd back. Its location stays, for the
    /// inodes that still name it as their parent; `shared` says whether anything does (or a
    /// request still uses it), so that its identity is worth taking.
    pub(super) fn forgotten(&self, shared: bool) {
        let Ok(mut slot) = self.slot() else { return };
        slot.in_table = false;
        let Slot { held, identity, .. } = &mut *slot;
        if let Held::Fd(fd) = held {
            if shared && identity.is_none() {
                *identity = Some(Identity::of(fd.as_fd()));
            }
            *held = Held::Closed;
            self.has_fd.store(false, Ordering::Release);
            self.budget.gave_back();
        }
    }

    /// Mark it lost: its host inode is gone (see [`Held::Lost`]).
    pub(super) fn lose(&self) {
        let Ok(mut slot) = self.slot() else { return };
        if matches!(slot.held, Held::Fd(_)) {
            self.budget.gave_back();
        }
        slot.held = Held::Lost;
        slot.at = None;
        self.has_fd.store(false, Ordering::Release);
    }

    /// Whether `fd` (whose key matched) is this inode, for a lookup that found its inode number
    /// again. Always so while it holds an fd: the fd keeps the number from being reused.
    pub(super) fn same_as(&self, fd: BorrowedFd<'_>) -> bool {
        let Ok(slot) = self.slot.lock() else {
            return false;
        };
        slot.matches(fd)
    }

    /// Hold `fd` (this inode, just opened again) if the inode has none and is still in the
    /// table; the fd to use either way.
    pub(super) fn adopt(&self, fd: OwnedFd) -> Arc<OwnedFd> {
        let Ok(mut slot) = self.slot() else {
            return Arc::new(fd);
        };
        match &slot.held {
            Held::Fd(held) => return held.clone(),
            Held::Closed if slot.in_table => {}
            _ => return Arc::new(fd),
        }
        let fd = Arc::new(fd);
        slot.held = Held::Fd(fd.clone());
        self.has_fd.store(true, Ordering::Release);
        drop(slot);
        // Just used: to the back of the queue, with a second chance.
        self.mark();
        self.budget.took(Some(self.me.clone()));
        self.budget.make_room();
        fd
    }

    /// The fd it holds now, if any (marking it used).
    fn held_fd(&self) -> io::Result<Option<Arc<OwnedFd>>> {
        self.mark();
        match &self.slot()?.held {
            Held::Fd(fd) => Ok(Some(fd.clone())),
            Held::Closed => Ok(None),
            Held::Lost => Err(estale()),
        }
    }

    /// Where it was last found.
    fn location(&self) -> io::Result<(Arc<InodeData>, CString)> {
        let slot = self.slot()?;
        let at = slot.at.as_ref().ok_or_else(estale)?;
        Ok((at.parent.clone(), at.name.clone()))
    }

    /// The inode opened from its file handle, when it has one the table may open; Err(ESTALE)
    /// when the handle says the inode is gone, None when there is no handle to try.
    fn by_handle(&self) -> io::Result<Option<OwnedFd>> {
        let (handle, mount) = {
            let slot = self.slot()?;
            match (&slot.held, &slot.identity) {
                (Held::Closed, Some(Identity::Handle { handle, mount_id })) => {
                    match self.budget.mount(*mount_id) {
                        Some(mount) => (handle.clone(), mount),
                        None => return Ok(None),
                    }
                }
                _ => return Ok(None),
            }
        };
        match sys::open_by_handle(mount.as_fd(), &handle, libc::O_PATH) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => Err(e),
            // Not permitted after all (the capability or the filter refused): by name.
            Err(_) => Ok(None),
        }
    }

    /// `fd`, found where this inode was, is this inode: same device and inode number, same
    /// type, same identity.
    fn check(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let st = sys::stat_fd(fd)?;
        if InodeKey::of(&st) != self.key || st.st_mode & libc::S_IFMT != self.file_type {
            return Err(estale());
        }
        if self.slot()?.matches(fd) {
            Ok(())
        } else {
            Err(estale())
        }
    }

    /// Open the inode again (see the module's comment) and hold the fd if it may.
    fn reopen(&self) -> io::Result<InodeFd> {
        let fd = match self.by_handle()? {
            Some(fd) => fd,
            None => self.reopen_by_name().map_err(|e| match e.raw_os_error() {
                // Out of fds or memory is worth telling as such; anything else means the inode
                // is not where it was.
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => e,
                _ => estale(),
            })?,
        };
        Ok(InodeFd::Shared(self.adopt(fd)))
    }

    fn reopen_by_name(&self) -> io::Result<OwnedFd> {
        let (mut parent, name) = self.location()?;
        // Ancestors to open on the way down, nearest last, each with its name in its parent.
        let mut chain: Vec<(Arc<InodeData>, CString)> = Vec::new();
        let base = loop {
            if let Some(fd) = parent.held_fd()? {
                break fd;
            }
            if let Some(fd) = parent.by_handle()? {
                break parent.adopt(fd);
            }
            if chain.len() >= MAX_CHAIN {
                return Err(estale());
            }
            let (up, pname) = parent.location()?;
            chain.push((parent, pname));
            parent = up;
        };
        let mut dir = base;
        for (ancestor, pname) in chain.into_iter().rev() {
            let fd = sys::openat(
                dir.as_fd(),
                &pname,
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
                0,
            )?;
            ancestor.check(fd.as_fd())?;
            dir = ancestor.adopt(fd);
        }
        let fd = sys::openat(dir.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        self.check(fd.as_fd())?;
        Ok(fd)
    }
}
