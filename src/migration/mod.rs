//! Live migration, save and restore: the vhost-user device-state protocol
//! (`VHOST_USER_PROTOCOL_F_DEVICE_STATE`) from the daemon's side.
//!
//! When QEMU (>= 8.2) migrates a VM, or saves it to a file, it stops the device and hands the
//! source daemon a pipe (SET_DEVICE_STATE_FD, direction save): the daemon writes its state into
//! it, and QEMU carries the bytes in its migration stream. The destination daemon gets a pipe
//! to read the same bytes from (direction load) before its device starts. CHECK_DEVICE_STATE
//! then asks either side whether that went well; an error there fails the migration, and the
//! source VM goes on running.
//!
//! The state (see [`state`]) is what a guest relies on and a fresh daemon would not know: the
//! node ids and lookup counts of every inode the guest holds, how to find each inode again, the
//! open file and directory handles with their flags, and what FUSE_INIT negotiated. It never
//! holds file data: the two daemons must serve the same directory, or copies of it that are
//! equal at the switch (docs/migration.md).
//!
//! This module holds the options and the transfer; `fs::migrate` builds and restores the state.

pub mod state;

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use log::{error, info};

use crate::fs::Passthrough;

/// How the destination finds the inodes again (virtiofsd's `--migration-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// By path inside the shared directory, which the source reads from the kernel at the
    /// switch; then checked to be the same inode (file handle, or device and inode number).
    #[default]
    FindPaths,
    /// By file handle, on the same filesystem; needs CAP_DAC_READ_SEARCH on the destination.
    /// Inodes whose handle cannot be opened there are looked for by path.
    FileHandles,
}

/// What the destination does about an inode it cannot find or confirm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Fail the migration: the source VM goes on running, its share untouched.
    #[default]
    Abort,
    /// Go on: the guest gets ESTALE for that inode (and EBADF for its open handles) alone.
    GuestError,
}

/// The migration options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub on_error: OnError,
    /// Require every inode to be confirmed by its file handle (same filesystem on both sides).
    pub verify_handles: bool,
    /// Have the source check every path it sends by walking it again.
    pub confirm_paths: bool,
}

/// Whether the device state goes out of or into this daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Save,
    Load,
}

/// The largest state a destination reads: about 10 million inodes. Anything longer is not a
/// state vufsd wrote.
const MAX_STATE_BYTES: u64 = 1 << 30;

/// One state transfer at a time: started by SET_DEVICE_STATE_FD, finished (and its result
/// collected) by CHECK_DEVICE_STATE.
#[derive(Default)]
pub struct Transfer {
    job: Mutex<Option<JoinHandle<io::Result<()>>>>,
}

impl Transfer {
    /// Start moving the state through `pipe` on a thread of its own: QEMU reads (or writes)
    /// the other end only after this returns, so writing here would fill the pipe and wait for
    /// ever.
    pub fn start(
        &self,
        direction: Direction,
        pipe: File,
        fs: Arc<Passthrough>,
        opts: Options,
    ) -> io::Result<()> {
        let mut job = self
            .job
            .lock()
            .map_err(|_| io::Error::other("migration state poisoned"))?;
        if job.as_ref().is_some_and(|j| !j.is_finished()) {
            return Err(io::Error::other(
                "a device state transfer is already running",
            ));
        }
        let handle = std::thread::Builder::new()
            .name("vufsd-migration".into())
            .spawn(move || {
                let result = match direction {
                    Direction::Save => save(&fs, opts, pipe),
                    Direction::Load => load(&fs, opts, pipe),
                };
                if let Err(e) = &result {
                    error!("migration: {e}");
                }
                result
            })?;
        *job = Some(handle);
        Ok(())
    }

    /// Wait for the transfer and return how it went.
    pub fn finish(&self) -> io::Result<()> {
        let job = self
            .job
            .lock()
            .map_err(|_| io::Error::other("migration state poisoned"))?
            .take();
        match job {
            None => Err(io::Error::other("no device state transfer was started")),
            Some(j) => j
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the migration thread panicked"))),
        }
    }
}

fn save(fs: &Passthrough, opts: Options, mut pipe: File) -> io::Result<()> {
    let t0 = Instant::now();
    let state = fs.migration_state(opts)?;
    let bytes = state.encode();
    let built = t0.elapsed();
    pipe.write_all(&bytes)?;
    info!(
        "migration: sent the device state: {} inodes, {} open handles, {} bytes (built in \
         {:.1?}, sent in {:.1?})",
        state.inodes.len(),
        state.handles.len(),
        bytes.len(),
        built,
        t0.elapsed() - built
    );
    Ok(())
}

fn load(fs: &Passthrough, opts: Options, pipe: File) -> io::Result<()> {
    let t0 = Instant::now();
    let mut bytes = Vec::new();
    pipe.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(io::Error::other(format!(
            "the device state is longer than {MAX_STATE_BYTES} bytes: not a state vufsd wrote"
        )));
    }
    let received = t0.elapsed();
    let state = state::State::decode(&bytes).map_err(io::Error::other)?;
    let report = fs.restore_migration_state(state, opts)?;
    info!(
        "migration: took over the device state: {} inodes ({} lost), {} open handles ({} \
         lost), {} bytes (received in {:.1?}, restored in {:.1?})",
        report.inodes,
        report.lost_inodes,
        report.handles,
        report.lost_handles,
        bytes.len(),
        received,
        t0.elapsed() - received
    );
    Ok(())
}

/// The state's paths, collected while QEMU copies the guest's RAM (between VHOST_F_LOG_ALL and
/// the device stop), so that the switch itself has less to do.
#[derive(Default)]
pub struct Preparation {
    job: Mutex<Option<(JoinHandle<()>, Arc<AtomicBool>)>>,
}

impl Preparation {
    /// Start collecting, unless already under way.
    pub fn start(&self, fs: Arc<Passthrough>) {
        let Ok(mut job) = self.job.lock() else { return };
        if job.is_some() {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("vufsd-migration-prep".into())
            .spawn(move || fs.prepare_migration(&stop));
        match spawned {
            Ok(handle) => *job = Some((handle, cancel)),
            // Not fatal: the switch collects everything itself.
            Err(e) => log::warn!("migration: cannot start preparing the state early: {e}"),
        }
    }

    /// Stop collecting and wait for what was collected to be stored.
    pub fn finish(&self) {
        let job = self.job.lock().ok().and_then(|mut j| j.take());
        if let Some((handle, cancel)) = job {
            cancel.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }

    /// The migration was cancelled: stop, and drop what was collected.
    pub fn cancel(&self, fs: &Passthrough) {
        self.finish();
        fs.drop_migration_prep();
    }
}

/// What a destination made of a state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub inodes: usize,
    pub lost_inodes: usize,
    pub handles: usize,
    pub lost_handles: usize,
}
