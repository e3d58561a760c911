//! RLIMIT_NOFILE: the daemon holds an O_PATH fd for every inode the guest knows and an fd for
//! every file it has open, so the usual soft limit of 1024 is far too small for a real guest.
//! Raised before entering the sandbox: raising the hard limit needs CAP_SYS_RESOURCE, which
//! the sandboxed daemon no longer has.

use log::warn;

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

/// Apply `--rlimit-nofile`: `Some(0)` leaves the limit alone; `Some(n)` sets soft and hard to
/// n (above the kernel's nr_open that is an error; above a hard limit the daemon may not raise,
/// it gets the hard limit and a warning); `None` raises the soft limit to min(1000000, nr_open),
/// or as far as the hard limit allows (best effort: not worth a warning). Returns a
/// description of the soft limit in force afterwards, for the log.
pub fn apply_nofile(request: Option<u64>) -> Result<String, String> {
    let (soft, hard) = sys::get_nofile().map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
    let (target, asked) = match request {
        Some(0) => return Ok(format!("{soft} (left as it was)")),
        Some(n) => {
            let max = nr_open()?;
            if n > max {
                return Err(format!(
                    "--rlimit-nofile={n} is above the kernel's maximum of {max} \
                     (/proc/sys/fs/nr_open): choose at most {max}, or 0 to leave the limit alone"
                ));
            }
            (n, true)
        }
        None => {
            let target = DEFAULT_NOFILE.min(nr_open()?);
            if soft >= target {
                return Ok(soft.to_string());
            }
            (target, false)
        }
    };
    // An explicit value is exact (a lower one lowers the hard limit too); the default only
    // raises the soft limit, leaving a higher hard limit alone.
    let new_hard = if asked { target } else { target.max(hard) };
    let refused = match sys::set_nofile(target, new_hard) {
        Ok(()) => return Ok(target.to_string()),
        Err(e) => e,
    };
    // Not allowed to raise the hard limit (that needs CAP_SYS_RESOURCE): go as far as it lets us.
    if soft < hard {
        sys::set_nofile(hard, hard)
            .map_err(|e| format!("cannot raise the open file limit to {hard}: {e}"))?;
    }
    if asked {
        warn!(
            "--rlimit-nofile={target}: the open file limit is {hard}, the hard limit, which this \
             process may not raise ({refused})"
        );
    }
    Ok(format!(
        "{hard} (the hard limit; raising it to {target} was refused: {refused})"
    ))
}
