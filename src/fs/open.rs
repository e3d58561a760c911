//! Opening files: OPEN, CREATE (and CREATE of a name that exists), TMPFILE, RELEASE, and the
//! O_NOATIME policy applied at open.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, OpenOptions};
use fuse_backend_rs::api::filesystem::{Context, Entry};
use log::debug;

use super::handles::HandleData;
use super::inodes::{Found, InodeData};
use super::open_flags::{self, Noatime, NoatimePolicy};
use super::{check_name, err, CachePolicy, Passthrough};
use crate::sys;

impl Passthrough {
    /// Open an existing regular file for the guest, applying the O_NOATIME policy.
    fn open_file(&self, inode: &Arc<InodeData>, guest_flags: u32) -> io::Result<HandleData> {
        if !inode.is_reg() {
            // Device nodes, fifos and sockets are opened by the guest kernel itself; a request
            // to open one here can only come from a misbehaving guest, and opening a device node
            // on the host would reach a host device.
            return Err(err(if inode.is_dir() {
                libc::EISDIR
            } else if inode.is_symlink() {
                libc::ELOOP
            } else {
                libc::ENXIO
            }));
        }
        let flags = open_flags::file_open_flags(guest_flags, self.open_rules());
        if self.cfg.readonly && open_flags::writes(flags) {
            return Err(err(libc::EROFS));
        }
        self.open_with_policy(inode, flags)
    }

    /// CREATE without O_EXCL of a name that exists: open it as OPEN would, through an O_PATH
    /// lookup that never follows a symlink, so that only a regular file inside the share is ever
    /// opened.
    fn open_existing(
        &self,
        parent: &Arc<InodeData>,
        name: &CStr,
        guest_flags: u32,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (inode, _) = self.do_lookup(parent, name)?;
        let opened = self.open_file(&inode, guest_flags).and_then(|h| {
            // After the open: O_TRUNC may have changed the size.
            let st = sys::stat_fd(h.fd())?;
            Ok((st, self.handles.insert(h)?))
        });
        match opened {
            Ok((st, fh)) => Ok((
                self.entry(parent, &inode, st),
                Some(fh),
                self.open_options(),
                None,
            )),
            Err(e) => {
                // The guest gets an error, so it will never forget this lookup.
                if self.inodes.forget(inode.id, 1) {
                    self.forget_locks(inode.id);
                }
                Err(e)
            }
        }
    }

    /// Reopen `inode` with host `flags`, applying the O_NOATIME policy: mask the flag where the
    /// host would refuse it, retry once without it if the host refuses anyway, and count what
    /// happened. Used for files and directories alike.
    pub(super) fn open_with_policy(
        &self,
        inode: &Arc<InodeData>,
        mut flags: i32,
    ) -> io::Result<HandleData> {
        // Would the policy pass O_NOATIME for this inode? Decides this open, and whether a
        // later F_SETFL from the guest may set it on the handle.
        let allowed = open_flags::decide_noatime(
            self.cfg.noatime,
            self.creds,
            libc::O_NOATIME,
            inode.owner(),
        ) == Noatime::Honoured;
        let mut decision = match flags & libc::O_NOATIME {
            0 => Noatime::NotRequested,
            _ if allowed => Noatime::Honoured,
            _ => Noatime::Masked,
        };
        if decision == Noatime::Masked {
            flags &= !libc::O_NOATIME;
        }
        let result = match inode.open(self.proc_self_fd.as_fd(), flags) {
            Err(e) if open_flags::retry_without_noatime(self.cfg.noatime, flags, &e) => {
                flags &= !libc::O_NOATIME;
                decision = Noatime::Retried;
                inode.open(self.proc_self_fd.as_fd(), flags)
            }
            other => other,
        };
        // Counted whatever the open's outcome: the counters describe what was asked of the host.
        self.counters.record(decision);
        if decision != Noatime::NotRequested {
            debug!("open node {}: O_NOATIME {decision:?}", inode.id);
        }
        let fd = result?;
        let on = flags & libc::O_NOATIME != 0;
        Ok(HandleData::new(
            inode,
            fd,
            on,
            allowed && decision != Noatime::Retried,
        ))
    }

    pub(super) fn open_options(&self) -> OpenOptions {
        match self.cfg.cache {
            CachePolicy::Never | CachePolicy::Metadata => OpenOptions::DIRECT_IO,
            CachePolicy::Always => OpenOptions::KEEP_CACHE,
            CachePolicy::Auto => OpenOptions::empty(),
        }
    }

