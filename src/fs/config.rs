//! The options the filesystem takes from the command line, and how they decide the way inodes
//! are held.

use std::io;
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
    /// Whether inodes evicted past the fd budget may be reopened from file handles
    /// (`--inode-file-handles`).
    pub file_handles: FileHandles,
}

/// `--inode-file-handles`, as the filesystem sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FileHandles {
    /// Never: evicted inodes are reopened by name, relative to their parent.
    #[default]
    Never,
    /// From their file handles where the daemon may open them (CAP_DAC_READ_SEARCH) and the
    /// filesystem has them; by name otherwise.
    Prefer,
    /// From their file handles; refuse to start where that cannot be done.
    Mandatory,
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
            file_handles: FileHandles::Never,
        }
    }
}

/// How to hold inodes: O_PATH fds up to half the open-file limit (the rest is for open files,
/// locks and the device); past that, the least recently used are closed and reopened when
/// used again — by name, or from their file handles when that was chosen, the daemon may open
/// them (CAP_DAC_READ_SEARCH) and the shared filesystem has them. `--inode-file-handles=
/// mandatory` where handles cannot be used is an error (ErrorKind::Unsupported).
pub(super) fn hold_policy(
    cfg: &Config,
    caps: u64,
    root: BorrowedFd<'_>,
) -> io::Result<inodes::HoldPolicy> {
    let fd_budget = usize::try_from(sys::nofile_limit() / 2)
        .unwrap_or(usize::MAX)
        .max(64);
    let wanted = cfg.file_handles != FileHandles::Never;
    let capable = caps & (1 << sys::CAP_DAC_READ_SEARCH) != 0;
    let fs_has = sys::name_to_handle(root).is_ok();
    let handles = wanted && capable && fs_has;
    let why_not = if !capable {
        "file handles need CAP_DAC_READ_SEARCH: run as root"
    } else {
        "the shared filesystem has no file handles"
    };
    if cfg.file_handles == FileHandles::Mandatory && !handles {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "--inode-file-handles=mandatory: {why_not}; use --inode-file-handles=never \
                 (the default: inodes are reopened by name)"
            ),
        ));
    }
    let how = if handles {
        "from their file handles".to_string()
    } else if wanted {
        format!("by name ({why_not})")
    } else {
        "by name".to_string()
    };
    info!(
        "inodes held by O_PATH fd up to {fd_budget}; past that the least recently used are \
         closed and reopened {how}"
    );
    Ok(inodes::HoldPolicy { fd_budget, handles })
}
