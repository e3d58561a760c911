//! The filesystem's side of a migration: its state written out on the source, and taken over on
//! the destination (the protocol and the options are `crate::migration`'s).
//!
//! The source names every inode the guest holds by its path in the share, read from the kernel
//! (`/proc/self/fd/N`) at the switch, when the guest is stopped: renames made on the host since
//! the guest looked the inode up are already in it. Each path is checked to still lead to that
//! inode before it is sent; an inode without one (unlinked, moved out of the share) is sent
//! with its file handle only.
//!
//! Most of that work is done early: when QEMU starts a migration (VHOST_F_LOG_ALL) and while
//! it copies the guest's RAM, [`Passthrough::prepare_migration`] collects every inode's path
//! and file handle. At the switch each prepared path costs one `fstatat` to confirm it still
//! leads to its inode; only inodes that are new, or whose path changed, are collected again.
//!
//! The destination opens each path one component at a time, never following a symlink and
//! never leaving the share (the stream is not trusted), and then checks that it found the same
//! inode: the same file type always, and — when it serves the source's very directory (same
//! root file handle, or device and inode number) — the same file handle, or the same device and
//! inode number where the filesystem has no handles. An inode it cannot find or confirm fails
//! the migration (`--migration-on-error=abort`) or is marked lost (`guest-error`). It never
//! serves another file under the guest's node id.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::{info, warn};

use super::handles::HandleData;
use super::inodes::{InodeData, InodeKey, ROOT_ID};
use super::Passthrough;
use crate::migration::state::{FuseState, Handle, HandleRecord, InodeRecord, RootIdentity, State};
use crate::migration::{LoadReport, Mode, OnError, Options};
use crate::sys::{self, FileHandle, Stat};

