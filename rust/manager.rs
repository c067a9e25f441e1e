//! The per-core ring manager: one ring, its registered buffers and files, the table of
//! operations in flight keyed by one token counter, and the single place where completions
//! are turned back into finished operations (short writes continued, buffers returned).
//!
//! An operation is what a caller submitted (one token). A write may travel as several
//! parts, one per registered buffer, each its own SQE; the SQE's user_data is
//! `token << PART_BITS | part`, so every CQE finds its operation and its part.

use io_uring::{opcode, squeue, types, IoUring};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::time::{Duration, Instant};

use crate::buffers::BufferPool;
use crate::config::{IoUringConfig, RingMode};
use crate::reads::{ReadOp, ReadStep, STREAM_OFFSET};
use crate::ring::{
    build_ring, describe_buffer_registration_error, describe_setup_error, Unavailable,
};

/// Enough bits to number the parts of a write spread over every buffer of the largest pool.
const PART_BITS: u32 = 16;
const PART_MASK: u64 = (1 << PART_BITS) - 1;
/// The kernel moves at most this many bytes in one write (MAX_RW_COUNT); longer parts are
/// continued like a short write.
const MAX_BYTES_PER_SQE: usize = 0x7fff_f000;
/// The token of the no-ops that wake a sleeping waiter; operations' tokens start at 1.
const WAKE_TOKEN: u64 = 0;

/// Tokens are handed out in sequence, so a multiplicative hash spreads them well and costs
/// one multiply instead of SipHash on the hot path.
#[derive(Default)]
pub struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type TokenMap<V> = HashMap<u64, V, BuildHasherDefault<TokenHasher>>;

/// Where the bytes of one part of a write live while the kernel reads them.
enum Source {
    /// A registered buffer of the pool (written with `WriteFixed`).
    Registered(u32),
    /// A private copy, for a write larger than the whole pool (written with `Write`).
    Owned(Box<[u8]>),
}

struct Part {
    source: Source,
    offset: u64,
    len: usize,
    /// Bytes the kernel has confirmed so far; a short write resubmits from here.
    done: usize,
}

enum Kind {
    Write {
        parts: Vec<Part>,
        parts_left: usize,
        first_error: Option<i32>,
        total: usize,
    },
    Sync,
    Read(ReadOp),
    /// An fdatasync of a range that the backend issues itself, through its own descriptor
    /// (not the fixed file); it has no caller token.
    BackgroundFlush {
        fd: std::os::fd::RawFd,
        offset: u64,
        len: u32,
    },
}

/// What a finished operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// A write of `len` bytes at `offset` (the result says whether it succeeded).
    Write {
        offset: u64,
        len: usize,
    },
    Datasync,
    Read,
    /// A background flush of the backend's own; never reported to the caller as such.
    BackgroundFlush,
}

struct Operation {
    file_slot: u32,
    /// The caller's own tag, returned with the completion (the backend's write sequence).
    tag: u64,
    kind: Kind,
    submitted_at: Instant,
}

/// One operation the kernel has finished with: all its parts completed, its buffers back in
/// the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub token: u64,
    /// Bytes written or read (the whole operation), 0 for a datasync, or a negative errno.
    pub result: i64,
    pub file_slot: u32,
    pub done: Done,
    pub tag: u64,
    /// For a write that failed: how many bytes from its start the kernel wrote before it
    /// stopped, so that the records wholly inside them can be reported written.
    pub written: usize,
    /// For a read: the bytes read.
    pub data: Option<Vec<u8>>,
}

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

/// What a waiter needs to sleep in the kernel without the manager's lock.
#[derive(Clone, Copy, Debug)]
pub struct SleepTicket {
    /// The ring's descriptor; the ring stays alive while anyone sleeps on it.
    pub fd: std::os::fd::RawFd,
    pub to_submit: u32,
    /// Wake when this many CQEs are unreaped.
    pub want: u32,
    /// SQPOLL's kernel thread is asleep and must be woken to take the queued SQEs.
    pub wake_sqpoll: bool,
}

