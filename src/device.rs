//! The vhost-user-fs device: virtqueues in, FUSE requests out.
//!
//! Queue 0 is the high-priority queue (FORGET/INTERRUPT), queues 1..=N carry requests. The
//! high-priority queue has a worker thread of its own and the request queues share one worker
//! thread per CPU (vhost-user-backend's epoll loops), so several request queues are served in
//! parallel. With `--thread-pool-size N` a queue's requests are additionally spread over a pool
//! of N threads, so that one slow request does not hold up the ones behind it.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use log::{debug, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringMutex, VringState, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::migration::{self, Transfer};
use crate::pool::ThreadPool;
use crate::protocol::Dispatcher;

/// Guest memory with a dirty-page bitmap: during a live migration, QEMU gives us a log
/// (SET_LOG_BASE) and every page we write (replies, the used ring) is marked in it, so that
/// QEMU sends it again.
pub type GuestRam = GuestMemoryMmap<BitmapMmapRegion>;
pub type Memory = GuestMemoryAtomic<GuestRam>;
type Vring = VringMutex<Memory>;

/// Request queues offered to the frontend (QEMU's `num-request-queues` may be 1..=this).
pub const MAX_REQUEST_QUEUES: usize = 16;
/// Largest ring the frontend may configure.
const MAX_QUEUE_SIZE: usize = 32768;
/// Requests served between two guest notifications when a queue has a backlog.
const NOTIFY_BATCH: usize = 8;
/// How often a `--poll-us` loop yields the CPU between looks at its queue (`poll_queue`).
const POLL_YIELD_EVERY: std::time::Duration = std::time::Duration::from_micros(10);

pub struct FsDevice {
    dispatcher: Arc<Dispatcher>,
    mem: RwLock<Option<Memory>>,
    event_idx: AtomicBool,
    pool: Option<ThreadPool>,
    /// Largest number of guest memory regions ever mapped: zero after a failed handshake
    /// means the frontend had no shareable memory to give us.
    regions_seen: AtomicUsize,
    /// Requests currently waiting on a thread of their own (lock waits).
    blocking: Arc<AtomicUsize>,
    /// Requests handed to the thread pool and not answered yet.
    in_pool: Arc<AtomicUsize>,
    migration: migration::Options,
    transfer: Transfer,
    /// Which queues each worker thread serves (`queues_per_thread`).
    queue_masks: Vec<u64>,
    /// `--poll-us`: how long a request queue's worker keeps looking for more requests after
    /// serving some, before it goes back to waiting for a kick.
    poll: std::time::Duration,
    /// Collects the migration state's paths while QEMU copies the guest's RAM.
    prep: migration::Preparation,
}

/// At most this many requests may wait at once (each holds a thread); more get ENOLCK, so a
/// guest cannot make the daemon spawn threads without bound.
const MAX_BLOCKING: usize = 256;

impl FsDevice {
    pub fn new(
        dispatcher: Dispatcher,
        thread_pool_size: usize,
        migration: migration::Options,
    ) -> io::Result<Self> {
        let pool = match thread_pool_size {
            0 => None,
            n => Some(ThreadPool::new(n)?),
        };
        Ok(Self {
            dispatcher: Arc::new(dispatcher),
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            pool,
            regions_seen: AtomicUsize::new(0),
            blocking: Arc::new(AtomicUsize::new(0)),
            in_pool: Arc::new(AtomicUsize::new(0)),
            migration,
            transfer: Transfer::default(),
            queue_masks: queue_masks(),
            prep: migration::Preparation::default(),
            poll: std::time::Duration::ZERO,
        })
    }

