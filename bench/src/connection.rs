//! The vhost-user control channel: connecting, the QEMU-like handshake, and a watchdog that
//! turns a hung daemon into an error.
//!
//! The `vhost` crate's `Frontend` does blocking socket I/O with no timeout and retries on
//! EAGAIN, so socket timeouts cannot bound it. Instead every request runs under a deadline:
//! if the daemon has not answered when it expires, a watchdog thread `shutdown(2)`s the
//! socket, the blocked call fails, and we report [`Error::Timeout`]. The connection is dead
//! after that, which is the only sane state after a daemon stopped answering.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserHeaderFlag,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

use crate::error::{Error, Result};
use crate::virtqueue::SplitQueue;

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VHOST_F_LOG_ALL`: the frontend logs dirty pages (a migration is on).
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// What we ask for during feature negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureRequest {
    /// Ack VIRTIO_RING_F_EVENT_IDX if offered.
    pub event_idx: bool,
    /// Ack VIRTIO_RING_F_INDIRECT_DESC if offered.
    pub indirect_desc: bool,
    /// Use ADD_MEM_REG when CONFIGURE_MEM_SLOTS is offered (QEMU does); else SET_MEM_TABLE.
    pub mem_slots: bool,
    /// Ack DEVICE_STATE (and LOG_SHMFD, LOG_ALL's companion) when offered, for migration.
    pub device_state: bool,
}

impl Default for FeatureRequest {
    fn default() -> Self {
        FeatureRequest {
            event_idx: true,
            indirect_desc: true,
            mem_slots: true,
            device_state: false,
        }
    }
}

/// Result of the handshake's negotiation phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio features the daemon offered (GET_FEATURES).
    pub device_features: u64,
    /// Virtio features we acked (SET_FEATURES).
    pub acked_features: u64,
    /// Protocol features the daemon offered (GET_PROTOCOL_FEATURES), 0 without the bit.
    pub device_protocol_features: u64,
    /// Protocol features we acked.
    pub acked_protocol_features: u64,
    /// GET_QUEUE_NUM, when MQ was negotiated.
    pub queue_num: Option<u64>,
    /// GET_MAX_MEM_SLOTS, when CONFIGURE_MEM_SLOTS was negotiated.
    pub max_mem_slots: Option<u64>,
}

impl Negotiated {
    /// True if EVENT_IDX was acked.
    pub fn event_idx(&self) -> bool {
        self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    /// True if INDIRECT_DESC was acked.
    pub fn indirect_desc(&self) -> bool {
        self.acked_features & VIRTIO_RING_F_INDIRECT_DESC != 0
    }

    /// True if a protocol feature was acked.
    pub fn has_protocol(&self, f: VhostUserProtocolFeatures) -> bool {
        self.acked_protocol_features & f.bits() != 0
    }
}

/// A vhost-user frontend connection with deadlines on every request.
pub struct Connection {
    frontend: Frontend,
    sock: Arc<OwnedFd>,
    watchdog: Watchdog,
    timeout: Duration,
    negotiated: Negotiated,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("negotiated", &self.negotiated)
            .finish()
    }
}

impl Connection {
    /// Connects to the daemon's socket, retrying until `timeout` while it does not exist or
    /// refuses connections (the daemon may still be starting). `max_queues` bounds the queue
    /// indexes the frontend accepts until GET_QUEUE_NUM says otherwise.
    pub fn connect(path: &Path, max_queues: u64, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let retry = matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    );
                    if !retry {
                        return Err(Error::io(format!("connect {}", path.display()), e));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Error::Timeout {
                        what: format!(
                            "{} to accept a connection (last error: {e})",
                            path.display()
                        ),
                        after: timeout,
                    })
                }
            }
        };
        let dup = stream
            .try_clone()
            .map_err(|e| Error::io("dup vhost-user socket", e))?;
        let sock = Arc::new(OwnedFd::from(dup));
        let watchdog = Watchdog::start(Arc::clone(&sock))?;
        Ok(Connection {
            frontend: Frontend::from_stream(stream, max_queues),
            sock,
            watchdog,
            timeout,
            negotiated: Negotiated::default(),
        })
    }

    /// Runs one vhost-user exchange under the deadline.
    pub fn call<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        self.watchdog.arm(Instant::now() + self.timeout);
        let res = f(&mut self.frontend);
        let fired = self.watchdog.disarm();
        if fired {
            return Err(Error::Timeout {
                what: format!("the daemon to answer vhost-user {what} (socket shut down)"),
                after: self.timeout,
            });
        }
        res.map_err(|e| match e {
            vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::Disconnected) => {
                Error::Disconnected
            }
            e => Error::VhostUser {
                what: what.to_string(),
                source: e,
            },
        })
    }

    /// Per-request deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the per-request deadline.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// What was negotiated so far.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// A duplicate of the socket, for polling it for hang-ups.
    pub fn socket_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.sock)
    }

    /// True if the daemon closed its end of the socket.
    pub fn is_hung_up(&self) -> bool {
        socket_hung_up(self.sock.as_raw_fd())
    }

    /// A GET_FEATURES round trip: proves the daemon's control loop still answers.
    pub fn ping(&mut self) -> Result<u64> {
        self.call("GET_FEATURES (ping)", |f| f.get_features())
    }

    /// QEMU's `vhost_dev_init` part: GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
    /// GET_MAX_MEM_SLOTS, SET_OWNER. Requires VERSION_1; acks EVENT_IDX / INDIRECT_DESC as
    /// asked. After REPLY_ACK is negotiated every request carries NEED_REPLY, so a refusal
    /// surfaces as an error at the request that caused it.
    pub fn negotiate(&mut self, want: FeatureRequest, queues: u64) -> Result<Negotiated> {
        let mut n = Negotiated {
            device_features: self.call("GET_FEATURES", |f| f.get_features())?,
            ..Negotiated::default()
        };
        if n.device_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::Protocol(format!(
                "device features {:#x} lack VIRTIO_F_VERSION_1",
                n.device_features
            )));
        }
        let mut ack = VIRTIO_F_VERSION_1;
        if want.event_idx {
            ack |= n.device_features & VIRTIO_RING_F_EVENT_IDX;
        }
        if want.indirect_desc {
            ack |= n.device_features & VIRTIO_RING_F_INDIRECT_DESC;
        }
        ack |= n.device_features & VHOST_USER_F_PROTOCOL_FEATURES;
        n.acked_features = ack;

        if n.device_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = self.call("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            n.device_protocol_features = offered.bits();
            let mut wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
            if want.mem_slots {
                wanted |= VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
            }
            if want.device_state {
                wanted |= VhostUserProtocolFeatures::DEVICE_STATE;
            }
            let acked = offered & wanted;
            self.call("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(acked))?;
            n.acked_protocol_features = acked.bits();
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let num = self.call("GET_QUEUE_NUM", |f| f.get_queue_num())?;
                if num < queues {
                    return Err(Error::Config(format!(
                        "the daemon has {num} queues (1 high-priority + {} request), {queues} asked",
                        num.saturating_sub(1)
                    )));
                }
                n.queue_num = Some(num);
            }
            if acked.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
                let slots = self.call("GET_MAX_MEM_SLOTS", |f| f.get_max_mem_slots())?;
                n.max_mem_slots = Some(slots);
            }
        }
        self.call("SET_OWNER", |f| f.set_owner())?;
        self.negotiated = n;
        Ok(n)
    }

    /// SET_FEATURES with what [`Connection::negotiate`] chose.
    pub fn set_features(&mut self) -> Result<()> {
        let ack = self.negotiated.acked_features;
        self.call("SET_FEATURES", |f| f.set_features(ack))
    }

    /// SET_FEATURES with VHOST_F_LOG_ALL added (or removed): what QEMU sends when a migration
    /// starts (or is cancelled). The daemon must have offered it.
    pub fn set_log_all(&mut self, on: bool) -> Result<()> {
        if self.negotiated.device_features & VHOST_F_LOG_ALL == 0 {
            return Err(Error::Config(
                "the daemon does not offer VHOST_F_LOG_ALL".into(),
            ));
        }
        let mut ack = self.negotiated.acked_features & !VHOST_F_LOG_ALL;
        if on {
            ack |= VHOST_F_LOG_ALL;
        }
        self.call("SET_FEATURES (LOG_ALL)", |f| f.set_features(ack))
    }

    /// A stopped device's state, as QEMU's `vhost_save_backend_state` reads it: SET_DEVICE_STATE_FD
    /// (save) with a pipe, everything until EOF, then CHECK_DEVICE_STATE.
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let (mut rx, tx) = std::io::pipe().map_err(|e| Error::io("pipe", e))?;
        let back = self.call("SET_DEVICE_STATE_FD (save)", |f| {
            f.set_device_state_fd(
                VhostTransferStateDirection::SAVE,
                VhostTransferStatePhase::STOPPED,
                OwnedFd::from(tx),
            )
        })?;
        let mut state = Vec::new();
        match back {
            // The daemon may answer with a pipe end of its own to read from instead.
            Some(mut f) => std::io::Read::read_to_end(&mut f, &mut state),
            None => std::io::Read::read_to_end(&mut rx, &mut state),
        }
        .map_err(|e| Error::io("reading the device state", e))?;
        self.call("CHECK_DEVICE_STATE", |f| f.check_device_state())?;
        Ok(state)
    }

    /// Hand a saved state to a daemon, as QEMU's `vhost_load_backend_state` does.
    pub fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let (rx, mut tx) = std::io::pipe().map_err(|e| Error::io("pipe", e))?;
        let back = self.call("SET_DEVICE_STATE_FD (load)", |f| {
            f.set_device_state_fd(
                VhostTransferStateDirection::LOAD,
                VhostTransferStatePhase::STOPPED,
                OwnedFd::from(rx),
            )
        })?;
        let written = match back {
            Some(mut f) => std::io::Write::write_all(&mut f, state),
            None => std::io::Write::write_all(&mut tx, state),
        };
        drop(tx);
        written.map_err(|e| Error::io("writing the device state", e))?;
        self.call("CHECK_DEVICE_STATE", |f| f.check_device_state())
    }

    /// Hands the guest memory region to the daemon: ADD_MEM_REG if CONFIGURE_MEM_SLOTS was
    /// negotiated, else SET_MEM_TABLE.
    pub fn set_memory(&mut self, region: &VhostUserMemoryRegionInfo) -> Result<()> {
        if self
            .negotiated
            .has_protocol(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
        {
            self.call("ADD_MEM_REG", |f| f.add_mem_region(region))
        } else {
            self.call("SET_MEM_TABLE", |f| {
                f.set_mem_table(std::slice::from_ref(region))
            })
        }
    }

    /// SET_VRING_CALL alone (QEMU sends it once per queue at init, before the device starts).
    pub fn set_vring_call(&mut self, q: &SplitQueue) -> Result<()> {
        let i = usize::from(q.index());
        self.call("SET_VRING_CALL", |f| f.set_vring_call(i, q.call_fd()))
    }

    /// QEMU's `vhost_virtqueue_start`: SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR (our
    /// virtual addresses, as QEMU sends its own), SET_VRING_KICK, SET_VRING_CALL.
    pub fn start_vring(
        &mut self,
        q: &SplitQueue,
        user_addr: impl Fn(u64) -> Result<u64>,
    ) -> Result<()> {
        let i = usize::from(q.index());
        let size = q.size();
        let cfg = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: user_addr(q.desc_gpa())?,
            used_ring_addr: user_addr(q.used_gpa())?,
            avail_ring_addr: user_addr(q.avail_gpa())?,
            log_addr: None,
        };
        self.call("SET_VRING_NUM", |f| f.set_vring_num(i, size))?;
        self.call("SET_VRING_BASE", |f| f.set_vring_base(i, 0))?;
        self.call("SET_VRING_ADDR", |f| f.set_vring_addr(i, &cfg))?;
        self.call("SET_VRING_KICK", |f| f.set_vring_kick(i, q.kick_fd()))?;
        self.call("SET_VRING_CALL", |f| f.set_vring_call(i, q.call_fd()))
    }

    /// SET_VRING_ENABLE (only meaningful with VHOST_USER_F_PROTOCOL_FEATURES; without it the
    /// rings start enabled and this is skipped).
    pub fn enable_vring(&mut self, index: u16, enable: bool) -> Result<()> {
        if self.negotiated.acked_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Ok(());
        }
        self.call("SET_VRING_ENABLE", |f| {
            f.set_vring_enable(usize::from(index), enable)
        })
    }

    /// Without REPLY_ACK, set-type requests are unacknowledged; a GET_FEATURES round trip
    /// proves the daemon processed everything before it (QEMU does the same).
    pub fn sync(&mut self) -> Result<()> {
        self.ping().map(|_| ())
    }

    /// GET_VRING_BASE: stops the ring and returns its next avail index.
    pub fn get_vring_base(&mut self, index: u16) -> Result<u32> {
        self.call("GET_VRING_BASE", |f| f.get_vring_base(usize::from(index)))
    }
}

/// True if the peer closed `fd` (a stream socket).
pub fn socket_hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd for the duration of the call; timeout 0 never blocks.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

/// Shuts the socket down when an armed deadline passes.
struct Watchdog {
    state: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start(sock: Arc<OwnedFd>) -> Result<Self> {
        let state = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || watch(&st, &sock))
            .map_err(|e| Error::io("spawn watchdog thread", e))?;
        Ok(Watchdog {
            state,
            thread: Some(thread),
        })
    }

    fn arm(&self, deadline: Instant) {
        let (m, cv) = &*self.state;
        if let Ok(mut s) = m.lock() {
            s.deadline = Some(deadline);
            s.fired = false;
            cv.notify_all();
        }
    }

    /// Disarms; true if the deadline had fired.
    fn disarm(&self) -> bool {
        let (m, cv) = &*self.state;
        match m.lock() {
            Ok(mut s) => {
                s.deadline = None;
                cv.notify_all();
                std::mem::take(&mut s.fired)
            }
            Err(_) => true,
        }
    }
}

fn watch(state: &(Mutex<WatchState>, Condvar), sock: &OwnedFd) {
    let (m, cv) = state;
    let Ok(mut s) = m.lock() else { return };
    loop {
        if s.stop {
            return;
        }
        match s.deadline {
            None => match cv.wait(s) {
                Ok(g) => s = g,
                Err(_) => return,
            },
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    // SAFETY: shutdown on a socket fd we own (a dup of the connection); it
                    // wakes the thread blocked in recvmsg/sendmsg on the same socket.
                    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
                    s.fired = true;
                    s.deadline = None;
                } else {
                    match cv.wait_timeout(s, d - now) {
                        Ok((g, _)) => s = g,
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        if let Ok(mut s) = m.lock() {
            s.stop = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