pub struct RingManager {
    // Field order is drop order: the ring (and with it the kernel's hold on the buffers and
    // files) goes before the pool's memory is unmapped.
    ring: IoUring,
    pool: BufferPool,
    mode: RingMode,
    fallback_reason: Option<String>,
    core_id: usize,
    next_token: u64,
    in_flight: TokenMap<Operation>,
    /// SQEs that did not fit the submission queue; pushed, in order, at the next flush.
    backlog: VecDeque<squeue::Entry>,
    /// SQEs pushed to the queue since the last flush.
    queued: usize,
    cqe_scratch: Vec<(u64, i32)>,
    metrics: Metrics,
    /// Bytes held in private copies (writes larger than the pool, long reads) in flight.
    private_bytes: usize,
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
        Ok(Self {
            ring,
            pool,
            mode: built.mode,
            fallback_reason: built.fallback_reason,
            core_id,
            next_token: 1,
            in_flight: TokenMap::default(),
            backlog: VecDeque::new(),
            queued: 0,
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

    /// Operations handed to the ring (or its backlog) whose completion has not been reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
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

    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// Copies `data` into registered buffers (or one private copy) and queues its parts.
    /// The caller has checked that `buffers_needed(data.len())` buffers are free.
    pub fn submit_write(&mut self, file_slot: u32, data: &[u8], offset: u64, tag: u64) -> u64 {
        let token = self.take_token();
        let parts = match self.buffers_needed(data.len()) {
            Some(_) if data.is_empty() => vec![self.registered_part(&[], offset)],
            Some(_) => data
                .chunks(self.pool.buffer_size())
                .enumerate()
                .map(|(i, chunk)| {
                    self.registered_part(chunk, offset + (i * self.pool.buffer_size()) as u64)
                })
                .collect(),
            None => vec![Part {
                source: Source::Owned(data.into()),
                offset,
                len: data.len(),
                done: 0,
            }],
        };
        self.issue_write(token, file_slot, parts, data.len(), tag);
        token
    }

    /// Queues a write of `data` as one part from its own copy, under `token`: for a stream,
    /// whose bytes must leave in one piece (`offset` is then `STREAM_OFFSET`).
    pub fn submit_owned(
        &mut self,
        token: u64,
        file_slot: u32,
        data: Box<[u8]>,
        offset: u64,
        tag: u64,
    ) {
        let len = data.len();
        let part = Part {
            source: Source::Owned(data),
            offset,
            len,
            done: 0,
        };
        self.issue_write(token, file_slot, vec![part], len, tag);
    }

    /// Queues a read of `len` bytes at `offset` (`STREAM_OFFSET` on a stream) under `token`:
    /// into a registered buffer when `registered` and it fits one (the caller checked one is
    /// free), else into a private buffer.
    pub fn submit_read(
        &mut self,
        token: u64,
        file_slot: u32,
        len: usize,
        offset: u64,
        registered: bool,
    ) {
        let buffer = (registered && len <= self.pool.buffer_size())
            .then(|| self.pool.acquire())
            .flatten();
        let mut read = match buffer {
            Some(buffer) => ReadOp::registered(buffer, offset, len),
            None => ReadOp::private(offset, len),
        };
        let entry = read.entry(&self.pool, file_slot, token << PART_BITS);
        self.private_bytes += read.private_bytes();
        self.push(entry);
        self.in_flight.insert(
            token,
            Operation {
                file_slot,
                tag: 0,
                kind: Kind::Read(read),
                submitted_at: Instant::now(),
            },
        );
        self.metrics.submitted += 1;
        self.after_push();
    }

    /// Bytes in private copies in flight: writes larger than the pool, stream writes,
    /// long reads.
    pub fn private_bytes(&self) -> usize {
        self.private_bytes
    }

    /// Queues the SQEs of every part of a write and tracks it until its last part is done.
    fn issue_write(
        &mut self,
        token: u64,
        file_slot: u32,
        parts: Vec<Part>,
        total: usize,
        tag: u64,
    ) {
        for (index, part) in parts.iter().enumerate() {
            if let Source::Owned(bytes) = &part.source {
                self.private_bytes += bytes.len();
            }
            let entry = self.part_entry(file_slot, token, index, part);
            self.push(entry);
        }
        let parts_left = parts.len();
        let kind = Kind::Write {
            parts,
            parts_left,
            first_error: None,
            total,
        };
        let op = Operation {
            file_slot,
            tag,
            kind,
            submitted_at: Instant::now(),
        };
        self.in_flight.insert(token, op);
        self.metrics.submitted += 1;
        self.after_push();
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

    /// Queues a write of the first `len` bytes of a buffer lent by `acquire_buffer`, under
    /// `token`.
    pub fn submit_registered(
        &mut self,
        token: u64,
        file_slot: u32,
        buffer: u32,
        offset: u64,
        len: usize,
        tag: u64,
    ) {
        let part = Part {
            source: Source::Registered(buffer),
            offset,
            len,
            done: 0,
        };
        self.issue_write(token, file_slot, vec![part], len, tag);
    }

    fn registered_part(&mut self, chunk: &[u8], offset: u64) -> Part {
        let index = self
            .pool
            .acquire()
            .expect("caller checked that enough buffers are free");
        self.pool.buffer_mut(index)[..chunk.len()].copy_from_slice(chunk);
        Part {
            source: Source::Registered(index),
            offset,
            len: chunk.len(),
            done: 0,
        }
    }

    fn part_entry(&self, file_slot: u32, token: u64, index: usize, part: &Part) -> squeue::Entry {
        part_entry(&self.pool, file_slot, token, index, part)
    }
}

/// Bytes of a write the kernel wrote from its start before it stopped: every part wholly
/// written up to the first that is not, plus what that one got.
fn written_prefix(parts: &[Part]) -> usize {
    let mut written = 0;
    for part in parts {
        written += part.done;
        if part.done < part.len {
            break;
        }
    }
    written
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
    ring.submit_and_wait(1).map_err(|e| {
        Unavailable(format!(
            "io_uring_enter failed: {}",
            describe_setup_error(&e)
        ))
    })?;
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

fn datasync_entry(file_slot: u32, token: u64) -> squeue::Entry {
    opcode::Fsync::new(types::Fixed(file_slot))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(token << PART_BITS)
}

/// The kernel takes an fsync range as [offset, offset + len] with the end included
/// (io_uring's IORING_OP_FSYNC hands `offset + len` to vfs_fsync_range as its last byte), so
/// `len` bytes starting at `offset` are `len - 1` here.
fn background_flush_entry(
    fd: std::os::fd::RawFd,
    token: u64,
    offset: u64,
    len: u32,
) -> squeue::Entry {
    opcode::Fsync::new(types::Fd(fd))
        .offset(offset)
        .len(len - 1) // callers flush whole pages: len >= 4096
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(token << PART_BITS)
}

/// The SQE that writes what is left of `part`.
fn part_entry(
    pool: &BufferPool,
    file_slot: u32,
    token: u64,
    index: usize,
    part: &Part,
) -> squeue::Entry {
    {
        let remaining = (part.len - part.done).min(MAX_BYTES_PER_SQE) as u32;
        let offset = if part.offset == STREAM_OFFSET {
            STREAM_OFFSET
        } else {
            part.offset + part.done as u64
        };
        let user_data = token << PART_BITS | index as u64;
        let file = types::Fixed(file_slot);
        match &part.source {
            Source::Registered(buffer) => {
                let pointer = pool.pointer(*buffer).wrapping_add(part.done);
                opcode::WriteFixed::new(file, pointer, remaining, *buffer as u16)
                    .offset(offset)
                    .build()
                    .user_data(user_data)
            }
            Source::Owned(bytes) => {
                opcode::Write::new(file, bytes[part.done..].as_ptr(), remaining)
                    .offset(offset)
                    .build()
                    .user_data(user_data)
            }
        }
    }
}

impl RingManager {
    /// Queues an fdatasync of the file in `file_slot`. Ordering against earlier writes is
    /// the backend's job; this only issues it.
    pub fn submit_datasync(&mut self, file_slot: u32, tag: u64) -> u64 {
        let token = self.take_token();
        self.push_datasync(token, file_slot, tag);
        token
    }

    /// The token the next `reserve_token` returns.
    pub fn peek_token(&self) -> u64 {
        self.next_token
    }

    /// Reserves a token for a datasync that the backend holds back and issues later with
    /// `push_datasync`.
    pub fn reserve_token(&mut self) -> u64 {
        self.take_token()
    }

    pub fn push_datasync(&mut self, token: u64, file_slot: u32, tag: u64) {
        self.push(datasync_entry(file_slot, token));
        self.in_flight.insert(
            token,
            Operation {
                file_slot,
                tag,
                kind: Kind::Sync,
                submitted_at: Instant::now(),
            },
        );
        self.metrics.submitted += 1;
        self.after_push();
    }

    /// Queues an fdatasync of `len` bytes at `offset` through `fd`, a descriptor of the file
    /// in `file_slot` that the backend keeps for this (see `UringBackend::start_flush_if_due`);
    /// its completion goes to the backend. `fd` must stay open until then.
    pub fn submit_background_flush(
        &mut self,
        file_slot: u32,
        fd: std::os::fd::RawFd,
        offset: u64,
        len: u32,
    ) {
        let token = self.take_token();
        self.push(background_flush_entry(fd, token, offset, len));
        self.in_flight.insert(
            token,
            Operation {
                file_slot,
                tag: 0,
                kind: Kind::BackgroundFlush { fd, offset, len },
                submitted_at: Instant::now(),
            },
        );
        self.metrics.background_flushes += 1;
        self.after_push();
    }

    fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            let mut queue = self.ring.submission();
            // SAFETY: every buffer an SQE points at (a registered buffer or an owned copy)
            // belongs to an operation in `in_flight`, which keeps it alive and unaliased until
            // the CQE of that part is reaped; the fixed file slot stays registered until the
            // backend sees no operation on it.
            if unsafe { queue.push(&entry) }.is_ok() {
                self.queued += 1;
                return;
            }
        }
        self.backlog.push_back(entry);
    }

    fn after_push(&mut self) {
        // With SQPOLL the kernel thread takes entries as they land; only a sleeping thread
        // needs a wake-up call, which `submit` makes only when IORING_SQ_NEED_WAKEUP is set.
        // In standard mode entries wait for the next flush, so a batch costs one syscall.
        if self.mode == RingMode::Sqpoll && self.backlog.is_empty() {
            let _ = self.ring.submit();
        }
    }

    /// Hands every queued SQE (backlog included) to the kernel; returns how many.
    pub fn flush(&mut self) -> io::Result<usize> {
        let mut handed = 0;
        loop {
            self.move_backlog();
            let queued = std::mem::take(&mut self.queued);
            // Nothing to hand over: skip the syscall, unless completions wait in the kernel's
            // overflow list, which only an enter moves back into the ring.
            if queued == 0 && !self.ring.submission().cq_overflow() {
                return Ok(handed);
            }
            handed += queued;
            self.metrics.sqes_submitted += queued as u64;
            self.enter(0, None)?;
            if self.backlog.is_empty() {
                return Ok(handed);
            }
            if self.mode == RingMode::Sqpoll {
                // The kernel thread has not consumed the queue yet; sleep until it has room.
                self.metrics.enter_calls += 1;
                self.ring.submitter().squeue_wait()?;
            }
        }
    }

    fn move_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            let mut queue = self.ring.submission();
            // SAFETY: as in `push`: the entry's buffer and file slot belong to an operation
            // still in flight.
            if unsafe { queue.push(entry) }.is_err() {
                break;
            }
            drop(queue);
            self.backlog.pop_front();
            self.queued += 1;
        }
    }

