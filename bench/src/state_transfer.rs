//! How long a daemon takes to hand its device state to another (migration's switch-over),
//! measured without a guest: a source daemon looks up N inodes for us, then we stop its device
//! and read its state the way QEMU does (SET_DEVICE_STATE_FD save, CHECK_DEVICE_STATE), start a
//! second daemon of the same kind on the same directory, load the state into it, and check that
//! a node id from the source answers there.
//!
//! QEMU sets VHOST_F_LOG_ALL when a migration starts and asks for the state only after it has
//! copied the guest's RAM; a daemon may prepare its state in between (upstream virtiofsd
//! collects its paths then). `precopy` is that window.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::DaemonProcess;
use crate::device::{Device, DeviceConfig};
use crate::error::{Error, Result};
use crate::fuse_abi::FUSE_ROOT_ID;
use crate::FuseClient;

/// Files per directory of the tree.
const PER_DIR: usize = 1000;

/// Which daemon, and how to start it.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The daemon binary.
    pub program: PathBuf,
    /// Upstream virtiofsd (started with `--sandbox none`) rather than vufsd.
    pub virtiofsd: bool,
    /// More options for both daemons (after the defaults, so they win).
    pub extra: Vec<String>,
}

impl Subject {
    fn spawn(&self, shared: &Path, socket: &Path) -> Result<DaemonProcess> {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        if self.virtiofsd {
            DaemonProcess::virtiofsd(&self.program, shared, socket, &extra)
        } else {
            let mut args: Vec<std::ffi::OsString> = ["--sandbox", "none", "--log-level", "warn"]
                .map(Into::into)
                .to_vec();
            args.extend(extra.iter().map(Into::into));
            DaemonProcess::spawn(
                &self.program,
                shared,
                socket,
                &args,
                Duration::from_secs(10),
            )
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferReport {
    /// Inodes the source held for the "guest" (the root not counted).
    pub inodes: usize,
    /// Size of the state.
    pub bytes: usize,
    /// SET_DEVICE_STATE_FD (save) to CHECK_DEVICE_STATE's answer, on the stopped source.
    pub save: Duration,
    /// SET_DEVICE_STATE_FD (load) to CHECK_DEVICE_STATE's answer, on the destination.
    pub load: Duration,
}

impl TransferReport {
    /// One JSON object.
    pub fn json(&self, daemon: &str, precopy: Duration) -> String {
        format!(
            "{{\"daemon\":\"{daemon}\",\"inodes\":{},\"bytes\":{},\"precopy_s\":{:.1},\"save_ms\":{:.2},\"load_ms\":{:.2}}}",
            self.inodes,
            self.bytes,
            precopy.as_secs_f64(),
            self.save.as_secs_f64() * 1e3,
            self.load.as_secs_f64() * 1e3
        )
    }
}

/// `dir/shared/mig/dK/fI` for `inodes` files (directories included in the count), created
/// once and reused.
fn tree(dir: &Path, inodes: usize) -> Result<(PathBuf, usize)> {
    let shared = dir.join("shared");
    let dirs = inodes.div_ceil(PER_DIR + 1).max(1);
    let files = inodes.saturating_sub(dirs);
    let top = shared.join(format!("mig-{inodes}"));
    let done = top.join(".complete");
    if !done.exists() {
        for f in 0..files {
            let d = top.join(format!("d{}", f / PER_DIR));
            if f % PER_DIR == 0 {
                std::fs::create_dir_all(&d)
                    .map_err(|e| Error::io(format!("mkdir {}", d.display()), e))?;
            }
            let p = d.join(format!("f{}", f % PER_DIR));
            std::fs::write(&p, b"x")
                .map_err(|e| Error::io(format!("create {}", p.display()), e))?;
        }
        std::fs::write(&done, b"").map_err(|e| Error::io("mark the tree complete", e))?;
    }
    Ok((shared, files))
}

fn connect(socket: &Path) -> Result<Arc<Device>> {
    let mut cfg = DeviceConfig::new(socket);
    cfg.features.device_state = true;
    cfg.timeout = Duration::from_secs(300);
    Ok(Arc::new(Device::connect(cfg)?))
}

/// Measure one state transfer of `subject` with `inodes` inodes held, in `dir`.
pub fn measure(
    subject: &Subject,
    dir: &Path,
    inodes: usize,
    precopy: Duration,
) -> Result<TransferReport> {
    let (shared, files) = tree(dir, inodes)?;
    let src_sock = dir.join("src.sock");
    let dst_sock = dir.join("dst.sock");
    let src = subject.spawn(&shared, &src_sock)?;
    let dev = connect(&src_sock)?;
    let c = FuseClient::new(Arc::clone(&dev));
    c.init()?;
    let top = c.lookup(FUSE_ROOT_ID, &format!("mig-{inodes}"))?;
    let mut held = 1;
    let mut last = None;
    let mut parent = None;
    for f in 0..files {
        if f % PER_DIR == 0 {
            parent = Some(c.lookup(top.nodeid, &format!("d{}", f / PER_DIR))?.nodeid);
            held += 1;
        }
        let p = parent.ok_or_else(|| Error::Config("no parent directory".into()))?;
        last = Some(c.lookup(p, &format!("f{}", f % PER_DIR))?);
        held += 1;
    }

    dev.connection()?.set_log_all(true)?;
    std::thread::sleep(precopy);
    dev.stop()?;
    let t0 = Instant::now();
    let state = dev.connection()?.save_state()?;
    let save = t0.elapsed();

    let dst = subject.spawn(&shared, &dst_sock)?;
    let dev2 = connect(&dst_sock)?;
    let t1 = Instant::now();
    dev2.connection()?.load_state(&state)?;
    let load = t1.elapsed();
    // A node id the source handed out answers on the destination, for the same file.
    if let Some(e) = last {
        let attr = FuseClient::new(Arc::clone(&dev2)).getattr(e.nodeid)?;
        if attr.attr.ino != e.attr.ino {
            return Err(Error::Protocol(format!(
                "node {} is inode {} on the destination, {} on the source",
                e.nodeid, attr.attr.ino, e.attr.ino
            )));
        }
    }
    drop((c, dev, dev2, src, dst));
    Ok(TransferReport {
        inodes: held,
        bytes: state.len(),
        save,
        load,
    })
}
