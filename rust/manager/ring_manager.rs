//! The `RingManager` value: the ring, the buffer pool and the pending table, set up
//! together (buffers and file slots registered, the ring probed with one no-op), the
//! accessors the backend reads, and a teardown that never frees memory the kernel may
//! still use.

use io_uring::{opcode, squeue, IoUring};
use std::collections::VecDeque;
use std::io;

use super::pending::Operation;
use super::tokens::TokenMap;
use super::unconsumed::Unconsumed;
use crate::buffers::BufferPool;
use crate::config::{IoUringConfig, RingMode};
use crate::ring::{
    build_ring, describe_buffer_registration_error, describe_setup_error, Unavailable,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub bytes_written: u64,
    pub latency_ns_total: u64,
    pub sqes_submitted: u64,
    pub short_writes_continued: u64,
    pub cancelled_reissued: u64,
    pub enter_calls: u64,
    pub background_flushes: u64,
}

pub struct RingManager {
    // Field order is drop order: the ring (and with it the kernel's hold on the buffers and
    // files) goes before the pool's memory is unmapped.
    pub(super) ring: IoUring,
    pub(super) pool: BufferPool,
    pub(super) mode: RingMode,
    pub(super) fallback_reason: Option<String>,
    pub(super) core_id: usize,
    pub(super) next_token: u64,
    /// A token reserved earlier that the next operation placed takes (`place_next_as`).
    pub(super) reserved_next: Option<u64>,
    pub(super) in_flight: TokenMap<Operation>,
    /// SQEs that did not fit the submission queue; pushed, in order, at the next flush.
    pub(super) backlog: VecDeque<squeue::Entry>,
    /// The queue as the kernel sees it, to take back what a failed enter refused.
    pub(super) unconsumed: Unconsumed,
    /// SQEs taken back after a refused submission, with the negative errno their parts
    /// complete with at the next reap: (user data, result).
    pub(super) refused: Vec<(u64, i32)>,
    /// Operations that could not be waited out were left to the kernel (`abandon`): their
    /// memory and the pool stay mapped for the rest of the process.
    pub(super) abandoned: bool,
    /// SQEs ever placed in the queue or the backlog: an SQE's count at its placing is its
    /// place in the order the kernel takes them (the backlog goes to the queue in order,
    /// and nothing goes to the queue while the backlog has entries).
    pub(super) placed: u64,
    pub(super) cqe_scratch: Vec<(u64, i32)>,
    pub(super) metrics: Metrics,
    /// Bytes held in private copies (writes larger than the pool, long reads) in flight.
    pub(super) private_bytes: usize,
}

impl RingManager {
    pub fn new(core_id: usize, config: &IoUringConfig) -> Result<Self, Unavailable> {
        let built = build_ring(config)?;
        let pool = BufferPool::new(config.buffer_size, config.buffer_count)
            .map_err(|e| Unavailable(format!("allocating the buffer pool failed: {e}")))?;
        let iovecs = pool.iovecs();
        // SAFETY: every iovec points into the pool's arena, which stays mapped until the
        // pool is dropped, and the pool is dropped after the ring (field order above).
        unsafe { built.ring.submitter().register_buffers(&iovecs) }.map_err(|e| {
            Unavailable(describe_buffer_registration_error(
                &e,
                config.buffer_size * config.buffer_count,
            ))
        })?;
        built
            .ring
            .submitter()
            .register_files_sparse(config.max_files)
            .map_err(|e| {
                Unavailable(format!(
                    "registering {} file slots failed: {}",
                    config.max_files,
                    describe_setup_error(&e)
                ))
            })?;
        let mut ring = built.ring;
        probe_enter(&mut ring)?;
        let unconsumed = Unconsumed::new(&ring)
            .map_err(|e| Unavailable(format!("mapping the submission queue failed: {e}")))?;
        Ok(Self {
            ring,
            pool,
            mode: built.mode,
            fallback_reason: built.fallback_reason,
            core_id,
            next_token: 1,
            reserved_next: None,
            in_flight: TokenMap::default(),
            backlog: VecDeque::new(),
            unconsumed,
            refused: Vec::new(),
            abandoned: false,
            placed: 0,
            cqe_scratch: Vec::with_capacity(config.ring_entries as usize * 2),
            metrics: Metrics::default(),
            private_bytes: 0,
        })
    }

