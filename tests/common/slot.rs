//! How many test VMs run at once on this machine.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use super::{Context, Result};

/// Limits how many VMs run at once, across threads and processes: under
/// TCG each guest keeps a host core busy, and over-committing the CPUs makes
/// every guest slow enough to hit timeouts. A slot is a flock(2)ed file
/// under `$TMPDIR/vufsd-vm-slots/`, shared by every checkout on the machine
/// (they compete for the same CPUs); flock locks belong to an open file
/// description, so two threads of one process exclude each other too.
pub struct VmSlot {
    _file: File,
}

impl VmSlot {
    pub fn acquire() -> Result<VmSlot> {
        let dir = std::env::temp_dir().join("vufsd-vm-slots");
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let slots = max_parallel_vms();
        loop {
            for i in 0..slots {
                let path = dir.join(format!("{i}.lock"));
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                // SAFETY: flock on an fd we own; released when `file` closes.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                    return Ok(VmSlot { _file: file });
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `VUFSD_VM_PARALLEL`, else one VM per two host CPUs (a guest has two
/// vCPUs). On a 2-CPU host, two TCG guests at once finished the selftest no
/// sooner than one at a time, while each boot took 3 s instead of 1.9 s.
fn max_parallel_vms() -> usize {
    if let Some(n) = std::env::var("VUFSD_VM_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return std::cmp::max(n, 1);
    }
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
