//! vufsd-bench: a vhost-user-fs **frontend** (what QEMU plus the guest's virtiofs driver do)
//! that drives any vhost-user-fs daemon over its unix socket without a guest.
//!
//! Layers, bottom up:
//! - [`connection`]: the vhost-user control channel, the QEMU-like handshake, deadlines.
//! - [`memory`]: the memfd "guest RAM" handed to the daemon, with an allocator.
//! - [`virtqueue`]: split virtqueues we drive as the guest driver.
//! - [`queue`]: request-level chains of buffers, completions, timeouts (also the raw API for
//!   malformed-request tests).
//! - [`device`]: the whole device brought up: connection + memory + queues.
//! - [`fuse_abi`], [`fuse_req`], [`ops`]: FUSE structs, Linux-shaped request layout, typed
//!   operations.
//! - [`client`] (blocking) and [`pipeline`] (many requests in flight per queue).
//! - [`daemon`]: spawning a daemon under test; [`procstat`]: its resource use; [`stats`],
//!   [`workload`], [`floor`], [`prepare`]: the benchmark; [`state_transfer`]: a migration's
//!   device-state hand-over, measured; [`replay`]: recorded guest workloads sent again; [`soak`]: long mixed runs watching for leaks and drift.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vufsd_bench::{Device, DeviceConfig, FuseClient};
//! let dev = Arc::new(Device::connect(DeviceConfig::new("/tmp/vfsd.sock"))?);
//! let c = FuseClient::new(dev);
//! c.init()?;
//! let e = c.lookup(1, "hello.txt")?;
//! println!("size {}", c.getattr(e.nodeid)?.attr.size);
//! # Ok::<(), vufsd_bench::Error>(())
//! ```

#![deny(missing_docs)]

pub mod client;
pub mod connection;
pub mod daemon;
pub mod device;
pub mod error;
pub mod floor;
pub mod fuse_abi;
pub mod fuse_req;
pub mod malformed;
pub mod memory;
pub mod ops;
pub mod pipeline;
pub mod prepare;
pub mod procstat;
pub mod queue;
pub mod replay;
pub mod soak;
pub mod state_transfer;
pub mod stats;
pub mod tree_walk;
pub mod virtqueue;
pub mod workload;

pub use client::{FuseClient, InitOptions};
pub use connection::{Connection, FeatureRequest, Negotiated};
pub use daemon::{find_virtiofsd, DaemonProcess, TempDir};
pub use device::{Device, DeviceConfig};
pub use error::{Error, Result};
pub use fuse_req::{Creds, FuseReply, FuseRequest, Payload};
pub use memory::{GuestBuf, GuestMemory};
pub use ops::{Call, DirEntry};
pub use pipeline::Pipeline;
pub use queue::{Chain, Completion, QueueDriver, Segment, Ticket};
pub use stats::{Histogram, Summary};
pub use virtqueue::{ChainMode, RawDesc};
