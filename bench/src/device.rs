//! A whole vhost-user-fs device as the guest sees it: connection, guest memory, and the
//! high-priority queue plus N request queues, brought up the way QEMU does.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::connection::{socket_hung_up, Connection, FeatureRequest, Negotiated};
use crate::error::{Error, Result};
use crate::fuse_abi::FUSE_REQ_ID_STEP;
use crate::memory::GuestMemory;
use crate::queue::QueueDriver;
use crate::virtqueue::SplitQueue;

/// How to bring the device up.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The daemon's vhost-user socket.
    pub socket: PathBuf,
    /// Request queues (the daemon must have at least this many; virtiofsd has 1).
    pub request_queues: u16,
    /// Entries per virtqueue (QEMU's `queue-size`, at most 1024 there).
    pub queue_size: u16,
    /// Guest memory size in bytes.
    pub memory_size: u64,
    /// Guest physical address where guest memory starts.
    pub memory_base: u64,
    /// Which optional features to accept.
    pub features: FeatureRequest,
    /// Deadline for connecting, every vhost-user request and every FUSE request.
    pub timeout: Duration,
}

impl DeviceConfig {
    /// Defaults: 1 request queue of 1024 entries, 256 MiB of guest memory at GPA 0,
    /// EVENT_IDX + INDIRECT_DESC + CONFIGURE_MEM_SLOTS when offered, 10 s timeouts.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        DeviceConfig {
            socket: socket.into(),
            request_queues: 1,
            queue_size: 1024,
            memory_size: 256 << 20,
            memory_base: 0,
            features: FeatureRequest::default(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A started vhost-user-fs device.
#[derive(Debug)]
pub struct Device {
    conn: Mutex<Connection>,
    sock: Arc<OwnedFd>,
    mem: Arc<GuestMemory>,
    queues: Vec<Mutex<QueueDriver>>,
    negotiated: Negotiated,
    config: DeviceConfig,
    unique: AtomicU64,
}

impl Device {
    /// Connects and runs the whole QEMU-style bring-up:
    /// GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, SET_OWNER,
    /// SET_VRING_CALL per queue, then SET_FEATURES, ADD_MEM_REG (or SET_MEM_TABLE), per queue
    /// SET_VRING_NUM/BASE/ADDR/KICK/CALL, and SET_VRING_ENABLE per queue.
    pub fn connect(config: DeviceConfig) -> Result<Self> {
        if config.request_queues == 0 {
            return Err(Error::Config("at least one request queue is needed".into()));
        }
        let nqueues = 1 + u64::from(config.request_queues);
        let mut conn = Connection::connect(&config.socket, nqueues, config.timeout)?;
        let negotiated = conn.negotiate(config.features, nqueues)?;
        let mem = GuestMemory::new(config.memory_size, config.memory_base)?;
        let sock = conn.socket_fd();
        let mut vqs = Vec::new();
        for i in 0..nqueues as u16 {
            let vq = SplitQueue::new(&mem, i, config.queue_size, negotiated.event_idx())?;
            conn.set_vring_call(&vq)?;
            vqs.push(vq);
        }
        conn.set_features()?;
        conn.set_memory(&mem.region_info()?)?;
        for vq in &vqs {
            conn.start_vring(vq, |gpa| mem.user_addr(gpa))?;
        }
        for vq in &vqs {
            conn.enable_vring(vq.index(), true)?;
        }
        conn.sync()?;
        let queues = vqs
            .into_iter()
            .map(|vq| {
                Mutex::new(QueueDriver::new(
                    vq,
                    Arc::clone(&mem),
                    Arc::clone(&sock),
                    negotiated.indirect_desc(),
                    config.timeout,
                ))
            })
            .collect();
        Ok(Device {
            conn: Mutex::new(conn),
            sock,
            mem,
            queues,
            negotiated,
            config,
            unique: AtomicU64::new(0),
        })
    }

    /// What the handshake negotiated.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The configuration the device was started with.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// Guest memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Number of request queues.
    pub fn request_queues(&self) -> u16 {
        (self.queues.len() - 1) as u16
    }

    /// Locks the high-priority queue (vhost-user queue 0: FORGET, INTERRUPT).
    pub fn hiprio(&self) -> Result<MutexGuard<'_, QueueDriver>> {
        self.queue(0)
    }

    /// Locks request queue `i` (0-based; vhost-user queue `i + 1`).
    pub fn request_queue(&self, i: u16) -> Result<MutexGuard<'_, QueueDriver>> {
        self.queue(usize::from(i) + 1)
    }

    /// Locks vhost-user queue `index` (0 = high priority).
    pub fn queue(&self, index: usize) -> Result<MutexGuard<'_, QueueDriver>> {
        self.queues
            .get(index)
            .ok_or_else(|| Error::Config(format!("no queue {index}")))?
            .lock()
            .map_err(|_| Error::Config(format!("queue {index} poisoned by a panic")))
    }

    /// Locks the vhost-user connection for raw control-plane requests.
    pub fn connection(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| Error::Config("connection poisoned by a panic".into()))
    }

    /// The next FUSE `unique` (steps of 2, as Linux does).
    pub fn next_unique(&self) -> u64 {
        self.unique.fetch_add(FUSE_REQ_ID_STEP, Ordering::Relaxed) + FUSE_REQ_ID_STEP
    }

    /// True while the daemon keeps its end of the vhost-user socket open.
    pub fn is_connected(&self) -> bool {
        !socket_hung_up(self.sock.as_raw_fd())
    }

    /// Control-plane liveness: a GET_FEATURES round trip within the timeout.
    pub fn ping(&self) -> Result<()> {
        self.connection()?.ping().map(|_| ())
    }

    /// QEMU's `vhost_dev_stop`: SET_VRING_ENABLE 0 on every queue, then GET_VRING_BASE on
    /// every queue (which stops the ring). Returns each queue's next avail index as the
    /// daemon reports it; the queues must not be used afterwards.
    pub fn stop(&self) -> Result<Vec<u32>> {
        let mut conn = self.connection()?;
        let n = self.queues.len() as u16;
        for i in 0..n {
            conn.enable_vring(i, false)?;
        }
        (0..n).map(|i| conn.get_vring_base(i)).collect()
    }
}
