//! RLIMIT_NOFILE: the daemon holds an O_PATH fd for every inode the guest knows and an fd for
//! every file it has open, so the usual soft limit of 1024 is far too small for a real guest.
//! Raised before entering the sandbox: raising the hard limit needs CAP_SYS_RESOURCE, which
//! the sandboxed daemon no longer has.

use log::{info, warn};

use super::sys;

/// virtiofsd's default target.
const DEFAULT_NOFILE: u64 = 1_000_000;

/// The most the kernel allows any process (`/proc/sys/fs/nr_open`).
fn nr_open() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .map_err(|e| format!("cannot read /proc/sys/fs/nr_open: {e}"))?;
    text.trim()
        .parse()
        .map_err(|e| format!("cannot parse /proc/sys/fs/nr_open ({:?}): {e}", text.trim()))
}

/// Apply `--rlimit-nofile`: `Some(0)` leaves the limit alone, `Some(n)` sets soft and hard to
/// exactly n (an error if that is not allowed), `None` raises the soft limit to
/// min(1000000, nr_open) — or as far as the hard limit allows when the daemon may not raise
/// that. Returns the soft limit in force afterwards.
pub fn apply_nofile(request: Option<u64>) -> Result<u64, String> {
    let (soft, hard) = sys::get_nofile().map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
    match request {
        Some(0) => Ok(soft),
        Some(n) => {
            let max = nr_open()?;
            if n > max {
                return Err(format!(
                    "--rlimit-nofile={n} is above the kernel's maximum of {max} (/proc/sys/fs/nr_open)"
                ));
            }
            sys::set_nofile(n, n).map_err(|e| {
                format!(
                    "cannot set the open file limit to {n}: {e} (the hard limit is {hard}; \
                     raising it needs root): choose a smaller --rlimit-nofile, or 0 to leave it"
                )
            })?;
            info!("open file limit set to {n}");
            Ok(n)
        }
        None => {
            let target = DEFAULT_NOFILE.min(nr_open()?);
            if soft >= target {
                return Ok(soft);
            }
            match sys::set_nofile(target, target.max(hard)) {
                Ok(()) => Ok(target),
                Err(e) if soft < hard => {
                    // Not allowed to raise the hard limit: go as far as it lets us.
                    sys::set_nofile(hard, hard)
                        .map_err(|e| format!("cannot raise the open file limit to {hard}: {e}"))?;
                    warn!("open file limit raised to the hard limit {hard}, not {target}: {e}");
                    Ok(hard)
                }
                Err(e) => {
                    warn!("open file limit stays at {soft} (cannot raise it to {target}: {e})");
                    Ok(soft)
                }
            }
        }
    }
}
