//! The fuzz harness for vufsd: FUSE requests from fuzz bytes, laid into virtio descriptor
//! chains in guest memory, served by `vufsd::protocol::Dispatcher` in front of a
//! `Passthrough` on a temporary directory. See README.md.

pub mod bytes;
pub mod guest;
pub mod harness;
pub mod script;
pub mod shape;
pub mod share;