    /// FUSE_TMPFILE: an unnamed regular file in `parent` (O_TMPFILE), opened for the guest.
    pub fn tmpfile(
        &self,
        ctx: &Context,
        parent: u64,
        args: &CreateIn,
    ) -> io::Result<(Entry, u64, OpenOptions)> {
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        let mut flags =
            open_flags::file_open_flags(args.flags, self.open_rules()) & !libc::O_NOATIME;
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            // O_TMPFILE requires write access.
            flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        let fd = {
            let _as = self.as_caller(ctx)?;
            self.with_umask(args.umask, || {
                sys::openat(
                    parent.fd()?.as_fd(),
                    c".",
                    flags | libc::O_TMPFILE,
                    args.mode & 0o7777,
                )
            })?
        };
        let path_fd = self.reopen(fd.as_fd(), libc::O_PATH)?;
        let st = sys::stat_fd(fd.as_fd())?;
        let inode = self.inodes.add_ref(path_fd, &st, None)?;
        let fh = self
            .handles
            .insert(HandleData::new(&inode, fd, false, false))?;
        Ok((self.entry(&parent, &inode, st), fh, self.open_options()))
    }

    pub(super) fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let inode = self.inodes.get(inode)?;
        let handle = self.open_file(&inode, flags)?;
        let truncating = flags as i32 & libc::O_TRUNC != 0;
        if truncating
            && fuse_flags & fuse_backend_rs::abi::fuse_abi::FOPEN_IN_KILL_SUIDGID != 0
            && self.killpriv()
        {
            self.kill_suidgid(handle.fd())?;
        }
        let fh = self.handles.insert(handle)?;
        Ok((Some(fh), self.open_options(), None))
    }

    pub(super) fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        check_name(name)?;
        self.check_writable()?;
        let parent = self.dir_inode(parent)?;
        // Only ever a new file: O_CREAT without O_EXCL would open whatever the name already is,
        // following a symlink out of the share or opening a fifo (blocking this thread) or a
        // device node. An existing name is opened below as OPEN would open it.
        let mut flags = open_flags::file_open_flags(args.flags, self.open_rules())
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOFOLLOW;
        // A file we create is ours, so `auto` passes the flag and falls back on EPERM (a
        // caller we act as may not own it after all); `strip` removes it up front.
        if self.cfg.noatime == NoatimePolicy::Strip {
            flags &= !libc::O_NOATIME;
        }
        let create = |flags: i32| {
            let _as = self.as_caller(ctx)?;
            self.with_umask(args.umask, || {
                sys::openat(parent.fd()?.as_fd(), name, flags, args.mode & 0o7777)
            })
        };
        let created = match create(flags) {
            Err(e) if open_flags::retry_without_noatime(self.cfg.noatime, flags, &e) => {
                flags &= !libc::O_NOATIME;
                self.counters.record(Noatime::Retried);
                create(flags)
            }
            other => other,
        };
        let created = created.inspect_err(|e| self.note_failure(&parent, "create", e));
        let fd = match created {
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && args.flags as i32 & libc::O_EXCL == 0 =>
            {
                return self.open_existing(&parent, name, args.flags);
            }
            other => other?,
        };
        if flags & libc::O_NOATIME != 0 {
            self.counters.record(Noatime::Honoured);
        } else if args.flags as i32 & libc::O_NOATIME != 0
            && self.cfg.noatime == NoatimePolicy::Strip
        {
            self.counters.record(Noatime::Masked);
        }
        // An O_PATH fd for the inode table, taken from the open file itself so that a rename
        // racing with us cannot swap in another inode.
        let path_fd = self.reopen(fd.as_fd(), libc::O_PATH)?;
        let st = sys::stat_fd(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(err(libc::EISDIR));
        }
        let inode = self.inodes.add_ref(
            path_fd,
            &st,
            Some(Found {
                parent: &parent,
                name,
            }),
        )?;
        let on = flags & libc::O_NOATIME != 0;
        let fh = self.handles.insert(HandleData::new(&inode, fd, on, on))?;
        Ok((
            self.entry(&parent, &inode, st),
            Some(fh),
            self.open_options(),
            None,
        ))
    }

    // FileSystem::release's signature.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let h = self.handles.remove(handle, inode)?;
        self.release_handle_locks(inode, handle);
        drop(h);
        Ok(())
    }
}
