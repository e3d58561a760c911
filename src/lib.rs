//! vufsd: a vhost-user-fs daemon.
//!
//! A request flows guest kernel → virtqueue → [`device`] (vhost-user backend) → [`protocol`]
//! (one descriptor chain, one FUSE request) → [`fs`] (the passthrough filesystem) → host
//! syscalls in [`sys`]. [`daemon`] owns the process's life (with [`systemd`] for socket
//! activation and readiness, [`lifeline`] for what else ends it) and [`cli`] its options ([`compat`] for virtiofsd's spellings);
//! [`sandbox`] confines the process before the guest can talk to it; [`migration`] moves the
//! device state to another daemon when QEMU migrates or saves the VM.

pub mod cli;
pub mod compat;
pub mod daemon;
pub mod device;
pub mod fs;
pub mod lifeline;
pub mod logger;
pub mod migration;
mod pool;
pub mod protocol;
pub mod sandbox;
pub mod stats;
pub mod sys;
pub mod systemd;
pub mod trace;
