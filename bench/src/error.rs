//! The one error type of the crate.
//!
//! Everything the daemon controls (vhost-user replies, used-ring entries, FUSE replies) is
//! validated and turned into one of these variants; nothing the daemon sends may panic us.

use std::fmt;
use std::io;
use std::time::Duration;

/// Errors produced by the frontend, the virtqueue driver and the FUSE client.
#[derive(Debug)]
pub enum Error {
    /// A host system call failed (`what` says which step).
    Io {
        /// The step that failed.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// A vhost-user request failed or was refused by the daemon.
    VhostUser {
        /// The request that failed.
        what: String,
        /// The vhost crate's error.
        source: vhost::Error,
    },
    /// The daemon did not answer in time (`what` says what we were waiting for).
    Timeout {
        /// What never arrived.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// The daemon closed the vhost-user socket (it exited or dropped us).
    Disconnected,
    /// The daemon broke the vhost-user, virtio or FUSE protocol.
    Protocol(String),
    /// The daemon answered a FUSE request with an error: `errno` is positive (ENOENT = 2).
    Fuse {
        /// The request's opcode.
        opcode: u32,
        /// Positive errno.
        errno: i32,
    },
    /// The local configuration or a caller's argument is unusable.
    Config(String),
    /// No descriptors or guest memory left for this request right now; retry after reaping.
    QueueFull,
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::Io`] from the current `errno`.
    pub fn last_os(what: impl Into<String>) -> Self {
        Error::Io {
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// Builds an [`Error::Io`].
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The positive errno of a FUSE error reply, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Fuse { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True for timeouts (the daemon hung or dropped a request).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::VhostUser { what, source } => write!(f, "vhost-user {what}: {source}"),
            Error::Timeout { what, after } => {
                write!(f, "timed out after {after:?} waiting for {what}")
            }
            Error::Disconnected => write!(f, "the daemon closed the vhost-user socket"),
            Error::Protocol(s) => write!(f, "protocol violation by the daemon: {s}"),
            Error::Fuse { opcode, errno } => write!(
                f,
                "FUSE opcode {opcode} failed: {} (errno {errno})",
                io::Error::from_raw_os_error(*errno)
            ),
            Error::Config(s) => write!(f, "configuration error: {s}"),
            Error::QueueFull => write!(f, "virtqueue or guest memory full"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::VhostUser { source, .. } => Some(source),
            _ => None,
        }
    }
}
