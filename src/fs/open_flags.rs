//! Which open(2) flags from the guest reach the host, and the O_NOATIME policy.
//!
//! Since Linux 4.19 overlayfs opens its lower files with O_NOATIME. On the host, O_NOATIME is
//! only allowed when the caller's fsuid owns the file or it holds CAP_FOWNER; otherwise open(2)
//! (and `fcntl(F_SETFL)`) fail with EPERM. A daemon running as an ordinary user over a tree it
//! does not own (the /nix/store shape) would therefore fail every read through a guest overlay.
//!
//! The policy here is decided from what the daemon already knows — the inode's owner as seen at
//! lookup and its own credentials — so the common path costs no extra syscall. When the host
//! still refuses (user namespaces, idmapped mounts, a changed owner), the caller retries once
//! without the flag.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// How O_NOATIME from the guest is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NoatimePolicy {
    /// Pass it where the host will accept it, mask it where it would fail.
    #[default]
    Auto,
    /// Pass it through untouched (EPERM and all). virtiofsd's `--preserve-noatime`.
    Preserve,
    /// Remove it from every open. virtiofsd's default.
    Strip,
}

impl FromStr for NoatimePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "preserve" => Ok(Self::Preserve),
            "strip" => Ok(Self::Strip),
            other => Err(format!(
                "invalid O_NOATIME policy '{other}': use auto, preserve or strip"
            )),
        }
    }
}

impl std::fmt::Display for NoatimePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Preserve => "preserve",
            Self::Strip => "strip",
        })
    }
}

/// What the daemon knows about its own identity, fixed at start-up.
#[derive(Clone, Copy, Debug)]
pub struct DaemonCreds {
    /// The fsuid files are opened with (the daemon's euid: opens are never done under a
    /// switched identity).
    pub fsuid: u32,
    /// CAP_FOWNER in the effective set. Then it covers every owner: in the user namespace
    /// `--sandbox=namespace` creates for an unprivileged daemon, where it would cover only the
    /// daemon's own files, the sandbox keeps no capability at all.
    pub cap_fowner: bool,
}

/// The outcome of the O_NOATIME decision for one open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noatime {
    /// The guest did not ask for it.
    NotRequested,
    /// Passed to the host.
    Honoured,
    /// Removed before the syscall.
    Masked,
    /// Passed, refused by the host with EPERM, and the open retried without it.
    Retried,
}

/// Decide what to do with O_NOATIME for an inode owned by `owner`.
pub fn decide_noatime(
    policy: NoatimePolicy,
    creds: DaemonCreds,
    flags: i32,
    owner: u32,
) -> Noatime {
    if flags & libc::O_NOATIME == 0 {
        return Noatime::NotRequested;
    }
    match policy {
        NoatimePolicy::Preserve => Noatime::Honoured,
        NoatimePolicy::Strip => Noatime::Masked,
        NoatimePolicy::Auto if creds.cap_fowner || creds.fsuid == owner => Noatime::Honoured,
        NoatimePolicy::Auto => Noatime::Masked,
    }
}

/// Whether an EPERM from an open with O_NOATIME set should be retried without it.
/// Only `auto` retries: `preserve` promises to pass the host's answer through.
pub fn retry_without_noatime(policy: NoatimePolicy, flags: i32, err: &std::io::Error) -> bool {
    policy == NoatimePolicy::Auto
        && flags & libc::O_NOATIME != 0
        && err.raw_os_error() == Some(libc::EPERM)
}

/// Counters for the O_NOATIME decisions, reported at debug level per open and as a summary
/// line when the daemon exits.
#[derive(Default, Debug)]
pub struct NoatimeCounters {
    pub honoured: AtomicU64,
    pub masked: AtomicU64,
    pub retried: AtomicU64,
}

impl NoatimeCounters {
    pub fn record(&self, n: Noatime) {
        match n {
            Noatime::NotRequested => {}
            Noatime::Honoured => {
                self.honoured.fetch_add(1, Ordering::Relaxed);
            }
            Noatime::Masked => {
                self.masked.fetch_add(1, Ordering::Relaxed);
            }
            Noatime::Retried => {
                self.retried.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.honoured.load(Ordering::Relaxed),
            self.masked.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
        )
    }
}

/// Options that shape every host open, fixed at start-up.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenRules {
    pub writeback: bool,
    pub allow_direct_io: bool,
}