    pub fn mode(&self) -> RingMode {
        self.mode
    }

    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The ring's descriptor.
    pub fn ring_descriptor(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.ring)
    }

    pub fn core_id(&self) -> usize {
        self.core_id
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics
    }

    pub fn buffer_size(&self) -> usize {
        self.pool.buffer_size()
    }

    pub fn buffer_count(&self) -> usize {
        self.pool.count()
    }

    pub fn free_buffers(&self) -> usize {
        self.pool.free_count()
    }

    /// How many registered buffers a write of `len` bytes needs, or `None` when it is larger
    /// than the whole pool and travels from its own copy instead.
    pub fn buffers_needed(&self, len: usize) -> Option<usize> {
        let parts = len.div_ceil(self.pool.buffer_size()).max(1);
        (parts <= self.pool.count()).then_some(parts)
    }

    /// Puts `slot` of the fixed-file table to `fd`, or empties it with -1. Only called when
    /// no operation in flight uses the slot.
    pub fn set_file(&self, slot: u32, fd: i32) -> io::Result<()> {
        self.ring
            .submitter()
            .register_files_update(slot, &[fd])
            .map(|_| ())
    }

    /// Bytes in private copies in flight: writes larger than the pool, stream writes,
    /// long reads.
    pub fn private_bytes(&self) -> usize {
        self.private_bytes
    }

    /// Lends a registered buffer for the caller to fill (write combining); it comes back
    /// through `submit_registered`'s completion.
    pub fn acquire_buffer(&mut self) -> Option<u32> {
        self.pool.acquire()
    }

    pub fn buffer_mut(&mut self, buffer: u32) -> &mut [u8] {
        self.pool.buffer_mut(buffer)
    }

    /// Takes back a buffer lent by `acquire_buffer` that never went to the kernel.
    pub fn release_buffer(&mut self, buffer: u32) {
        self.pool.release(buffer);
    }
}

/// Sends one no-op through the ring and waits for it. A ring can be set up and registered
/// and still refuse io_uring_enter (a seccomp filter that blocks only that call): better
/// to say so now than to hand out a backend that can never complete anything.
fn probe_enter(ring: &mut IoUring) -> Result<(), Unavailable> {
    // Tokens start at 1, so user_data 0 is never an operation's.
    let nop = opcode::Nop::new().build().user_data(0);
    // SAFETY: a no-op reads no memory.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| Unavailable("a fresh ring has no room for one entry".to_string()))?;
    // A refusal that may pass (EAGAIN, EBUSY, EINTR) is asked again, a few times.
    let mut attempts = 0;
    while let Err(e) = ring.submit_and_wait(1) {
        attempts += 1;
        if !super::submission::is_transient(&e) || attempts == 100 {
            return Err(Unavailable(format!(
                "io_uring_enter failed: {}",
                describe_setup_error(&e)
            )));
        }
        std::thread::sleep(super::sleeping::RETRY_REFUSED);
    }
    let posted = ring.completion().next();
    match posted {
        Some(cqe) if cqe.result() >= 0 => Ok(()),
        Some(cqe) => Err(Unavailable(format!(
            "a no-op through the ring failed: {}",
            io::Error::from_raw_os_error(-cqe.result())
        ))),
        None => Err(Unavailable(
            "a no-op through the ring never completed".to_string(),
        )),
    }
}

impl Drop for RingManager {
    fn drop(&mut self) {
        // The kernel may still read buffers of operations in flight; unmapping the pool under
        // them would let it write garbage to disk. Wait them out (the backend normally has
        // done so already; this covers unwinding paths), unless they were abandoned.
        let mut sink = Vec::new();
        while !self.abandoned && !self.in_flight.is_empty() {
            if self.flush().is_err() {
                break;
            }
            self.reap(&mut sink);
            sink.clear();
            if self.in_flight.is_empty() {
                break;
            }
            match self.wait_for_cqe(None) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
                Ok(()) => {}
            }
        }
        if !self.in_flight.is_empty() {
            self.abandon();
        }
        if !self.abandoned {
            // Unregistering returns the pinned pages and their RLIMIT_MEMLOCK charge now;
            // left to the ring's teardown, the kernel returns them some time after the ring
            // is closed, and an instance opened right after this one (the usual 8 MiB limit
            // holds half a default pool twice) would find the limit still used up.
            let _ = self.ring.submitter().unregister_buffers();
            let _ = self.ring.submitter().unregister_files();
        }
    }
}

impl RingManager {
    /// Leaves what is still in flight to the kernel: the memory it may still read (or, for
    /// a read, write) stays mapped for the rest of the process, the private copies and the
    /// pool both, and the ring's teardown (when it is dropped) cancels the rest in the
    /// kernel. For operations that even a cancellation did not bring back.
    pub fn abandon(&mut self) {
        std::mem::forget(std::mem::take(&mut self.in_flight));
        self.pool.leak();
        self.abandoned = true;
    }
}