    /// One io_uring_enter: submits what is queued and, with `want > 0`, blocks until that
    /// many CQEs are posted or `timeout` passes. A timeout is not an error.
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.metrics.enter_calls += 1;
        let submitter = self.ring.submitter();
        let result = match timeout {
            Some(t) if want > 0 => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)
            }
            _ => submitter.submit_and_wait(want),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            // The completion queue is full and the kernel wants it drained before it takes
            // more; the caller reaps and comes back.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and blocks until at least one CQE is posted or `timeout`
    /// passes. EINTR comes back as an error so the caller can run signal handlers.
    pub fn wait_for_cqe(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_for_cqes(1, timeout)
    }

    /// As `wait_for_cqe`, for at least `want` CQEs (capped at what can still arrive).
    pub fn wait_for_cqes(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.move_backlog();
        self.metrics.sqes_submitted += std::mem::take(&mut self.queued) as u64;
        let posted = self.ring.completion().len();
        let want = want.min(self.sqes_in_flight()).max(1);
        if posted >= want {
            return Ok(());
        }
        self.enter(want - posted, timeout)
    }

    /// Gets the ring ready for a waiter to sleep in io_uring_enter without holding the
    /// manager (see `waiters`): queued SQEs are handed over by that same call, and `want`
    /// is capped at what can still arrive and at what the completion queue holds.
    pub fn prepare_sleep(&mut self, want: usize) -> SleepTicket {
        self.move_backlog();
        let to_submit = std::mem::take(&mut self.queued);
        self.metrics.sqes_submitted += to_submit as u64;
        self.metrics.enter_calls += 1;
        let cq_room = (self.ring.params().cq_entries() as usize / 2).max(1);
        let want = want.min(self.sqes_in_flight()).min(cq_room).max(1);
        let wake_sqpoll = self.mode == RingMode::Sqpoll && self.ring.submission().need_wakeup();
        SleepTicket {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.ring),
            to_submit: to_submit as u32,
            want: want as u32,
            wake_sqpoll,
        }
    }

    /// Makes a waiter sleeping for `want` CQEs (from the same completion-queue head, which
    /// nobody moves while it sleeps) wake up: posts no-ops until that many are there.
    pub fn wake_sleeper(&mut self, want: usize) -> io::Result<()> {
        let posted = self.ring.completion().len();
        for _ in posted..want {
            let nop = opcode::Nop::new()
                .build()
                .user_data(WAKE_TOKEN << PART_BITS);
            self.push(nop);
        }
        self.after_push();
        self.flush().map(|_| ())
    }

    /// `n` SQEs handed to a sleeping waiter's io_uring_enter were not taken by the kernel:
    /// they go with the next flush.
    pub fn requeue(&mut self, n: u32) {
        self.queued += n as usize;
        self.metrics.sqes_submitted -= u64::from(n);
    }

    /// CQEs posted and not reaped yet.
    pub fn unreaped(&mut self) -> usize {
        self.ring.completion().len()
    }

    /// The ring's submitter, for registrations that do not touch operations in flight
    /// (an eventfd, for instance).
    pub fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }

    /// An upper bound on the CQEs still to come: one per part of each operation in flight.
    fn sqes_in_flight(&self) -> usize {
        self.in_flight
            .values()
            .map(|op| match &op.kind {
                Kind::Write { parts_left, .. } => *parts_left,
                Kind::Sync | Kind::Read(_) | Kind::BackgroundFlush { .. } => 1,
            })
            .sum()
    }

    /// Reaps every posted CQE without blocking. Parts cut short are resubmitted for their
    /// rest; an operation whose last part is done is appended to `out`.
    pub fn reap(&mut self, out: &mut Vec<Finished>) {
        let mut scratch = std::mem::take(&mut self.cqe_scratch);
        loop {
            scratch.clear();
            scratch.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result())),
            );
            if scratch.is_empty() {
                break;
            }
            for &(user_data, result) in &scratch {
                self.complete_part(user_data, result, out);
            }
        }
        self.cqe_scratch = scratch;
    }

    fn complete_part(&mut self, user_data: u64, result: i32, out: &mut Vec<Finished>) {
        let token = user_data >> PART_BITS;
        let index = (user_data & PART_MASK) as usize;
        if token == WAKE_TOKEN {
            return; // a wake-up of a sleeping waiter (`wake_sleeper`), nobody's operation
        }
        let Some(op) = self.in_flight.get_mut(&token) else {
            debug_assert!(false, "CQE for unknown token {token}");
            return;
        };
        if result == -libc::ECANCELED {
            // We never cancel anything. The kernel cancels work that was punted to its
            // io-wq workers when the thread that submitted it exits (the work belongs to
            // the submitting task), which happens whenever a short-lived thread flushed the
            // ring. A write at an explicit offset and a datasync are idempotent: issue the
            // same SQE again from this (live) thread.
            let entry = match &mut op.kind {
                Kind::Sync => datasync_entry(op.file_slot, token),
                Kind::BackgroundFlush { fd, offset, len } => {
                    background_flush_entry(*fd, token, *offset, *len)
                }
                Kind::Write { parts, .. } => {
                    part_entry(&self.pool, op.file_slot, token, index, &parts[index])
                }
                Kind::Read(read) => read.entry(&self.pool, op.file_slot, user_data),
            };
            self.metrics.cancelled_reissued += 1;
            self.push(entry);
            return;
        }
        let finished_result = match &mut op.kind {
            Kind::Sync | Kind::BackgroundFlush { .. } => i64::from(result),
            Kind::Read(read) => match read.complete(result) {
                ReadStep::Continue => {
                    let before = read.private_bytes();
                    let entry = read.entry(&self.pool, op.file_slot, user_data);
                    self.private_bytes += read.private_bytes() - before;
                    self.push(entry);
                    return;
                }
                ReadStep::Finished(r) => r,
            },
            Kind::Write {
                parts,
                parts_left,
                first_error,
                total,
            } => {
                let part = &mut parts[index];
                if result > 0 {
                    part.done += result as usize;
                    if part.done < part.len {
                        // A short write (a signal, a file-size limit, a nearly full disk):
                        // write the rest from where the kernel stopped. If the cause
                        // persists, the next attempt returns the errno instead.
                        let entry = part_entry(&self.pool, op.file_slot, token, index, part);
                        self.metrics.short_writes_continued += 1;
                        self.push(entry);
                        return;
                    }
                } else if result == 0 && part.done < part.len {
                    // No progress on a non-empty write: report it rather than retry forever.
                    first_error.get_or_insert(-libc::EIO);
                } else if result < 0 {
                    first_error.get_or_insert(result);
                }
                match &part.source {
                    Source::Registered(buffer) => self.pool.release(*buffer),
                    Source::Owned(bytes) => self.private_bytes -= bytes.len(),
                }
                *parts_left -= 1;
                if *parts_left > 0 {
                    return;
                }
                match first_error {
                    Some(errno) => i64::from(*errno),
                    None => *total as i64,
                }
            }
        };
        let op = self
            .in_flight
            .remove(&token)
            .expect("operation looked up above");
        let mut written = 0;
        let mut data = None;
        let done = match op.kind {
            Kind::Write { parts, total, .. } => {
                written = written_prefix(&parts);
                Done::Write {
                    offset: parts[0].offset,
                    len: total,
                }
            }
            Kind::Sync => Done::Datasync,
            Kind::Read(read) => {
                self.private_bytes = self.private_bytes.saturating_sub(read.private_bytes());
                let bytes = read.into_data(&mut self.pool);
                if finished_result >= 0 {
                    data = Some(bytes);
                }
                Done::Read
            }
            Kind::BackgroundFlush { .. } => Done::BackgroundFlush,
        };
        if done != Done::BackgroundFlush {
            self.metrics.completed += 1;
            if finished_result < 0 {
                self.metrics.failed += 1;
            } else if let Done::Write { len, .. } = done {
                self.metrics.bytes_written += len as u64;
            }
            self.metrics.latency_ns_total += op.submitted_at.elapsed().as_nanos() as u64;
        }
        out.push(Finished {
            token,
            result: finished_result,
            file_slot: op.file_slot,
            done,
            tag: op.tag,
            written,
            data,
        });
    }
}

