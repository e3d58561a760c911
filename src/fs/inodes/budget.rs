//! The fd budget: how many inode O_PATH fds the table keeps, and which one goes next.
//!
//! Every inode the table holds by fd is in a queue, in the order it got its fd (second-chance
//! FIFO: the clock algorithm's approximation of least recently used). Each use of an inode
//! marks it; when the table holds more fds than its budget, inodes are taken from the front: a
//! marked one loses its mark and goes to the back, the first unmarked one that may be evicted
//! is. Inodes with open handles are never evicted (the guest is using them: locks, attribute
//! changes without a handle), nor the root, nor an inode the table could not find again (no
//! name to reopen it by, and no file handle).
//!
//! Eviction takes the inode's identity (`identity`, once) and closes its fd; the inode is
//! reopened the next time it is used (`data`). Nothing here makes a system call but that.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::data::InodeData;

/// How many inodes one call may look at before giving up (every inode in the way is in use,
/// pinned by an open handle or cannot be found again): the table then holds a few fds over
/// budget rather than spend its time going round.
const MAX_STEPS: usize = 256;

pub struct FdBudget {
    /// Inode fds to keep at most.
    limit: usize,
    /// Inode fds held now.
    held: AtomicUsize,
    /// Inodes that held an fd when they were put here; stale entries (evicted, forgotten,
    /// gone) are dropped when they come to the front, or when the queue grows too long.
    queue: Mutex<VecDeque<Weak<InodeData>>>,
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
            queue: Mutex::new(VecDeque::new()),
            handles,
            mounts: Mutex::new(HashMap::new()),
        }
    }

    /// Inode fds kept at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// An fd was given to an inode: count it; `inode` goes to the back of the queue unless it
    /// keeps its fd for good (the root: None).
    pub fn took(&self, inode: Option<Weak<InodeData>>) {
        self.held.fetch_add(1, Ordering::Relaxed);
        let Some(inode) = inode else { return };
        if let Ok(mut queue) = self.queue.lock() {
            queue.push_back(inode);
            // Stale entries are dropped when they come to the front; when nothing is evicted
            // (under budget), sweep them now and then.
            self.sweep_if_stale(&mut queue);
        }
    }

    /// An inode gave its fd back (evicted, or forgotten by the guest).
    pub fn gave_back(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        // A guest that forgets a big tree leaves the queue full of entries for inodes that are
        // gone, and a Weak keeps its inode's allocation: 100,000 files created and deleted kept
        // 19 MB until the next sweep, which only new inodes would have started.
        if let Ok(mut queue) = self.queue.try_lock() {
            self.sweep_if_stale(&mut queue);
        }
    }

    /// Drop the queue's entries for inodes without an fd once they are most of it (so that the
    /// sweeps cost O(1) per fd given or taken).
    fn sweep_if_stale(&self, queue: &mut VecDeque<Weak<InodeData>>) {
        if queue.len() <= 2 * self.held() + 1024 {
            return;
        }
        queue.retain(|w| w.upgrade().is_some_and(|i| i.has_fd()));
        if queue.capacity() > 2 * queue.len() + 1024 {
            queue.shrink_to(queue.len() + queue.len() / 2 + 1024);
        }
    }

    /// Evict inodes until the table is within its budget, or enough were looked at.
    pub fn make_room(&self) {
        let mut steps = 0;
        while self.held() > self.limit && steps < MAX_STEPS {
            let Some(victim) = self.next_victim(&mut steps) else {
                return;
            };
            if !victim.evict(self) && victim.has_fd() {
                // It got an open handle meanwhile: back in the queue.
                if let Ok(mut queue) = self.queue.lock() {
                    queue.push_back(Arc::downgrade(&victim));
                }
            }
        }
    }

    /// The next inode from the front of the queue that may be evicted, taken out of it.
    fn next_victim(&self, steps: &mut usize) -> Option<Arc<InodeData>> {
        let mut queue = self.queue.lock().ok()?;
        while *steps < MAX_STEPS {
            *steps += 1;
            let front = queue.pop_front()?;
            let Some(inode) = front.upgrade().filter(|i| i.has_fd()) else {
                continue;
            };
            if inode.take_mark() || !inode.may_evict(self.handles) {
                queue.push_back(front);
                continue;
            }
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