    /// Busy-poll request queues for `poll` after each burst of requests (`--poll-us`).
    pub fn with_poll(mut self, poll: std::time::Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Look for more requests on `vring` for `self.poll` after the last one, notifications
    /// off: a guest that sends its next request within that time needs no kick (an eventfd
    /// write in its vCPU, a wakeup here). Costs that CPU time when nothing comes.
    ///
    /// Between looks the thread spins, and yields the CPU every `POLL_YIELD_EVERY`, so that
    /// a client on the same CPU that was not switched to when its reply came still gets to
    /// run soon; a yield on every look would be a system call per look.
    fn poll_queue(&self, vring: &Vring, queue: u16) -> io::Result<()> {
        let start = std::time::Instant::now();
        let mut deadline = start + self.poll;
        let mut next_yield = start + POLL_YIELD_EVERY;
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            if self.process_queue(vring, queue)? {
                deadline = std::time::Instant::now() + self.poll;
            } else if now >= next_yield {
                std::thread::yield_now();
                next_yield = now + POLL_YIELD_EVERY;
            } else {
                std::hint::spin_loop();
            }
        }
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Whether the frontend ever gave us guest memory we could map.
    pub fn memory_mapped(&self) -> bool {
        self.regions_seen.load(Ordering::Relaxed) > 0
    }

    fn memory(&self) -> io::Result<Memory> {
        self.mem
            .read()
            .ok()
            .and_then(|m| m.clone())
            .ok_or_else(|| io::Error::other("a queue was kicked before guest memory was set"))
    }

    /// Return a finished chain to the guest and notify it if it wants to be notified.
    fn complete(state: &mut VringState<Memory>, head: u16, len: u32, event_idx: bool) {
        if let Err(e) = state.add_used(head, len) {
            warn!("cannot return a descriptor to the used ring: {e}");
            return;
        }
        Self::notify(state, event_idx);
    }

    /// Signal the guest about used entries, unless EVENT_IDX says it does not want to know yet.
    fn notify(state: &mut VringState<Memory>, event_idx: bool) {
        let wanted = !event_idx || state.needs_notification().unwrap_or(true);
        if wanted {
            if let Err(e) = state.signal_used_queue() {
                warn!("cannot notify the guest: {e}");
            }
        }
    }

    /// Serve every available chain of `vring` (queue `queue`); returns whether there were any.
    fn process_queue(&self, vring: &Vring, queue: u16) -> io::Result<bool> {
        let atomic = self.memory()?;
        let mem = atomic.memory();
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(|e| io::Error::other(format!("cannot read the avail ring: {e}")))?
            .collect();
        let any = !chains.is_empty();
        // Served here: completions are batched, and the guest is notified once per
        // NOTIFY_BATCH requests and at the end, rather than once per request. At depth, that
        // saves an eventfd write and a guest wake-up per request.
        let mut unsignalled = 0usize;
        for chain in chains {
            let head = chain.head_index();
            let header = Dispatcher::peek_header(&*mem, &chain);
            if header.is_some_and(|h| crate::protocol::may_block(h.opcode)) {
                self.run_blocking(&atomic, vring, chain, header, event_idx, queue);
                continue;
            }
            match &self.pool {
                None => {
                    let len = self.dispatcher.serve(&*mem, chain, header, queue);
                    let mut state = vring.get_mut();
                    if let Err(e) = state.add_used(head, len) {
                        warn!("cannot return a descriptor to the used ring: {e}");
                        continue;
                    }
                    unsignalled += 1;
                    if unsignalled >= NOTIFY_BATCH {
                        Self::notify(&mut state, event_idx);
                        unsignalled = 0;
                    }
                }
                Some(pool) => {
                    let dispatcher = self.dispatcher.clone();
                    let atomic = atomic.clone();
                    let vring = vring.clone();
                    let in_pool = self.in_pool.clone();
                    in_pool.fetch_add(1, Ordering::AcqRel);
                    pool.execute(move || {
                        let mem = atomic.memory();
                        let chain = chain;
                        let len = dispatcher.serve(&*mem, chain, header, queue);
                        Self::complete(&mut vring.get_mut(), head, len, event_idx);
                        in_pool.fetch_sub(1, Ordering::AcqRel);
                    });
                }
            }
        }
        if unsignalled > 0 {
            Self::notify(&mut vring.get_mut(), event_idx);
        }
        Ok(any)
    }
}

impl FsDevice {
    /// Serve a request that may wait indefinitely (a lock wait) on a thread of its own, so that
    /// the request that will end the wait can still be served.
    fn run_blocking(
        &self,
        atomic: &Memory,
        vring: &Vring,
        chain: virtio_queue::DescriptorChain<vm_memory::GuestMemoryLoadGuard<GuestRam>>,
        header: Option<fuse_backend_rs::abi::fuse_abi::InHeader>,
        event_idx: bool,
        queue: u16,
    ) {
        let head = chain.head_index();
        if self.blocking.fetch_add(1, Ordering::AcqRel) >= MAX_BLOCKING {
            self.blocking.fetch_sub(1, Ordering::AcqRel);
            warn!("too many requests waiting at once; refusing a lock wait with ENOLCK");
            let mem = atomic.memory();
            let len = Dispatcher::refuse(&*mem, chain, libc::ENOLCK);
            Self::complete(&mut vring.get_mut(), head, len, event_idx);
            return;
        }
        let fallback = chain.clone();
        let dispatcher = self.dispatcher.clone();
        let atomic2 = atomic.clone();
        let vring2 = vring.clone();
        let blocking = self.blocking.clone();
        let spawned = std::thread::Builder::new()
            .name("vufsd-wait".into())
            .spawn(move || {
                let mem = atomic2.memory();
                let len = dispatcher.serve(&*mem, chain, header, queue);
                Self::complete(&mut vring2.get_mut(), head, len, event_idx);
                blocking.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            self.blocking.fetch_sub(1, Ordering::AcqRel);
            warn!("cannot start a thread for a lock wait ({e}); refusing it with EAGAIN");
            let mem = atomic.memory();
            let len = Dispatcher::refuse(&*mem, fallback, libc::EAGAIN);
            Self::complete(&mut vring.get_mut(), head, len, event_idx);
        }
    }
}

impl FsDevice {
    /// Before the state leaves: every request taken from the queues must have been answered,
    /// or its reply would be written after QEMU stopped looking. A request waiting for a lock
    /// never will be: that refuses the migration (the source goes on).
    fn quiesce(&self) -> io::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let waiting = self.blocking.load(Ordering::Acquire);
            if waiting > 0 {
                return Err(io::Error::other(format!(
                    "{waiting} guest request(s) are waiting for a lock; a waiting request cannot \
                     move to another daemon: migration refused, the source VM goes on"
                )));
            }
            if self.in_pool.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::other(
                    "requests were still being served 10 s after the device stopped: migration \
                     refused",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Which queues each worker thread serves: the high-priority queue (FORGETs) on a thread of
/// its own, so that a busy request queue never delays the forgets that release inodes; request
/// queues spread over one thread per CPU, since more threads than CPUs only add switches (and
/// idle memory).
fn queue_masks() -> Vec<u64> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cpus.clamp(1, MAX_REQUEST_QUEUES);
    let mut masks = vec![1u64];
    masks.resize(1 + workers, 0);
    for q in 1..=MAX_REQUEST_QUEUES {
        masks[1 + (q - 1) % workers] |= 1u64 << q;
    }
    masks
}

impl FsDevice {
    /// The vhost-user queue index of worker `thread`'s `event`-th queue (its `event`-th set
    /// bit in `queues_per_thread`), for the trace.
    fn queue_index(&self, thread: usize, event: u16) -> u16 {
        let mask = self.queue_masks.get(thread).copied().unwrap_or(0);
        (0..64u16)
            .filter(|q| mask & (1 << q) != 0)
            .nth(usize::from(event))
            .unwrap_or(u16::MAX)
    }
}

impl VhostUserBackend for FsDevice {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        1 + MAX_REQUEST_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            // Dirty-page logging: without it QEMU refuses to migrate the VM at all.
            | VhostUserVirtioFeatures::LOG_ALL.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::DEVICE_STATE
    }

