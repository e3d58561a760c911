//! The two halves of systemd's service protocol that vufsd speaks: taking the listening socket
//! from socket activation (`sd_listen_fds`: `LISTEN_PID`, `LISTEN_FDS`, fds from 3) and
//! reporting readiness (`sd_notify`: a datagram on `$NOTIFY_SOCKET`). Both are written by hand:
//! each is a few lines of environment parsing and one unix socket, not worth a C library.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// What the socket-activation environment says, or why it cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum ActivationError {
    /// `LISTEN_FDS` is not a number.
    BadCount(String),
    /// More (or fewer) sockets than the one a vufsd serves.
    WrongCount(u32),
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::BadCount(v) => write!(
                f,
                "LISTEN_FDS={v} is not a number: start vufsd from a systemd socket unit or unset LISTEN_FDS"
            ),
            ActivationError::WrongCount(n) => write!(
                f,
                "systemd passed {n} sockets and vufsd serves exactly one: give the socket unit a single ListenStream="
            ),
        }
    }
}

/// The listening socket systemd passed to this process, if any: `Some(3)` when `LISTEN_PID` is
/// our pid and `LISTEN_FDS` is 1. Pure, so it can be tested without touching the environment.
pub fn activation_fd(
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    our_pid: u32,
) -> Result<Option<RawFd>, ActivationError> {
    // LISTEN_PID guards against variables inherited from a parent that was itself activated:
    // they are meant for exactly one process.
    let for_us = listen_pid
        .and_then(|p| p.to_str())
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(our_pid);
    let Some(fds) = listen_fds.filter(|_| for_us) else {
        return Ok(None);
    };
    let text = fds.to_string_lossy();
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadCount(text.to_string()))?;
    match n {
        0 => Ok(None),
        1 => Ok(Some(LISTEN_FDS_START)),
        n => Err(ActivationError::WrongCount(n)),
    }
}

/// Read and clear the socket-activation variables of this process (sd_listen_fds with
/// `unset_environment`): nothing we might start later must believe the fds are its own.
/// Call before any thread exists: it changes the process environment.
pub fn take_activation_fd() -> Result<Option<RawFd>, ActivationError> {
    let pid = std::env::var_os("LISTEN_PID");
    let fds = std::env::var_os("LISTEN_FDS");
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    activation_fd(pid.as_deref(), fds.as_deref(), std::process::id())
}

/// The address `$NOTIFY_SOCKET` names: a path, or an abstract name when it starts with `@`.
pub fn notify_addr(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(value),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract (@) name",
        )),
    }
}

/// Send one sd_notify message (e.g. `READY=1`). Returns false when `$NOTIFY_SOCKET` is unset,
/// i.e. nobody waits for our state (not started as a `Type=notify` service).
pub fn notify(state: &str) -> io::Result<bool> {
    match Notifier::connect()? {
        Some(n) => n.send(state).map(|()| true),
        None => Ok(false),
    }
}

/// `$NOTIFY_SOCKET`, connected once and early. Inside vufsd's sandbox (a chroot, a new mount or
/// network namespace) neither a path nor an abstract name can be reached any more, and the
/// seccomp filter allows no new socket; a datagram socket connected before still delivers, with
/// one send(2).
#[derive(Debug)]
pub struct Notifier(UnixDatagram);

impl Notifier {
    /// None when `$NOTIFY_SOCKET` is unset.
    pub fn connect() -> io::Result<Option<Notifier>> {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let sock = UnixDatagram::unbound()?;
        sock.connect_addr(&notify_addr(&target)?)?;
        Ok(Some(Notifier(sock)))
    }

    pub fn send(&self, state: &str) -> io::Result<()> {
        self.0.send(state.as_bytes()).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn activation_needs_our_pid() {
        assert_eq!(activation_fd(os("42"), os("1"), 42), Ok(Some(3)));
        assert_eq!(activation_fd(os("41"), os("1"), 42), Ok(None));
        assert_eq!(activation_fd(None, os("1"), 42), Ok(None));
        assert_eq!(activation_fd(os("x"), os("1"), 42), Ok(None));
        assert_eq!(activation_fd(os("42"), None, 42), Ok(None));
    }

    #[test]
    fn activation_wants_exactly_one_socket() {
        assert_eq!(activation_fd(os("42"), os("0"), 42), Ok(None));
        assert_eq!(
            activation_fd(os("42"), os("2"), 42),
            Err(ActivationError::WrongCount(2))
        );
        assert_eq!(
            activation_fd(os("42"), os("one"), 42),
            Err(ActivationError::BadCount("one".into()))
        );
    }

    #[test]
    fn notify_addresses() {
        let a = notify_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            a.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let a = notify_addr(OsStr::new("@vufsd/test")).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"vufsd/test"[..]));
        assert!(notify_addr(OsStr::new("relative")).is_err());
        assert!(notify_addr(OsStr::new("")).is_err());
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        let name = format!("vufsd-notify-unit-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        let target = notify_addr(OsStr::new(&format!("@{name}"))).unwrap();
        sock.send_to_addr(b"READY=1", &target).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