/// The guest flags that may reach the host for a regular-file open. Everything else (O_CREAT,
/// O_EXCL, O_NOFOLLOW, O_PATH, O_TMPFILE, O_DIRECTORY, O_NOCTTY, O_ASYNC, ...) is either handled
/// by the daemon itself or meaningless for a file reopened through /proc/self/fd.
const PASSED_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_TRUNC;

/// Host flags for opening an existing regular file on the guest's behalf (before the O_NOATIME
/// decision, which needs the inode).
pub fn file_open_flags(guest: u32, rules: OpenRules) -> i32 {
    let mut flags = (guest as i32) & PASSED_FLAGS;
    if rules.writeback {
        // With the writeback cache the guest kernel may read pages of a file it only writes
        // (partial page writes), and it computes append offsets itself.
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        flags &= !libc::O_APPEND;
    }
    if !rules.allow_direct_io {
        flags &= !libc::O_DIRECT;
    }
    flags | libc::O_LARGEFILE
}

/// Whether an open with these host flags may modify the file (refused under --readonly).
pub fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;
    const USER: DaemonCreds = DaemonCreds {
        fsuid: ME,
        cap_fowner: false,
    };
    const ROOT: DaemonCreds = DaemonCreds {
        fsuid: 0,
        cap_fowner: true,
    };
    const RO_NOATIME: i32 = libc::O_RDONLY | libc::O_NOATIME;

    #[test]
    fn auto_honours_owned_files_and_masks_others() {
        let p = NoatimePolicy::Auto;
        assert_eq!(decide_noatime(p, USER, RO_NOATIME, ME), Noatime::Honoured);
        assert_eq!(decide_noatime(p, USER, RO_NOATIME, 0), Noatime::Masked);
        assert_eq!(decide_noatime(p, ROOT, RO_NOATIME, 1234), Noatime::Honoured);
        assert_eq!(
            decide_noatime(p, USER, libc::O_RDONLY, 0),
            Noatime::NotRequested
        );
    }

    #[test]
    fn preserve_and_strip_ignore_ownership() {
        assert_eq!(
            decide_noatime(NoatimePolicy::Preserve, USER, RO_NOATIME, 0),
            Noatime::Honoured
        );
        assert_eq!(
            decide_noatime(NoatimePolicy::Strip, ROOT, RO_NOATIME, 0),
            Noatime::Masked
        );
    }

    #[test]
    fn only_auto_retries_and_only_on_eperm() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        let eacces = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(retry_without_noatime(
            NoatimePolicy::Auto,
            RO_NOATIME,
            &eperm
        ));
        assert!(!retry_without_noatime(
            NoatimePolicy::Auto,
            RO_NOATIME,
            &eacces
        ));
        assert!(!retry_without_noatime(
            NoatimePolicy::Auto,
            libc::O_RDONLY,
            &eperm
        ));
        assert!(!retry_without_noatime(
            NoatimePolicy::Preserve,
            RO_NOATIME,
            &eperm
        ));
    }

    #[test]
    fn open_flags_drop_what_the_host_must_not_see() {
        let rules = OpenRules::default();
        let guest = (libc::O_RDONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW) as u32;
        assert_eq!(
            file_open_flags(guest, rules),
            libc::O_RDONLY | libc::O_LARGEFILE
        );
        let direct = (libc::O_RDWR | libc::O_DIRECT) as u32;
        assert_eq!(file_open_flags(direct, rules) & libc::O_DIRECT, 0);
        let allowed = OpenRules {
            allow_direct_io: true,
            ..rules
        };
        assert_ne!(file_open_flags(direct, allowed) & libc::O_DIRECT, 0);
    }

    #[test]
    fn writeback_widens_write_only_and_drops_append() {
        let rules = OpenRules {
            writeback: true,
            ..Default::default()
        };
        let flags = file_open_flags((libc::O_WRONLY | libc::O_APPEND) as u32, rules);
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
        assert_eq!(flags & libc::O_APPEND, 0);
    }

    #[test]
    fn policy_parses_and_prints() {
        for p in ["auto", "preserve", "strip"] {
            assert_eq!(p.parse::<NoatimePolicy>().unwrap().to_string(), p);
        }
        assert!("sometimes".parse::<NoatimePolicy>().is_err());
    }

    #[test]
    fn readonly_detection() {
        assert!(!writes(libc::O_RDONLY));
        assert!(writes(libc::O_WRONLY));
        assert!(writes(libc::O_RDONLY | libc::O_TRUNC));
    }
}