fn fail(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn handle_of(fd: BorrowedFd<'_>) -> Option<Handle> {
    sys::name_to_handle(fd).ok().map(|(h, _)| Handle {
        handle_type: h.handle_type(),
        bytes: h.bytes().to_vec(),
    })
}

/// The components of a relative path from a stream, or None if any could leave the directory
/// it is walked from (empty, `.`, `..`, or holding a NUL).
fn components(path: &[u8]) -> Option<Vec<CString>> {
    path.split(|b| *b == b'/')
        .map(|c| match c {
            b"" | b"." | b".." => None,
            c => CString::new(c).ok(),
        })
        .collect()
}

/// `path` (from /proc/self/fd) relative to the share's root `root` (from the same place).
fn relative(root: &[u8], path: &[u8]) -> Option<Vec<u8>> {
    let rest = if root == b"/" {
        path.strip_prefix(b"/")?
    } else {
        path.strip_prefix(root)?.strip_prefix(b"/")?
    };
    components(rest).map(|_| rest.to_vec())
}

/// Walk `path` from `dir` one component at a time, never following a symlink: every component
/// but the last must be a directory.
fn walk(dir: BorrowedFd<'_>, path: &[CString]) -> io::Result<OwnedFd> {
    let Some((last, parents)) = path.split_last() else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut held: Option<OwnedFd> = None;
    for c in parents {
        let from = held.as_ref().map_or(dir, |f| f.as_fd());
        held = Some(sys::openat(
            from,
            c,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
            0,
        )?);
    }
    let from = held.as_ref().map_or(dir, |f| f.as_fd());
    sys::openat(from, last, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Whether the destination serves the directory the source served (so that inode numbers and
/// file handles can be compared), from the root identities.
fn same_directory(source: &RootIdentity, ours: &RootIdentity) -> bool {
    match (&source.handle, &ours.handle) {
        (Some(a), Some(b)) => a == b,
        _ => source.dev == ours.dev && source.ino == ours.ino,
    }
}

/// Flags a handle is reopened with: what F_GETFL reported on the source, without anything that
/// would create or truncate (F_GETFL reports none, but the stream is not trusted).
fn reopen_flags(rec: &HandleRecord, is_dir: bool, readonly: bool) -> i32 {
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NOATIME | libc::O_DIRECT;
    let mut flags = rec.flags & keep;
    if is_dir {
        flags = libc::O_RDONLY | libc::O_DIRECTORY | (flags & libc::O_NOATIME);
    } else if readonly {
        flags = libc::O_RDONLY | (flags & (libc::O_NOATIME | libc::O_DIRECT));
    }
    if !rec.noatime_allowed {
        flags &= !libc::O_NOATIME;
    }
    flags
}

/// What [`Passthrough::prepare_migration`] collected: per node id, its path (if it had one)
/// and file handle.
#[derive(Default)]
pub struct Prepared {
    entries: HashMap<u64, (Option<Vec<u8>>, Option<Handle>)>,
}

/// Everything needed to look the inodes of a state up on the destination.
struct Finder<'a> {
    fs: &'a Passthrough,
    root: Arc<InodeData>,
    opts: Options,
    same_dir: bool,
    /// The share's root opened for reading: the mount fd open_by_handle_at needs.
    mount: Option<OwnedFd>,
    /// Directories restored so far, by path: the parents of the next ones.
    dirs: HashMap<Vec<u8>, Arc<InodeData>>,
    handles_refused: bool,
}

impl Finder<'_> {
    fn open(&mut self, rec: &InodeRecord) -> Result<(OwnedFd, Stat), String> {
        if self.opts.mode == Mode::FileHandles && self.same_dir && !self.handles_refused {
            if let (Some(h), Some(mount)) = (&rec.handle, &self.mount) {
                let handle = FileHandle::from_parts(h.handle_type, h.bytes.clone())
                    .ok_or("its file handle is longer than any handle")?;
                match sys::open_by_handle(mount.as_fd(), &handle, libc::O_PATH) {
                    Ok(fd) => {
                        let st = sys::stat_fd(fd.as_fd()).map_err(|e| format!("stat: {e}"))?;
                        return Ok((fd, st));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        warn!(
                            "migration: cannot open file handles (no CAP_DAC_READ_SEARCH): \
                             finding inodes by path instead"
                        );
                        self.handles_refused = true;
                    }
                    // Stale (deleted), or unknown: its path may still tell.
                    Err(_) => {}
                }
            }
        }
        let path = rec.path.as_deref().ok_or(
            "the source had no path for it (unlinked, or moved out of the share, on the \
             source; --migration-mode=file-handles can move such files)",
        )?;
        let comps = components(path).ok_or("its path leaves the shared directory")?;
        // The nearest restored parent directory, else the root.
        let split = path.iter().rposition(|b| *b == b'/');
        let (from, rest) = match split.and_then(|i| self.dirs.get(&path[..i]).map(|d| (d, i))) {
            Some((dir, _)) => (dir.clone(), &comps[comps.len() - 1..]),
            None => (self.root.clone(), &comps[..]),
        };
        let dir = from
            .fd()
            .map_err(|e| format!("its parent directory: {e}"))?;
        let fd = walk(dir.as_fd(), rest).map_err(|e| format!("not found by path: {e}"))?;
        let st = sys::stat_fd(fd.as_fd()).map_err(|e| format!("stat: {e}"))?;
        Ok((fd, st))
    }

    /// Where `inode`, restored from `path`, is reopened from once evicted: its parent
    /// directory, when that was restored too (or is the root).
    fn note_location(&self, inode: &InodeData, path: &[u8]) {
        let (parent, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (self.dirs.get(&path[..i]), &path[i + 1..]),
            None => (Some(&self.root), path),
        };
        if let (Some(parent), Ok(name)) = (parent, CString::new(name)) {
            inode.note_location(parent, &name);
        }
    }

    /// Whether what was found is the inode the source meant.
    fn confirm(&self, rec: &InodeRecord, fd: BorrowedFd<'_>, st: &Stat) -> Result<(), String> {
        let kind = st.st_mode & libc::S_IFMT;
        if kind != rec.file_type {
            return Err(format!(
                "found a file of type {kind:o} where the source had type {:o}",
                rec.file_type
            ));
        }
        let ours = handle_of(fd);
        if self.opts.verify_handles {
            if !self.same_dir {
                return Err(
                    "--migration-verify-handles: the destination does not serve the \
                            source's directory, so handles cannot confirm it"
                        .into(),
                );
            }
            if rec.handle.is_none() || ours.is_none() {
                return Err(
                    "--migration-verify-handles: the filesystem gives no file handle for it".into(),
                );
            }
        }
        if !self.same_dir {
            return Ok(());
        }
        match (&rec.handle, &ours) {
            (Some(theirs), Some(ours)) if theirs != ours => {
                Err("a different file now has its path (its file handle differs)".into())
            }
            (Some(_), Some(_)) => Ok(()),
            _ if InodeKey::of(st)
                != (InodeKey {
                    dev: rec.dev,
                    ino: rec.ino,
                }) =>
            {
                Err("a different file now has its path (its inode number differs)".into())
            }
            _ => Ok(()),
        }
    }
}

impl Passthrough {
    fn root_identity(&self) -> io::Result<(Arc<InodeData>, RootIdentity)> {
        let root = self.inodes.get(ROOT_ID)?;
        let fd = root.fd()?;
        let st = sys::stat_fd(fd.as_fd())?;
        let id = RootIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
            handle: handle_of(fd.as_fd()),
        };
        drop(fd);
        Ok((root, id))
    }

    /// The path of `fd`'s inode inside the share, checked to lead back to it (see the
    /// module's comment); None if it has none.
    fn path_in_share(
        &self,
        root: BorrowedFd<'_>,
        root_path: &[u8],
        fd: BorrowedFd<'_>,
        st: &Stat,
        walk_it: bool,
    ) -> Option<Vec<u8>> {
        if st.st_nlink == 0 {
            return None;
        }
        let link =
            sys::readlinkat(self.proc_self_fd.as_fd(), &sys::fd_name(fd.as_raw_fd())).ok()?;
        let rel = relative(root_path, &link)?;
        let found = if walk_it {
            let comps = components(&rel)?;
            walk(root, &comps)
                .and_then(|f| sys::stat_fd(f.as_fd()))
                .ok()?
        } else {
            let c = CString::new(rel.clone()).ok()?;
            sys::fstatat(root, &c, libc::AT_SYMLINK_NOFOLLOW).ok()?
        };
        (InodeKey::of(&found) == InodeKey::of(st)).then_some(rel)
    }

    /// The record of one inode for the state, from its prepared path and handle where they
    /// still hold (one `fstatat`), else collected now.
    fn inode_record(
        &self,
        inode: &InodeData,
        root: BorrowedFd<'_>,
        root_path: &[u8],
        opts: Options,
        prepared: Option<&(Option<Vec<u8>>, Option<Handle>)>,
    ) -> InodeRecord {
        let mut rec = InodeRecord {
            id: inode.id,
            refcount: inode.refcount(),
            file_type: inode.file_type,
            dev: inode.key.dev,
            ino: inode.key.ino,
            path: None,
            handle: None,
        };
        if let Some((Some(path), handle)) = prepared {
            if !opts.confirm_paths && self.still_leads_to(root, path, inode) {
                rec.path = Some(path.clone());
                rec.handle = handle.clone();
                return rec;
            }
        }
        let Ok(fd) = inode.fd() else {
            return rec;
        };
        rec.handle = handle_of(fd.as_fd());
        if let Ok(st) = sys::stat_fd(fd.as_fd()) {
            rec.path = self.path_in_share(root, root_path, fd.as_fd(), &st, opts.confirm_paths);
        }
        rec
    }

    /// Whether `path` (relative to the share) names `inode` now.
    fn still_leads_to(&self, root: BorrowedFd<'_>, path: &[u8], inode: &InodeData) -> bool {
        CString::new(path)
            .ok()
            .and_then(|c| sys::fstatat(root, &c, libc::AT_SYMLINK_NOFOLLOW).ok())
            .is_some_and(|st| InodeKey::of(&st) == inode.key && st.st_nlink > 0)
    }

    /// Collect every inode's path and file handle ahead of the switch, while the guest still
    /// runs (QEMU is copying its RAM). Stops early when `cancel` is set; what was collected
    /// until then is kept. Paths may go stale before the switch: [`Self::migration_state`]
    /// checks each one.
    pub fn prepare_migration(&self, cancel: &AtomicBool) {
        let t0 = std::time::Instant::now();
        let Ok((root, _)) = self.root_identity() else {
            return;
        };
        let Ok(root_fd) = root.fd() else { return };
        let Ok(root_path) = sys::readlinkat(
            self.proc_self_fd.as_fd(),
            &sys::fd_name(root_fd.as_raw_fd()),
        ) else {
            return;
        };
        let mut prepared = Prepared::default();
        for inode in self.inodes.entries() {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            let Ok(fd) = inode.fd() else { continue };
            let handle = handle_of(fd.as_fd());
            let path = sys::stat_fd(fd.as_fd()).ok().and_then(|st| {
                self.path_in_share(root_fd.as_fd(), &root_path, fd.as_fd(), &st, false)
            });
            prepared.entries.insert(inode.id, (path, handle));
        }
        info!(
            "migration: prepared the paths of {} inodes in {:.1?}",
            prepared.entries.len(),
            t0.elapsed()
        );
        if let Ok(mut slot) = self.migration_prep.lock() {
            *slot = Some(prepared);
        }
    }

    /// Forget what [`Self::prepare_migration`] collected (the migration was cancelled).
    pub fn drop_migration_prep(&self) {
        if let Ok(mut slot) = self.migration_prep.lock() {
            *slot = None;
        }
    }

    /// The device state to send: called on the source once QEMU has stopped the device.
    pub fn migration_state(&self, opts: Options) -> io::Result<State> {
        let locked = self.files_holding_locks();
        if locked > 0 {
            let what = format!(
                "the guest holds POSIX or flock locks on {locked} open file(s) of the share; \
                 locks belong to the daemon's open files and cannot move to another daemon"
            );
            if opts.on_error == OnError::Abort {
                return Err(fail(format!(
                    "{what}: migration refused, the source VM goes on (release the locks, or \
                     run vufsd with --migration-on-error=guest-error to migrate without them)"
                )));
            }
            warn!("migration: {what}: the destination starts without them (--migration-on-error=guest-error)");
        }
        let (root, root_id) = self.root_identity()?;
        let root_fd = root.fd()?;
        let root_path = sys::readlinkat(
            self.proc_self_fd.as_fd(),
            &sys::fd_name(root_fd.as_raw_fd()),
        )?;
        let prepared = self
            .migration_prep
            .lock()
            .ok()
            .and_then(|mut p| p.take())
            .unwrap_or_default();
        // The guest is stopped and so are its CPUs: spread the checks over the host's.
        let entries = self.inodes.entries();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let chunk = entries.len().div_ceil(threads).max(1024);
        let root_fd = root_fd.as_fd();
        let inodes: Vec<InodeRecord> = std::thread::scope(|scope| {
            let workers: Vec<_> = entries
                .chunks(chunk)
                .map(|part| {
                    let (prepared, root_path) = (&prepared, &root_path);
                    scope.spawn(move || {
                        part.iter()
                            .map(|i| {
                                let prep = prepared.entries.get(&i.id);
                                self.inode_record(i, root_fd, root_path, opts, prep)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        if inodes.len() != entries.len() {
            return Err(fail("a thread building the device state failed"));
        }
        let without_path = inodes.iter().filter(|i| i.path.is_none()).count();
        if without_path > 0 {
            info!(
                "migration: {without_path} inode(s) have no path in the share (unlinked or moved \
                 out); they travel by file handle only"
            );
        }
        let handles = self
            .handles
            .entries()
            .into_iter()
            .map(|(fh, h)| HandleRecord {
                fh,
                inode: h.inode,
                flags: sys::get_fl(h.fd()).unwrap_or(libc::O_RDONLY),
                noatime_allowed: h.noatime_allowed,
            })
            .collect();
        Ok(State {
            fuse: FuseState {
                writeback: self.writeback.load(Ordering::Relaxed),
                posix_acl: self.acl_negotiated.load(Ordering::Relaxed),
                submounts: self.submounts.load(Ordering::Relaxed),
                killpriv_v2: self.killpriv_v2.load(Ordering::Relaxed),
                setxattr_ext: self.setxattr_ext.load(Ordering::Relaxed),
            },
            root: root_id,
            next_inode: self.inodes.next_id(),
            next_handle: self.handles.next_id(),
            inodes,
            handles,
        })
    }

    /// Take over `state` from the source: called on the destination before its device starts.
    pub fn restore_migration_state(&self, state: State, opts: Options) -> io::Result<LoadReport> {
        if self.inodes.len() > 1 || self.handles.len() > 0 {
            return Err(fail(
                "the destination daemon already serves a guest: a device state can only be \
                 loaded into a fresh daemon",
            ));
        }
        let (root, ours) = self.root_identity()?;
        let same_dir = same_directory(&state.root, &ours);
        if !same_dir {
            info!(
                "migration: this shared directory is not the source's (another directory, or a \
                 copy): inodes are found by path and checked by file type only"
            );
            if opts.verify_handles {
                return Err(fail(
                    "--migration-verify-handles: the destination does not serve the source's \
                     shared directory (its root has another file handle), so no inode can be \
                     confirmed: migration refused",
                ));
            }
        }
        let mount = (opts.mode == Mode::FileHandles)
            .then(|| {
                sys::openat(
                    root.fd()?.as_fd(),
                    c".",
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )
            })
            .transpose()?;
        let mut finder = Finder {
            fs: self,
            root,
            opts,
            same_dir,
            mount,
            dirs: HashMap::new(),
            handles_refused: false,
        };
        // Grow the fd table once, to what the state needs: left to grow by doubling as the
        // inodes are opened, a multi-threaded process waits for an RCU grace period at each
        // doubling (milliseconds each, most of a small state's downtime: 1,000 inodes took
        // 41 ms to restore, 11 ms of it CPU).
        let needed = state.inodes.len() + state.handles.len() + 64;
        let budget = self.inodes.fd_budget() + state.handles.len() + 64;
        sys::reserve_fds(self.proc_self_fd.as_fd(), needed.min(budget), self.fd_limit);
        let mut inodes = state.inodes;
        // Parents before children; inodes without a path last.
        inodes.sort_by_key(|r| {
            r.path
                .as_ref()
                .map_or(usize::MAX, |p| p.iter().filter(|b| **b == b'/').count())
        });
        let mut report = LoadReport::default();
        for rec in &inodes {
            let found = finder
                .open(rec)
                .and_then(|(fd, st)| finder.confirm(rec, fd.as_fd(), &st).map(|()| (fd, st)));
            let inode = match found {
                Ok((fd, st)) => {
                    finder
                        .fs
                        .inodes
                        .restore(rec.id, rec.refcount, rec.file_type, Some((fd, &st)))
                }
                Err(why) => {
                    let path = rec
                        .path
                        .as_deref()
                        .map_or("(no path)".into(), String::from_utf8_lossy);
                    let msg = format!("inode {} ({path}): {why}", rec.id);
                    if opts.on_error == OnError::Abort {
                        return Err(fail(format!(
                            "{msg}: migration refused, the source VM goes on \
                             (--migration-on-error=guest-error would give the guest ESTALE \
                             for it instead)"
                        )));
                    }
                    warn!("migration: {msg}: the guest gets ESTALE for it");
                    report.lost_inodes += 1;
                    finder
                        .fs
                        .inodes
                        .restore(rec.id, rec.refcount, rec.file_type, None)
                }
            }
            .map_err(|e| fail(format!("inode {} appears twice or is invalid: {e}", rec.id)))?;
            report.inodes += 1;
            if let (Some(path), false) = (&rec.path, inode.is_lost()) {
                finder.note_location(&inode, path);
            }
            if let (Some(path), true) = (&rec.path, inode.is_dir() && !inode.is_lost()) {
                finder.dirs.insert(path.clone(), inode);
            }
        }
        drop(finder);
        self.inodes.continue_ids_from(state.next_inode);
        for rec in &state.handles {
            match self.reopen_handle(rec) {
                Ok(()) => report.handles += 1,
                Err(why) => {
                    let msg = format!("open handle {} of inode {}: {why}", rec.fh, rec.inode);
                    if opts.on_error == OnError::Abort {
                        return Err(fail(format!(
                            "{msg}: migration refused, the source VM goes on"
                        )));
                    }
                    warn!("migration: {msg}: the guest gets EBADF for it");
                    report.lost_handles += 1;
                }
            }
        }
        self.handles.continue_ids_from(state.next_handle);
        self.writeback
            .store(state.fuse.writeback, Ordering::Relaxed);
        self.acl_negotiated
            .store(state.fuse.posix_acl, Ordering::Relaxed);
        self.submounts
            .store(state.fuse.submounts, Ordering::Relaxed);
        self.killpriv_v2
            .store(state.fuse.killpriv_v2, Ordering::Relaxed);
        self.setxattr_ext
            .store(state.fuse.setxattr_ext, Ordering::Relaxed);
        Ok(report)
    }

    fn reopen_handle(&self, rec: &HandleRecord) -> Result<(), String> {
        let inode = self
            .inodes
            .get(rec.inode)
            .map_err(|_| "its inode is not in the state".to_string())?;
        if inode.is_lost() {
            return Err("its inode was lost".into());
        }
        let mut flags = reopen_flags(rec, inode.is_dir(), self.cfg.readonly);
        let fd = match inode.open(self.proc_self_fd.as_fd(), flags) {
            // The source could set O_NOATIME, this daemon cannot (another user): mask it, as
            // the policy would have.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && flags & libc::O_NOATIME != 0 => {
                flags &= !libc::O_NOATIME;
                inode.open(self.proc_self_fd.as_fd(), flags)
            }
            other => other,
        }
        .map_err(|e| format!("cannot reopen it: {e}"))?;
        let on = flags & libc::O_NOATIME != 0;
        self.handles
            .restore(rec.fh, HandleData::new(&inode, fd, on, rec.noatime_allowed))
            .map_err(|_| "its handle id appears twice or is 0".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths_never_leave_the_share() {
        assert!(components(b"a/b/c").is_some());
        for bad in [
            &b""[..],
            b"/a",
            b"a//b",
            b"a/./b",
            b"../x",
            b"a/..",
            b"a/b/",
            b"a\0b",
        ] {
            assert!(
                components(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn kernel_paths_become_share_relative() {
        assert_eq!(relative(b"/", b"/a/b"), Some(b"a/b".to_vec()));
        assert_eq!(
            relative(b"/srv/share", b"/srv/share/a"),
            Some(b"a".to_vec())
        );
        assert_eq!(relative(b"/srv/share", b"/srv/shared/a"), None);
        assert_eq!(relative(b"/srv/share", b"/srv/share"), None);
        assert_eq!(relative(b"/srv/share", b"/etc/passwd"), None);
    }

    #[test]
    fn reopened_handles_never_create_truncate_or_write_a_readonly_share() {
        let rec = |flags, noatime_allowed| HandleRecord {
            fh: 1,
            inode: 2,
            flags,
            noatime_allowed,
        };
        let f = reopen_flags(
            &rec(
                libc::O_RDWR | libc::O_TRUNC | libc::O_CREAT | libc::O_APPEND,
                true,
            ),
            false,
            false,
        );
        assert_eq!(f, libc::O_RDWR | libc::O_APPEND);
        assert_eq!(
            reopen_flags(&rec(libc::O_WRONLY, true), false, true),
            libc::O_RDONLY
        );
        assert_eq!(
            reopen_flags(&rec(libc::O_RDONLY | libc::O_NOATIME, false), false, false),
            libc::O_RDONLY
        );
        assert_eq!(
            reopen_flags(&rec(libc::O_RDWR | libc::O_NOATIME, true), true, false),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME
        );
    }
}
