//! The options the filesystem takes from the command line, and how they decide the way inodes
//! are held.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use log::info;

use super::idmap;
use super::inodes;
use super::open_flags::NoatimePolicy;
use crate::sys;

/// How much the guest may cache, virtiofsd's `--cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CachePolicy {
    /// No caching: attributes and entries revalidated every time, file I/O direct.
    Never,
    /// Metadata cached for a long time, file data not cached.
    Metadata,
    /// Short (1 s) attribute/entry timeouts; data cache invalidated on change.
    #[default]
    Auto,
    /// Everything cached for a long time: only for a share nothing else modifies.
    Always,
}

impl CachePolicy {
    pub(super) fn timeout(self) -> Duration {
        match self {
            Self::Never => Duration::ZERO,
            Self::Auto => Duration::from_secs(1),
            Self::Metadata | Self::Always => Duration::from_secs(86400),
        }
    }
}

impl std::str::FromStr for CachePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never" | "none" => Ok(Self::Never),
            "metadata" => Ok(Self::Metadata),
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            other => Err(format!(
                "invalid cache policy '{other}': use auto, always, metadata or never"
            )),
        }
    }
}

/// Everything the filesystem needs to know from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub cache: CachePolicy,
    pub writeback: bool,
    pub xattr: bool,
    /// `--xattrmap`: names translated between guest and host.
    pub xattrmap: Option<std::sync::Arc<super::xattrmap::XattrMap>>,
    pub readonly: bool,
    pub readdirplus: bool,
    /// Serve POSIX locks / flock(2) with host locks (else the guest keeps them locally).
    pub posix_locks: bool,
    pub flock: bool,
    /// Mark host mount points inside the share as submounts (FUSE_ATTR_SUBMOUNT).
    pub announce_submounts: bool,
    /// Offer FUSE_HANDLE_KILLPRIV_V2: the daemon clears setuid/setgid on write and truncate.
    pub killpriv_v2: bool,
    pub allow_direct_io: bool,
    pub noatime: NoatimePolicy,
    /// Serve POSIX ACLs (implies xattrs): the guest checks permissions with them and leaves the
    /// umask to us, since only the host knows whether a default ACL replaces it.
    pub posix_acl: bool,
    /// uid and gid translation between guest and host (`--translate-uid/gid`).
    pub uid_map: idmap::IdMap,
    pub gid_map: idmap::IdMap,
    /// Hold inodes past the fd budget by file handle (`--inode-file-handles=prefer`).
    pub file_handles: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cache: CachePolicy::Auto,
            writeback: false,
            xattr: false,
            xattrmap: None,
            readonly: false,
            readdirplus: true,
            posix_locks: true,
            flock: true,
            announce_submounts: false,
            killpriv_v2: false,
            allow_direct_io: false,
            noatime: NoatimePolicy::Auto,
            posix_acl: false,
            uid_map: idmap::IdMap::default(),
            gid_map: idmap::IdMap::default(),
            file_handles: true,
        }
    }
}

/// How to hold inodes: O_PATH fds up to half the open-file limit (the rest is for open files,
/// locks and the device), then file handles if the daemon may open them (CAP_DAC_READ_SEARCH)
/// and the shared filesystem has them.
pub(super) fn hold_policy(cfg: &Config, caps: u64, root: BorrowedFd<'_>) -> inodes::HoldPolicy {
    let fd_budget = usize::try_from(sys::nofile_limit() / 2)
        .unwrap_or(usize::MAX)
        .max(64);
    let may = cfg.file_handles && caps & (1 << sys::CAP_DAC_READ_SEARCH) != 0;
    let handles = may && sys::name_to_handle(root).is_ok();
    info!(
        "inodes held by O_PATH fd up to {fd_budget}, then {}",
        if handles {
            "by file handle"
        } else if may {
            "still by fd (the shared filesystem has no file handles)"
        } else {
            "still by fd (file handles need CAP_DAC_READ_SEARCH)"
        }
    );
    inodes::HoldPolicy { fd_budget, handles }
}