    /// QEMU stopped the device and gives us a pipe for the state: the source writes its state
    /// into it, the destination reads it (see `crate::migration`).
    fn set_device_state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
    ) -> io::Result<Option<File>> {
        if phase != VhostTransferStatePhase::STOPPED {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "vufsd transfers its state only while the device is stopped",
            ));
        }
        let direction = match direction {
            VhostTransferStateDirection::SAVE => {
                self.quiesce()?;
                // What was prepared so far is used; the rest is collected now.
                self.prep.finish();
                migration::Direction::Save
            }
            VhostTransferStateDirection::LOAD => migration::Direction::Load,
        };
        let fs = self.dispatcher.fs().clone();
        self.transfer.start(direction, file, fs, self.migration)?;
        Ok(None)
    }

    /// How the transfer went: an error here fails the migration, and QEMU keeps the VM on the
    /// source.
    fn check_device_state(&self) -> io::Result<()> {
        self.transfer.finish()
    }

    /// VHOST_F_LOG_ALL set means a migration has started (QEMU logs dirty pages while it copies
    /// the guest's RAM): prepare the state meanwhile. Cleared, the migration was cancelled.
    fn acked_features(&self, features: u64) {
        let log_all = features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0;
        let fs = self.dispatcher.fs();
        if log_all {
            self.prep.start(fs.clone());
        } else {
            self.prep.cancel(fs);
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        let regions = mem.memory().num_regions();
        self.regions_seen.fetch_max(regions, Ordering::Relaxed);
        debug!("guest memory updated: {regions} region(s)");
        if let Ok(mut slot) = self.mem.write() {
            *slot = Some(mem);
        }
        Ok(())
    }

    /// An exit eventfd per worker thread, so that dropping the daemon stops the workers instead
    /// of waiting for them forever.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                warn!("cannot create an exit event: {e}");
                None
            }
        }
    }

    /// The high-priority queue (FORGETs) on a thread of its own, so that a busy request queue
    /// never delays the forgets that release inodes; request queues spread over one thread
    /// per CPU, since more threads than CPUs only add switches (and idle memory).
    fn queues_per_thread(&self) -> Vec<u64> {
        self.queue_masks.clone()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "unexpected event set {evset:?} on queue event {device_event}"
            )));
        }
        // With one queue per thread, the event index is the index into this thread's vrings.
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("unknown queue event {device_event}")))?;
        let queue = self.queue_index(thread_id, device_event);
        if self.event_idx.load(Ordering::Relaxed) {
            // Keep going until the guest added nothing while we worked with notifications off.
            loop {
                vring
                    .disable_notification()
                    .map_err(|e| io::Error::other(format!("{e}")))?;
                self.process_queue(vring, queue)?;
                if !self.poll.is_zero() && queue != 0 {
                    self.poll_queue(vring, queue)?;
                }
                let more = vring
                    .enable_notification()
                    .map_err(|e| io::Error::other(format!("{e}")))?;
                if !more {
                    break;
                }
            }
        } else {
            self.process_queue(vring, queue)?;
        }
        if queue == 0 {
            // The high-priority queue carries the FORGETs: once it is empty, what they freed
            // can go back to the system.
            self.dispatcher.fs().settle_memory();
        }
        Ok(())
    }
}
