//! The fd budget: how many inode O_PATH fds the table keeps, and which one goes next.
//!
//! Every inode the table holds by fd is on a clock (the second-chance approximation of least
//! recently used): each use of an inode marks it; when the table holds more fds than its
//! budget, the clock's hand goes round, clearing marks, and evicts the first unmarked inode it
//! may evict. Inodes with open handles are never evicted (the guest is using them: locks,
//! attribute changes without a handle), nor the root, nor an inode the table could not find
//! again (no name to reopen it by, and no file handle).
//!
//! Eviction takes the inode's identity (`identity`) and closes its fd; the inode is reopened
//! the next time it is used (`data`). Nothing here makes a system call but the eviction's.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::data::InodeData;

/// How far the hand may go in one call before giving up (every inode in the way is in use,
/// pinned by an open handle or cannot be found again): the table then holds a few fds over
/// budget rather than spend its time going round.
const MAX_STEPS: usize = 256;

#[derive(Default)]
struct Clock {
    /// Inodes that held an fd when they were put here; stale entries (evicted, forgotten,
    /// gone) are dropped as the hand passes them or when the clock grows too long.
    slots: Vec<Weak<InodeData>>,
    hand: usize,
}

pub struct FdBudget {
    /// Inode fds to keep at most.
    limit: usize,
    /// Inode fds held now.
    held: AtomicUsize,
    clock: Mutex<Clock>,
    /// Whether evicted inodes may be reopened by file handle (`--inode-file-handles=prefer`
    /// and CAP_DAC_READ_SEARCH).
    pub handles: bool,
    /// A directory fd per mount (by mount id) to open handles with.
    mounts: Mutex<HashMap<i32, Arc<OwnedFd>>>,
}

impl FdBudget {
    pub fn new(limit: usize, handles: bool) -> Self {
        Self {
            limit,
            held: AtomicUsize::new(0),
            clock: Mutex::new(Clock::default()),
            handles,
            mounts: Mutex::new(HashMap::new()),
        }
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// An fd was given to an inode: count it; `inode` goes on the clock unless it is pinned
    /// for good (the root: None).
    pub fn took(&self, inode: Option<Weak<InodeData>>) {
        self.held.fetch_add(1, Ordering::Relaxed);
        let Some(inode) = inode else { return };
        if let Ok(mut clock) = self.clock.lock() {
            clock.slots.push(inode);
            // Entries of inodes that have since lost their fd are dropped as the hand passes;
            // when it does not move (under budget), sweep them now and then.
            let held = self.held();
            if clock.slots.len() > 2 * held + 1024 {
                clock
                    .slots
                    .retain(|w| w.upgrade().is_some_and(|i| i.has_fd()));
                clock.hand = 0;
            }
        }
    }

    /// An inode gave its fd back.
    pub fn gave_back(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    /// Evict inodes until the table is within its budget, or the hand has gone far enough.
    pub fn make_room(&self) {
        let mut steps = 0;
        while self.held() > self.limit && steps < MAX_STEPS {
            let Some(victim) = self.next_victim(&mut steps) else {
                return;
            };
            if !victim.evict(self) && victim.has_fd() {
                // It got an open handle meanwhile: back on the clock.
                if let Ok(mut clock) = self.clock.lock() {
                    clock.slots.push(Arc::downgrade(&victim));
                }
            }
        }
    }

    /// The next inode the hand finds that may be evicted, taken off the clock.
    fn next_victim(&self, steps: &mut usize) -> Option<Arc<InodeData>> {
        let mut clock = self.clock.lock().ok()?;
        while *steps < MAX_STEPS {
            *steps += 1;
            if clock.slots.is_empty() {
                return None;
            }
            if clock.hand >= clock.slots.len() {
                clock.hand = 0;
            }
            let hand = clock.hand;
            let Some(inode) = clock.slots[hand].upgrade().filter(|i| i.has_fd()) else {
                clock.slots.swap_remove(hand);
                continue;
            };
            if inode.take_mark() || !inode.may_evict(self.handles) {
                clock.hand += 1;
                continue;
            }
            clock.slots.swap_remove(hand);
            return Some(inode);
        }
        None
    }

    /// Make handles on the mount `dir` (a directory opened for reading) is on openable.
    pub fn add_mount(&self, mount_id: i32, dir: OwnedFd) {
        if let Ok(mut mounts) = self.mounts.lock() {
            mounts.insert(mount_id, Arc::new(dir));
        }
    }

    /// The fd to open handles of mount `mount_id` with, if handles are used and it is known.
    pub fn mount(&self, mount_id: i32) -> Option<Arc<OwnedFd>> {
        if !self.handles {
            return None;
        }
        self.mounts.lock().ok()?.get(&mount_id).cloned()
    }
}