/// Completion notification through an eventfd, for callers that wait in an event loop
/// (storage_io.aio) instead of in `io_uring_enter`.
///
/// Plain IORING_REGISTER_EVENTFD: the kernel signals the eventfd for every CQE it posts.
/// IORING_REGISTER_EVENTFD_ASYNC was rejected: it signals only for completions that went
/// through an io-wq worker, so a write finished inline at submission never wakes the
/// waiter (the lost wake-ups of caio issue 69).
impl RingManager {
    pub fn register_eventfd(&self, eventfd: std::os::fd::RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(eventfd)
    }

    pub fn unregister_eventfd(&self) -> io::Result<()> {
        self.ring.submitter().unregister_eventfd()
    }
}

impl Drop for RingManager {
    fn drop(&mut self) {
        // The kernel may still read buffers of operations in flight; unmapping the pool under
        // them would let it write garbage to disk. Wait them out (the backend normally has
        // done so already; this covers unwinding paths).
        let mut sink = Vec::new();
        while !self.in_flight.is_empty() {
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
        let abandoned = !self.in_flight.is_empty();
        if abandoned {
            // The kernel may still read (or, for a read, write) the memory of what is left:
            // private copies and the pool. Leak them rather than free memory under it; the
            // ring's teardown cancels the rest.
            std::mem::forget(std::mem::take(&mut self.in_flight));
            self.pool.leak();
        }
        if !abandoned {
            // Unregistering returns the pinned pages and their RLIMIT_MEMLOCK charge now;
            // left to the ring's teardown, the kernel returns them some time after the ring
            // is closed, and an instance opened right after this one (the usual 8 MiB limit
            // holds half a default pool twice) would find the limit still used up.
            let _ = self.ring.submitter().unregister_buffers();
            let _ = self.ring.submitter().unregister_files();
        }
    }
}
