//! `UringStorageIo`'s semantics in plain Rust: the file table, append positions reserved at
//! submission, datasyncs ordered after the writes before them, and completions kept until
//! the caller collects them.
//!
//! Ordering datasyncs. io_uring starts SQEs in any order it likes and an fsync SQE does not
//! wait for write SQEs ahead of it (io_uring_enter(2)). We hold a datasync back in user
//! space until every write submitted before it to the same file has completed, then issue
//! it. The alternatives were weighed:
//! - IOSQE_IO_DRAIN orders the sync after *every* earlier SQE of the ring, other files
//!   included, and stalls every later SQE behind it: one slow file stalls all of them;
//! - IOSQE_IO_LINK chains one SQE to the next, so the writes before a sync would have to be
//!   one serial chain (or one SQE), and a short write breaks the chain and cancels the sync.
//!
//! Holding back costs one extra trip through the completion queue per sync that finds writes
//! still in flight, and none when the writes are already done (the common group-commit case,
//! where the caller waits for its appends before syncing); it orders only what must be
//! ordered, per file, and needs no kernel feature.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::config::IoUringConfig;
use crate::descriptor::{descriptor_for_flushes, descriptor_for_writes};
use crate::handback::Handback;
pub use crate::handback::{ClaimError, Completion};
use crate::manager::{Done, Finished, Metrics, RingManager, TokenMap};
use crate::reads::STREAM_OFFSET;
use crate::ring::Unavailable;

/// What `register_fd` hands out: the instance, the slot in the fixed-file table, and the
/// slot's generation, so a handle kept after `deregister_fd` is recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    pub owner: u64,
    pub slot: u32,
    pub generation: u32,
}

impl std::fmt::Display for Handle {
    /// As Python shows the handle (`IoFd`), since that is where the message is read.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IoFd(owner={}, slot={}, generation={})",
            self.owner, self.slot, self.generation
        )
    }
}

#[derive(Debug)]
pub enum BackendError {
    BadFd(String),
    /// The buffers a write needs are all in flight; `make_room` and retry.
    NoRoom,
    /// No buffers will come back: nothing is in flight to free one.
    BufferExhausted(String),
    /// Too much is waiting to be handed to the kernel; wait for completions and retry.
    QueueFull(String),
    TooManyFiles(String),
    /// A value the call cannot take (a directory to register, for instance).
    Invalid(String),
    Os(io::Error),
}

impl From<io::Error> for BackendError {
    fn from(e: io::Error) -> Self {
        BackendError::Os(e)
    }
}

/// Writes to one file that follow each other byte for byte and have not reached the ring
/// yet, gathered in one registered buffer: they leave as one SQE, and each keeps its token.
///
/// Write combining is what lets per-record calls beat a pwrite loop: the kernel's cost is
/// mostly per write, not per byte, so sixteen 4 KiB appends written as one 64 KiB write
/// cost it about one write. A batch leaves when it is full, when something else is
/// submitted to its file (a datasync, a write elsewhere), and at every flush, poll and wait.
pub struct Batch {
    buffer: u32,
    offset: u64,
    len: usize,
    seq: u64,
    /// (token, length) of each write in it, in submission order; the first token also
    /// names the SQE.
    members: Vec<(u64, usize)>,
    /// A datasync was submitted behind it: nothing more joins, and a caller that waits for
    /// that datasync may write it itself (see `wait`).
    closed: bool,
}

struct OpenFile {
    // Our duplicate: closing it is what deregistering means; the ring refers to it by slot,
    // and a datasync run in the caller's thread uses it directly.
    descriptor: OwnedFd,
    append_position: u64,
    next_write_seq: u64,
    /// Sequence numbers of this file's writes not yet completed (open batch included).
    writes_in_flight: BTreeSet<u64>,
    /// Datasyncs and reads waiting for earlier writes: (token, last write sequence they
    /// cover, what they are).
    held: VecDeque<(u64, u64, Held)>,
    /// A pipe, socket or other descriptor without a file position to write at: its
    /// operations go one at a time, in submission order (see `streams`).
    stream: Option<crate::streams::StreamQueue>,
    /// Tokens on this file not yet completed.
    operations: usize,
    open_batch: Option<Batch>,
    /// Written and completed since the last datasync or background flush, not yet flushed:
    /// the range it spans and how many bytes went into it.
    unflushed: Unflushed,
    /// A background flush of this file is in flight (at most one: while it runs, completed
    /// bytes gather for the next, which then covers them all).
    flush_in_flight: bool,
    /// The descriptor background flushes go through, on an open file description of its own
    /// (`descriptor_for_flushes`); `None`: this file is not flushed in the background.
    flush_descriptor: Option<OwnedFd>,
    /// A regular file: a pwrite in the caller's thread cannot block on it indefinitely, as
    /// on a full pipe, and honours the offset (a pipe or socket would refuse it: ESPIPE).
    regular: bool,
}

/// Completed writes of one file that no datasync or background flush has covered yet.
#[derive(Clone, Copy, Debug, Default)]
struct Unflushed {
    start: u64,
    end: u64,
    bytes: u64,
}

impl Unflushed {
    fn add(&mut self, offset: u64, len: u64) {
        if self.bytes == 0 {
            (self.start, self.end) = (offset, offset + len);
        } else {
            self.start = self.start.min(offset);
            self.end = self.end.max(offset + len);
        }
        self.bytes += len;
    }
}

/// The largest range one ranged fsync SQE takes (its length is a u32), in whole pages.
const MAX_FLUSH_RANGE: u64 = u32::MAX as u64 & !(PAGE as u64 - 1);
const PAGE: usize = crate::config::PAGE_SIZE;

struct FileSlot {
    generation: u32,
    file: Option<OpenFile>,
}

/// `wait()` with less time than this left never runs work in the caller's thread.
pub const IN_CALLER_MIN_BUDGET: Duration = Duration::from_secs(1);

/// An operation held back until the writes before it to its file are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Datasync,
    Read { len: usize, offset: u64 },
}

/// The tag of a stream's writes, which have no write sequence.
const STREAM_WRITE_TAG: u64 = u64::MAX;

/// Held operations past this many (all files) make `submit_*` wait for room.
const MAX_HELD: usize = 16_384;
/// Private copies of writes larger than the pool past this many bytes (or the pool's size,
/// if larger) make `submit_*` wait: as much again as the pool, so a large write never waits
/// for less than a pool's worth in flight.
const MIN_PRIVATE_BYTES: usize = 16 << 20;

/// Work a waiting caller does itself, without the instance's lock (see `UringBackend::
/// take_caller_work`): the syscall runs on memory and descriptors the backend keeps alive
/// until `finish_caller_work`.
pub enum CallerWork {
    Batch {
        slot: u32,
        batch: Batch,
        fd: RawFd,
        bytes: *const u8,
    },
    Datasync {
        token: u64,
        slot: u32,
        fd: RawFd,
    },
}

// SAFETY: the pointer is into a registered buffer that stays lent to this batch (and the
// pool mapped: close waits for caller work) until `finish_caller_work`.
unsafe impl Send for CallerWork {}

/// Bytes written before a write stopped, and the errno that stopped it, if any.
pub type WorkOutcome = (usize, Option<i32>);

impl CallerWork {
    /// The syscall itself; no lock is held.
    pub fn run(&self) -> WorkOutcome {
        match self {
            CallerWork::Batch {
                batch, fd, bytes, ..
            } => {
                // SAFETY: see the `Send` impl: `batch.len` bytes of a lent buffer.
                let bytes = unsafe { std::slice::from_raw_parts(*bytes, batch.len) };
                pwrite_all(*fd, bytes, batch.offset)
            }
            CallerWork::Datasync { fd, .. } => loop {
                // SAFETY: fdatasync on a descriptor the backend keeps open until this work
                // is finished; it touches no memory of ours.
                if unsafe { libc::fdatasync(*fd) } == 0 {
                    break (0, None);
                }
                let err = io::Error::last_os_error();
                // Interrupted (NFS, FUSE): the data is not known durable; ask again.
                if err.kind() != io::ErrorKind::Interrupted {
                    break (0, Some(err.raw_os_error().unwrap_or(libc::EIO)));
                }
            },
        }
    }
}

pub struct UringBackend {
    manager: RingManager,
    owner: u64,
    buffer_size: usize,
    slots: Vec<FileSlot>,
    free_slots: Vec<u32>,
    /// Slots whose file has an open batch, so a flush seals them without scanning all.
    open_batches: Vec<u32>,
    /// The members of sealed batches of more than one write, by the batch's SQE token.
    batch_members: TokenMap<Vec<(u64, usize)>>,
    handback: Handback,
    /// Tokens handed out and not yet completed (ready ones excluded).
    outstanding: usize,
    held_count: usize,
    /// Held operations whose writes have all completed: (token, slot, what), not yet issued.
    released: Vec<(u64, u32, Held)>,
    /// submit_* calls since the last flush/poll/wait/wait_for (what flush() reports).
    submits_since_flush: usize,
    /// Stream operations queued behind another of their stream, all streams (`streams`):
    /// kept as a count because every call looks at it.
    stream_ops_waiting: usize,
    datasyncs_in_caller: u64,
    writes_in_caller: u64,
    counts: OperationCounts,
    finished: Vec<Finished>,
    background_flush_bytes: u64,
    /// Background flushes in flight, all files: they hold no token, but close waits for them.
    flushes_in_flight: usize,
}

/// What the caller's operations (tokens) did, however they travelled: through the ring
/// (one SQE for a whole batch of writes), or in the caller's thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationCounts {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub bytes_written: u64,
}

impl UringBackend {
    /// `config` must already be validated.
    pub fn new(core_id: usize, config: &IoUringConfig, owner: u64) -> Result<Self, Unavailable> {
        let manager = RingManager::new(core_id, config)?;
        Ok(Self {
            manager,
            owner,
            buffer_size: config.buffer_size,
            slots: (0..config.max_files)
                .map(|_| FileSlot {
                    generation: 0,
                    file: None,
                })
                .collect(),
            free_slots: (0..config.max_files).rev().collect(),
            open_batches: Vec::new(),
            batch_members: TokenMap::default(),
            handback: Handback::default(),
            outstanding: 0,
            held_count: 0,
            released: Vec::new(),
            submits_since_flush: 0,
            stream_ops_waiting: 0,
            datasyncs_in_caller: 0,
            writes_in_caller: 0,
            counts: OperationCounts::default(),
            finished: Vec::new(),
            background_flush_bytes: config.background_flush_bytes as u64,
            flushes_in_flight: 0,
        })
    }

    pub fn manager(&self) -> &RingManager {
        &self.manager
    }

    pub fn metrics(&self) -> Metrics {
        self.manager.metrics()
    }

    pub fn operation_counts(&self) -> OperationCounts {
        self.counts
    }

    /// Datasyncs and batches run in the caller's thread inside `wait()`.
    pub fn work_in_caller(&self) -> (u64, u64) {
        (self.datasyncs_in_caller, self.writes_in_caller)
    }

    /// Submitted and not yet handed back.
    pub fn pending_count(&self) -> usize {
        self.outstanding + self.handback.waiting_len()
    }

    /// The submit_* calls since the last call of this (flush, poll, wait, wait_for do).
    pub fn take_submit_count(&mut self) -> usize {
        std::mem::take(&mut self.submits_since_flush)
    }

    /// A token handed to the caller: it is live until handed back.
    fn issued(&mut self, token: u64) -> u64 {
        self.handback.issued(token);
        self.submits_since_flush += 1;
        token
    }

    /// Completions handed over so far; a change tells a waiter there may be something new.
    pub fn deliveries(&self) -> u64 {
        self.handback.deliveries
    }

    pub fn register_fd(&mut self, fd: RawFd) -> Result<Handle, BackendError> {
        if file_type(fd)? == libc::S_IFDIR {
            return Err(BackendError::Invalid(format!(
                "file descriptor {fd} is a directory: register a file, a pipe or a socket"
            )));
        }
        let owned = descriptor_for_writes(fd)?;
        let (size, regular) = size_and_regularity(&owned)?;
        let stream = is_stream(&owned);
        let flush_descriptor = if self.background_flush_bytes > 0 && regular {
            descriptor_for_flushes(owned.as_raw_fd())
        } else {
            None
        };
        let Some(slot) = self.free_slots.pop() else {
            return Err(BackendError::TooManyFiles(format!(
                "all {} file slots are in use: deregister a file or raise IoUringConfig.max_files",
                self.slots.len()
            )));
        };
        if let Err(e) = self.manager.set_file(slot, owned.as_raw_fd()) {
            self.free_slots.push(slot);
            return Err(e.into());
        }
        let entry = &mut self.slots[slot as usize];
        entry.file = Some(OpenFile {
            descriptor: owned,
            append_position: size,
            next_write_seq: 0,
            writes_in_flight: BTreeSet::new(),
            held: VecDeque::new(),
            stream: stream.then(crate::streams::StreamQueue::default),
            operations: 0,
            open_batch: None,
            unflushed: Unflushed::default(),
            flush_in_flight: false,
            flush_descriptor,
            regular,
        });
        Ok(Handle {
            owner: self.owner,
            slot,
            generation: entry.generation,
        })
    }

    fn file_mut(&mut self, handle: Handle) -> Result<&mut OpenFile, BackendError> {
        let owner = self.owner;
        self.slots
            .get_mut(handle.slot as usize)
            .filter(|s| handle.owner == owner && s.generation == handle.generation)
            .and_then(|s| s.file.as_mut())
            .ok_or_else(|| bad_fd(handle, owner))
    }

    fn file_at(&mut self, slot: u32) -> &mut OpenFile {
        self.slots[slot as usize]
            .file
            .as_mut()
            .expect("a file stays registered while it has work in the backend")
    }

    #[cfg(test)]
    fn free_buffers_for_test(&self) -> usize {
        self.manager.free_buffers()
    }

    pub fn check_handle(&mut self, handle: Handle) -> Result<(), BackendError> {
        self.file_mut(handle).map(|_| ())
    }

    /// Whether a write of `len` bytes can be copied in now without waiting for buffers.
    fn has_room(&self, len: usize) -> bool {
        match self.manager.buffers_needed(len) {
            Some(needed) => self.manager.free_buffers() >= needed,
            // Travels from its own copy: bounded in bytes, but one of any size may go when
            // no other is in flight.
            None => {
                let held = self.manager.private_bytes();
                let bound =
                    MIN_PRIVATE_BYTES.max(self.manager.buffer_size() * self.manager.buffer_count());
                held == 0 || held + len <= bound
            }
        }
    }

    pub fn submit_write(
        &mut self,
        handle: Handle,
        data: &[u8],
        offset: u64,
    ) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        self.place(handle, &[data], offset, false)
    }

    /// One write of the concatenation of `parts` at `offset`, under one token.
    pub fn submit_writev(
        &mut self,
        handle: Handle,
        parts: &[&[u8]],
        offset: u64,
    ) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        self.place(handle, parts, offset, false)
    }

    /// One append of the concatenation of `parts`, under one token.
    pub fn submit_appendv(&mut self, handle: Handle, parts: &[&[u8]]) -> Result<u64, BackendError> {
        let position = self.file_mut(handle)?.append_position;
        self.place(handle, parts, position, true)
    }

    pub fn submit_append(&mut self, handle: Handle, data: &[u8]) -> Result<u64, BackendError> {
        // The range is reserved at submission, in submission order, whatever order the
        // kernel finishes the writes in; a failed append leaves its range as a hole, as it
        // does on every backend.
        let position = self.file_mut(handle)?.append_position;
        self.place(handle, &[data], position, true)
    }

    /// Puts a write of `data` (the concatenation of its parts) at `offset`: into the file's
    /// open batch when it continues it, else into a new batch, else (larger than a buffer)
    /// as its own split write.
    fn place(
        &mut self,
        handle: Handle,
        data: &[&[u8]],
        offset: u64,
        append: bool,
    ) -> Result<u64, BackendError> {
        let token = if self.file_at(handle.slot).stream.is_some() {
            let bytes: Box<[u8]> = data.concat().into();
            self.submit_to_stream(handle.slot, bytes.len(), |token| {
                crate::streams::StreamOp::Write { token, data: bytes }
            })?
        } else {
            self.place_in_file(handle, data, offset, append)?
        };
        Ok(self.issued(token))
    }

    fn place_in_file(
        &mut self,
        handle: Handle,
        data: &[&[u8]],
        offset: u64,
        append: bool,
    ) -> Result<u64, BackendError> {
        let len: usize = data.iter().map(|part| part.len()).sum();
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(io::Error::from_raw_os_error(libc::EFBIG).into());
        }
        let slot = handle.slot;
        let buffer_size = self.buffer_size;
        let file = self.slots[slot as usize]
            .file
            .as_mut()
            .expect("handle checked");
        if let Some(batch) = file.open_batch.as_mut() {
            if !batch.closed
                && batch.offset + batch.len as u64 == offset
                && batch.len + len <= buffer_size
            {
                gather(
                    &mut self.manager.buffer_mut(batch.buffer)[batch.len..],
                    data,
                );
                let token = self.manager.reserve_token();
                batch.members.push((token, len));
                batch.len += len;
                if append {
                    file.append_position += len as u64;
                }
                file.operations += 1;
                self.outstanding += 1;
                self.counts.submitted += 1;
                return Ok(token);
            }
        }
        if self.seal(slot) {
            // A full batch goes to the kernel now rather than at the caller's next wait:
            // the kernel writes it (on another core) while the caller fills the next one.
            // One syscall per batch; an error here resurfaces at the next flush or wait,
            // which submit the same queue again.
            let _ = self.manager.flush();
        }
        if !self.has_room(len) {
            return Err(BackendError::NoRoom);
        }
        let file = self.file_at(slot);
        if append {
            file.append_position += len as u64;
        }
        let seq = file.next_write_seq;
        file.next_write_seq += 1;
        file.writes_in_flight.insert(seq);
        file.operations += 1;
        self.outstanding += 1;
        self.counts.submitted += 1;
        if len > buffer_size {
            let token = match data {
                [one] => self.manager.submit_write(slot, one, offset, seq),
                parts => self
                    .manager
                    .submit_write(slot, &parts.concat(), offset, seq),
            };
            return Ok(token);
        }
        let buffer = self.manager.acquire_buffer().expect("room checked above");
        gather(self.manager.buffer_mut(buffer), data);
        let token = self.manager.reserve_token();
        self.file_at(slot).open_batch = Some(Batch {
            buffer,
            offset,
            len,
            seq,
            members: vec![(token, len)],
            closed: false,
        });
        self.open_batches.push(slot);
        Ok(token)
    }

    /// Sends the open batch of the file in `slot`, if it has one, to the ring; says whether
    /// there was one.
    fn seal(&mut self, slot: u32) -> bool {
        let Some(batch) = self.file_at(slot).open_batch.take() else {
            return false;
        };
        if let Some(at) = self.open_batches.iter().position(|&s| s == slot) {
            self.open_batches.swap_remove(at);
        }
        self.send_batch(slot, batch);
        true
    }

    fn send_batch(&mut self, slot: u32, batch: Batch) {
        let token = batch.members[0].0;
        if batch.members.len() > 1 {
            self.batch_members.insert(token, batch.members);
        }
        self.manager.submit_registered(
            token,
            slot,
            batch.buffer,
            batch.offset,
            batch.len,
            batch.seq,
        );
    }

    fn seal_all(&mut self) {
        while let Some(slot) = self.open_batches.pop() {
            if let Some(batch) = self.file_at(slot).open_batch.take() {
                self.send_batch(slot, batch);
            }
        }
    }

    pub fn submit_datasync(&mut self, handle: Handle) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        let token = if self.file_at(handle.slot).stream.is_some() {
            self.submit_to_stream(handle.slot, 0, |token| crate::streams::StreamOp::Datasync {
                token,
            })?
        } else {
            self.submit_held(handle.slot, Held::Datasync)?
        };
        Ok(self.issued(token))
    }

    /// Reads up to `len` bytes at `offset` (ignored on a stream); the completion carries
    /// them. It sees every write to the file submitted before it: it is held back until
    /// they are done, as a datasync is.
    pub fn submit_read(
        &mut self,
        handle: Handle,
        len: usize,
        offset: u64,
    ) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL).into());
        }
        let token = if len == 0 {
            // Nothing to read: complete at once, as the sync backend does.
            let token = self.manager.reserve_token();
            self.counts.submitted += 1;
            self.outstanding += 1;
            self.deliver_read(token, 0, Some(Vec::new()));
            self.outstanding -= 1;
            token
        } else if self.file_at(handle.slot).stream.is_some() {
            self.submit_to_stream(handle.slot, 0, |token| crate::streams::StreamOp::Read {
                token,
                len,
            })?
        } else {
            self.submit_held(handle.slot, Held::Read { len, offset })?
        };
        Ok(self.issued(token))
    }

    /// A datasync or read of a file (not a stream): to the ring now when no earlier write
    /// to the file is unfinished, else held until they are.
    fn submit_held(&mut self, slot: u32, what: Held) -> Result<u64, BackendError> {
        let file = self.file_at(slot);
        let must_hold = !file.writes_in_flight.is_empty();
        if must_hold && self.held_count >= MAX_HELD {
            return Err(BackendError::NoRoom);
        }
        self.outstanding += 1;
        self.counts.submitted += 1;
        let file = self.file_at(slot);
        file.operations += 1;
        if what == Held::Datasync {
            // It flushes everything completed so far: nothing left for the background.
            file.unflushed = Unflushed::default();
        }
        if let Some(batch) = file.open_batch.as_mut() {
            // Not sent yet: the next flush sends it, or a wait() for this writes it.
            batch.closed = true;
        }
        let covers = file.next_write_seq.wrapping_sub(1);
        let token = self.manager.reserve_token();
        if !must_hold {
            self.issue_held(token, slot, what);
            return Ok(token);
        }
        self.file_at(slot).held.push_back((token, covers, what));
        self.held_count += 1;
        Ok(token)
    }

    fn issue_held(&mut self, token: u64, slot: u32, what: Held) {
        match what {
            Held::Datasync => self.manager.push_datasync(token, slot, 0),
            Held::Read { len, offset } => {
                self.manager.submit_read(token, slot, len, offset, true);
            }
        }
    }

    /// An operation on a stream: to the ring if nothing of the stream is there, else queued
    /// behind what is (see `streams`).
    fn submit_to_stream(
        &mut self,
        slot: u32,
        bytes: usize,
        make: impl FnOnce(u64) -> crate::streams::StreamOp,
    ) -> Result<u64, BackendError> {
        let token = self.manager.peek_token();
        let queue = self.file_at(slot).stream.as_mut().expect("a stream");
        queue.check_room(bytes).map_err(BackendError::QueueFull)?;
        let admitted = queue.admit(make(token));
        if admitted.is_none() {
            self.stream_ops_waiting += 1;
        }
        let taken = self.manager.reserve_token();
        debug_assert_eq!(taken, token);
        self.outstanding += 1;
        self.counts.submitted += 1;
        self.file_at(slot).operations += 1;
        if let Some(op) = admitted {
            self.send_stream_op(slot, op);
        }
        Ok(token)
    }

    fn send_stream_op(&mut self, slot: u32, op: crate::streams::StreamOp) {
        use crate::streams::StreamOp;
        match op {
            StreamOp::Write { token, data } => {
                self.manager
                    .submit_owned(token, slot, data, STREAM_OFFSET, STREAM_WRITE_TAG);
            }
            StreamOp::Datasync { token } => self.manager.push_datasync(token, slot, 0),
            StreamOp::Read { token, len } => {
                self.manager
                    .submit_read(token, slot, len, STREAM_OFFSET, false);
            }
        }
    }

    /// Hands queued work (open batches included) to the kernel; returns how many SQEs went.
    pub fn flush(&mut self) -> io::Result<usize> {
        self.seal_all();
        self.manager.flush()
    }

    /// Sends the held operations whose writes are all done to the ring.
    pub fn send_released(&mut self) {
        for (token, slot, what) in std::mem::take(&mut self.released) {
            self.issue_held(token, slot, what);
        }
    }

    /// Reaps what the kernel has finished and turns it into ready completions; held
    /// operations whose writes are now all done move to `released`.
    pub fn collect(&mut self) {
        let mut finished = std::mem::take(&mut self.finished);
        loop {
            finished.clear();
            self.manager.reap(&mut finished);
            if finished.is_empty() {
                break;
            }
            for done in finished.drain(..) {
                self.finish(done);
            }
        }
        self.finished = finished;
    }

    /// One operation the kernel finished.
    fn finish(&mut self, done: Finished) {
        let slot = done.file_slot;
        if done.done == Done::BackgroundFlush {
            self.flushes_in_flight -= 1;
            self.file_at(slot).flush_in_flight = false;
            // Its result is nobody's: an error it met was taken on its own open file
            // description, and every other description of the file (the caller's
            // datasyncs go through ours) still reports it.
            self.start_flush_if_due(slot);
            return;
        }
        let completed = match (self.batch_members.remove(&done.token), done.done) {
            (Some(members), _) => {
                self.deliver_records(&members, done.result, done.written);
                members.len()
            }
            (None, Done::Read) => {
                self.deliver_read(done.token, done.result, done.data);
                1
            }
            (None, Done::Write { len, .. }) => {
                self.deliver_records(&[(done.token, len)], done.result, done.written);
                1
            }
            (None, Done::Datasync | Done::BackgroundFlush) => {
                self.deliver(done.token, done.result, false);
                1
            }
        };
        self.outstanding -= completed;
        let file = self.file_at(slot);
        file.operations -= completed;
        if let Some(queue) = file.stream.as_mut() {
            if let Some(next) = queue.finished() {
                self.stream_ops_waiting -= 1;
                self.send_stream_op(slot, next);
            }
            return;
        }
        if let Done::Write { offset, len } = done.done {
            if done.result >= 0 {
                file.unflushed.add(offset, len as u64);
                self.start_flush_if_due(slot);
            }
            self.write_finished(slot, done.tag);
        }
    }

    /// The records (token, length) of one kernel write, back to back: when it stopped
    /// part-way with `result` < 0 after `written` bytes, the records wholly inside those
    /// bytes are on the file and complete with their length; the rest get the error.
    fn deliver_records(&mut self, members: &[(u64, usize)], result: i64, written: usize) {
        let mut end = 0;
        for &(token, len) in members {
            end += len;
            let ok = result >= 0 || end <= written && len > 0;
            self.deliver(token, if ok { len as i64 } else { result }, true);
        }
    }

    fn deliver_read(&mut self, token: u64, result: i64, data: Option<Vec<u8>>) {
        self.count(result, false);
        self.handback.deliver(Completion {
            token,
            result,
            data: if result >= 0 { data } else { None },
        });
    }

    /// Flushes the file's completed, not yet flushed bytes in the background once there are
    /// `background_flush_bytes` of them: an fdatasync of their range, issued by the backend.
    ///
    /// A datasync at the end of a long run of writes otherwise does all the disk's work
    /// after the writes instead of during them: writing the dirty pages, then flushing the
    /// device's cache, whose cost grows with everything written since its last flush (here
    /// ~1.5 ms per MiB: W5's 49 MiB took ~65 ms to flush after the last write). Flushed a
    /// megabyte at a time as the writes complete, the disk keeps pace with them, and the
    /// caller's datasync finds only the last stretch left.
    ///
    /// It goes through a descriptor on an open file description of its own: an fdatasync
    /// reports a writeback error once per description, and this one must not take the
    /// error from the caller's datasyncs (which use ours) or from the caller's descriptors.
    ///
    /// The page the range ends in is left out: appends are still filling it, and flushing it
    /// now would write it twice, or make the next append wait for it on devices that need
    /// stable pages.
    fn start_flush_if_due(&mut self, slot: u32) {
        let threshold = self.background_flush_bytes;
        let file = self.file_at(slot);
        if threshold == 0 || file.flush_in_flight || file.unflushed.bytes < threshold {
            return;
        }
        let Some(fd) = file.flush_descriptor.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        let start = file.unflushed.start & !(PAGE as u64 - 1);
        let end = (file.unflushed.end & !(PAGE as u64 - 1)).min(start + MAX_FLUSH_RANGE);
        if end <= start {
            return;
        }
        // What remains (the partial last page, or beyond the largest range) waits for the
        // next flush.
        let rest_end = file.unflushed.end;
        file.unflushed = Unflushed::default();
        if rest_end > end {
            file.unflushed.add(end, rest_end - end);
        }
        file.flush_in_flight = true;
        self.flushes_in_flight += 1;
        self.manager
            .submit_background_flush(slot, fd, start, (end - start) as u32);
    }

    /// Hands a finished token to the caller's next poll or wait (or its wait_for), and
    /// counts it.
    fn deliver(&mut self, token: u64, result: i64, is_write: bool) {
        self.count(result, is_write);
        self.handback.deliver(Completion::new(token, result));
    }

    fn count(&mut self, result: i64, is_write: bool) {
        self.counts.completed += 1;
        if result < 0 {
            self.counts.failed += 1;
        } else if is_write {
            self.counts.bytes_written += result as u64;
        }
    }

    /// The write with sequence `seq` of the file in `slot` is done: release the operations
    /// that were waiting for it and nothing else.
    fn write_finished(&mut self, slot: u32, seq: u64) {
        let file = self.slots[slot as usize]
            .file
            .as_mut()
            .expect("a file stays registered while it has operations in flight");
        file.writes_in_flight.remove(&seq);
        let oldest = file.writes_in_flight.first().copied();
        while let Some(&(token, covers, what)) = file.held.front() {
            if oldest.is_some_and(|seq| seq <= covers) {
                break;
            }
            file.held.pop_front();
            self.held_count -= 1;
            self.released.push((token, slot, what));
        }
    }

    /// Takes one piece of work a waiting caller can do itself, without the lock: the
    /// writes of an open batch that a datasync closed (with `every_open`, of any open
    /// batch), or a released datasync. Until `finish_caller_work`, the batch stays among
    /// its file's unfinished writes (so nothing overtakes it and held work stays held) and
    /// its buffer and descriptor stay the backend's.
    ///
    /// io_uring hands a buffered write on this kernel, and every fsync, to an io-wq worker
    /// thread: a hop there and a wake-up back. A caller that would only sleep meanwhile
    /// reaches the same durability point sooner by doing the work itself (measured on W4,
    /// append + datasync + wait, p50 against the pwrite loop's in the same run: 1.22x ->
    /// 1.16x).
    pub fn take_caller_work(&mut self, every_open: bool) -> Option<CallerWork> {
        for index in 0..self.open_batches.len() {
            let slot = self.open_batches[index];
            let file = self.file_at(slot);
            let Some((closed, seq)) = file.open_batch.as_ref().map(|b| (b.closed, b.seq)) else {
                continue;
            };
            // Only the file's oldest unfinished write: an earlier one still in the ring may
            // overlap it, and a pwrite now would land first and be overwritten by it.
            let oldest = file.writes_in_flight.first() == Some(&seq);
            if !file.regular || !oldest || (!closed && !every_open) {
                continue;
            }
            let batch = file.open_batch.take().expect("checked above");
            let fd = file.descriptor.as_raw_fd();
            self.open_batches.swap_remove(index);
            let bytes = self.manager.buffer_mut(batch.buffer).as_ptr();
            return Some(CallerWork::Batch {
                slot,
                batch,
                fd,
                bytes,
            });
        }
        let at = self
            .released
            .iter()
            .position(|&(_, _, what)| what == Held::Datasync)?;
        let (token, slot, _) = self.released.swap_remove(at);
        let fd = self.file_at(slot).descriptor.as_raw_fd();
        Some(CallerWork::Datasync { token, slot, fd })
    }

    /// Accounts for work done by `take_caller_work`'s taker.
    pub fn finish_caller_work(&mut self, work: CallerWork, (written, errno): WorkOutcome) {
        let result = errno.map_or(0, |e| -i64::from(e));
        match work {
            CallerWork::Datasync { token, slot, .. } => {
                self.file_at(slot).operations -= 1;
                self.outstanding -= 1;
                self.datasyncs_in_caller += 1;
                self.deliver(token, result, false);
            }
            CallerWork::Batch { slot, batch, .. } => {
                self.manager.release_buffer(batch.buffer);
                self.deliver_records(&batch.members, result, written);
                self.outstanding -= batch.members.len();
                let file = self.file_at(slot);
                file.operations -= batch.members.len();
                if errno.is_none() && !batch.closed {
                    // A closed batch has its datasync right behind it; this one may not.
                    file.unflushed.add(batch.offset, batch.len as u64);
                    self.start_flush_if_due(slot);
                }
                self.writes_in_caller += 1;
                self.write_finished(slot, batch.seq);
            }
        }
    }

    /// Tokens waiting in open batches, which no completion from the ring can finish.
    pub fn tokens_in_open_batches(&self) -> usize {
        let slots = &self.slots;
        self.open_batches
            .iter()
            .filter_map(|&slot| slots[slot as usize].file.as_ref()?.open_batch.as_ref())
            .map(|batch| batch.members.len())
            .sum()
    }

    /// Never blocks on I/O: submits what is queued and hands back what is ready. Reaps the
    /// kernel's completions only with `may_reap` (see `waiters`: not while another thread
    /// sleeps for them).
    pub fn poll(&mut self, out: &mut Vec<Completion>, may_reap: bool) -> io::Result<()> {
        self.flush()?;
        if may_reap {
            self.collect();
            self.send_released();
            // Operations released by `collect` should not wait for the next call.
            self.manager.flush()?;
        }
        self.handback.take_ready(out);
        Ok(())
    }

    pub fn handback(&mut self) -> &mut Handback {
        &mut self.handback
    }

    /// Tokens not completed and not claimed by a `wait_for`.
    pub fn unclaimed_outstanding(&self) -> usize {
        self.outstanding - self.handback.claimed_unfinished()
    }

    /// Whether a write of `len` bytes (or, with `held`, a held operation) has room now;
    /// `Err` when it never will (nothing in flight can free any).
    pub fn room_for(&self, len: usize, held: bool) -> Result<bool, BackendError> {
        if held {
            return Ok(self.held_count < MAX_HELD);
        }
        if self.has_room(len) {
            return Ok(true);
        }
        if self.manager.in_flight() == 0 && self.tokens_in_open_batches() == 0 {
            return Err(BackendError::BufferExhausted(format!(
                "a write of {len} bytes needs more registered buffers than are free, and \
                 none is in flight to come back"
            )));
        }
        Ok(false)
    }

    /// How many CQEs to wait for when waiting for room for a write of `len`: when the pool
    /// runs dry, a quarter of it, not the one buffer this write needs, or a caller
    /// streaming writes would pay one syscall per write from here on (measured: W1 made
    /// ~0.5 enter calls per append that way).
    pub fn room_want(&self, len: usize) -> usize {
        match self.manager.buffers_needed(len) {
            Some(needed) => needed
                .max(self.manager.buffer_count() / 4)
                .saturating_sub(self.manager.free_buffers())
                .max(1),
            None => 1,
        }
    }

    /// Whether `handle`'s file has nothing in flight (a deregistration may proceed).
    pub fn file_idle(&mut self, handle: Handle) -> Result<bool, BackendError> {
        let file = self.file_mut(handle)?;
        Ok(file.operations == 0 && !file.flush_in_flight)
    }

    /// Closes the backend's descriptor of an idle file (see `file_idle`).
    pub fn finish_deregister(&mut self, handle: Handle) -> Result<(), BackendError> {
        self.file_mut(handle)?;
        self.manager.set_file(handle.slot, -1)?;
        let slot = &mut self.slots[handle.slot as usize];
        slot.file = None; // closes our duplicate
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(handle.slot);
        Ok(())
    }

    /// Stream operations waiting behind another of their stream (see `streams`).
    pub fn stream_ops_waiting(&self) -> usize {
        self.stream_ops_waiting
    }

    /// Nothing in flight any more, background flushes included.
    pub fn drained(&self) -> bool {
        self.outstanding == 0 && self.flushes_in_flight == 0
    }

    /// Whether anything the kernel will complete is in flight.
    pub fn kernel_busy(&self) -> bool {
        self.manager.in_flight() > 0
    }

    /// Releases the files once `drained`. The ring and buffers go when the backend is
    /// dropped.
    pub fn release_files(&mut self) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.file.take().is_some() {
                let _ = self.manager.set_file(index as u32, -1);
            }
        }
    }

    pub fn manager_mut(&mut self) -> &mut RingManager {
        &mut self.manager
    }
}

/// pwrite of all of `bytes` at `offset`, continuing short writes: the bytes written, and
/// the errno that stopped it before the end, if one did.
fn pwrite_all(fd: RawFd, bytes: &[u8], offset: u64) -> WorkOutcome {
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: the pointer and length describe `rest`, which outlives the call.
        let n = unsafe {
            libc::pwrite(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                (offset + done as u64) as i64,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return (done, Some(libc::EIO)),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return (done, Some(err.raw_os_error().unwrap_or(libc::EIO)));
                }
            }
        }
    }
    (done, None)
}

/// Copies `parts` one after another to the start of `target`.
fn gather(target: &mut [u8], parts: &[&[u8]]) {
    let mut at = 0;
    for part in parts {
        target[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
}

fn bad_fd(handle: Handle, owner: u64) -> BackendError {
    if handle.owner != owner {
        BackendError::BadFd(format!("{handle} belongs to another StorageIo instance"))
    } else {
        BackendError::BadFd(format!(
            "{handle} is not registered (deregistered or never issued)"
        ))
    }
}

/// The S_IFMT bits of the file behind `fd`.
fn file_type(fd: RawFd) -> io::Result<libc::mode_t> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success, which is checked before reading it.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so the struct is initialised.
    Ok(unsafe { stat.assume_init() }.st_mode & libc::S_IFMT)
}

/// A descriptor without a file position (pipe, socket, terminal): lseek refuses it.
/// The sync backend draws the same line.
fn is_stream(fd: &OwnedFd) -> bool {
    // SAFETY: lseek to the current position changes nothing; a bad descriptor fails.
    let at = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) };
    at < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESPIPE)
}

/// The file's size, and whether it is a regular file.
fn size_and_regularity(fd: &OwnedFd) -> io::Result<(u64, bool)> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success, which is checked before reading it.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    let regular = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
    Ok((u64::try_from(stat.st_size).unwrap_or(0), regular))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RingMode;
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::Read;

    use crate::waiters::{Shared, WaitError};
    use std::sync::Arc;

    /// The backend as callers use it (behind `Shared`), with the old single-caller calls.
    struct B(Arc<Shared>);

    impl B {
        fn with<R>(&self, f: impl FnOnce(&mut UringBackend) -> R) -> R {
            self.0.access().run(|b| Ok(f(b))).unwrap()
        }
        fn run<R>(
            &self,
            f: impl FnOnce(&mut UringBackend) -> Result<R, BackendError>,
        ) -> Result<R, BackendError> {
            match self.0.access().run(f) {
                Ok(v) => Ok(v),
                Err(WaitError::Backend(e)) => Err(e),
                Err(e) => panic!("{e:?}"),
            }
        }
        fn register_fd(&self, fd: RawFd) -> Result<Handle, BackendError> {
            self.run(|b| b.register_fd(fd))
        }
        fn submit_append(&self, h: Handle, data: &[u8]) -> Result<u64, BackendError> {
            self.run(|b| b.submit_append(h, data))
        }
        fn submit_write(&self, h: Handle, data: &[u8], at: u64) -> Result<u64, BackendError> {
            self.run(|b| b.submit_write(h, data, at))
        }
        fn submit_datasync(&self, h: Handle) -> Result<u64, BackendError> {
            self.run(|b| b.submit_datasync(h))
        }
        fn check_handle(&self, h: Handle) -> Result<(), BackendError> {
            self.run(|b| b.check_handle(h))
        }
        fn flush(&self) -> Result<usize, BackendError> {
            self.run(|b| Ok(b.flush()?))
        }
        fn deregister_fd(&self, h: Handle) -> Result<(), WaitError> {
            self.0.deregister_fd(h)
        }
        fn make_room(&self, len: usize) -> Result<(), WaitError> {
            self.0.make_room(len, false)
        }
        fn close(&self) -> Result<(), WaitError> {
            self.0.close()
        }
        fn wait(
            &self,
            min: usize,
            timeout: Option<Duration>,
            out: &mut Vec<(u64, i64)>,
        ) -> Result<(), WaitError> {
            let deadline = timeout.map(|t| std::time::Instant::now() + t);
            let mut got = Vec::new();
            let result = self.0.wait(min, deadline, &mut got);
            out.extend(got.into_iter().map(|c| (c.token, c.result)));
            result
        }
    }

    fn backend(config: IoUringConfig) -> B {
        B(Shared::new(
            UringBackend::new(0, &config, 7).expect("io_uring is available on the test machine"),
        ))
    }

    fn small_standard() -> IoUringConfig {
        IoUringConfig {
            mode: RingMode::Standard,
            ring_entries: 8,
            buffer_size: 4096,
            buffer_count: 8,
            ..IoUringConfig::default()
        }
    }

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("storage_io_rs_{}_{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&dir)
            .unwrap();
        (dir, file)
    }

    fn drain(b: &B) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        b.wait(usize::MAX, None, &mut out).unwrap();
        out
    }

    /// Submits, waiting for buffers as the Python layer does.
    fn append(b: &B, h: Handle, data: &[u8]) -> u64 {
        loop {
            match b.submit_append(h, data) {
                Err(BackendError::NoRoom) => b.make_room(data.len()).unwrap(),
                other => return other.unwrap(),
            }
        }
    }

    #[test]
    fn tokens_are_unique_across_kinds_and_each_completes_once() {
        let b = backend(small_standard());
        let (path, file) = temp_file("tokens");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        let mut tokens = Vec::new();
        for i in 0..200 {
            tokens.push(append(&b, h, &[i as u8; 100]));
            if i % 7 == 0 {
                tokens.push(b.submit_datasync(h).unwrap());
            }
        }
        let mut done: Vec<u64> = drain(&b).iter().map(|c| c.0).collect();
        let mut sorted = tokens.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), tokens.len(), "a token was handed out twice");
        done.sort_unstable();
        assert_eq!(done, sorted, "every token completes exactly once");
        assert_eq!(b.with(|b| b.pending_count()), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn long_runs_of_appends_are_flushed_and_close_waits_for_the_flush() {
        let b = backend(IoUringConfig {
            background_flush_bytes: 8192,
            ..small_standard()
        });
        let (path, file) = temp_file("background_flush");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        // 100-byte appends: completed ranges end inside a page, which must stay out.
        for i in 0..1000 {
            append(&b, h, &[i as u8; 100]);
            if i % 100 == 99 {
                drain(&b);
            }
        }
        assert!(b.with(|b| b.metrics()).background_flushes >= 1);
        b.close().unwrap(); // returns only once the background flushes are done
        let mut got = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut got).unwrap();
        let want: Vec<u8> = (0..1000).flat_map(|i| [i as u8; 100]).collect();
        assert_eq!(got, want);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_waiting_caller_never_writes_a_batch_ahead_of_an_earlier_write() {
        let b = backend(small_standard());
        let (path, file) = temp_file("caller_order");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        b.submit_write(h, &[1; 100], 0).unwrap();
        // Not contiguous with the first: the first goes to the ring, this one opens a batch.
        b.submit_write(h, &[2; 100], 0).unwrap();
        assert!(
            b.with(|b| b.take_caller_work(true).is_none()),
            "the first write is still in flight: a pwrite now could land before it"
        );
        assert_eq!(drain(&b).len(), 2);
        let mut got = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, vec![2; 100]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn datasync_completes_after_every_earlier_write_of_its_file() {
        let b = backend(IoUringConfig {
            buffer_count: 64,
            ..small_standard()
        });
        let (path, file) = temp_file("ordering");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        for round in 0..20 {
            let writes: Vec<u64> = (0..6)
                .map(|_| append(&b, h, &vec![round as u8; 20_000]))
                .collect();
            let sync = b.submit_datasync(h).unwrap();
            let order: Vec<u64> = drain(&b).iter().map(|c| c.0).collect();
            let sync_at = order.iter().position(|&t| t == sync).unwrap();
            for w in writes {
                let at = order.iter().position(|&t| t == w).unwrap();
                assert!(
                    at < sync_at,
                    "write {w} completed after the datasync {sync}"
                );
            }
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn held_datasync_is_issued_only_when_its_writes_are_done() {
        let b = backend(small_standard());
        let (path, file) = temp_file("held");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        append(&b, h, b"abc");
        b.submit_datasync(h).unwrap();
        assert_eq!(
            b.with(|b| b.held_count),
            1,
            "a datasync behind an unfinished write must be held back"
        );
        assert_eq!(
            b.with(|b| b.manager.in_flight()),
            0,
            "the closed batch waits for a flush or a wait"
        );
        b.flush().unwrap();
        assert_eq!(
            b.with(|b| b.manager.in_flight()),
            1,
            "only the write may be in the ring"
        );
        drain(&b);
        assert_eq!(b.with(|b| b.held_count), 0);
        // No write in flight now: the next datasync goes straight to the ring.
        b.submit_datasync(h).unwrap();
        assert_eq!(b.with(|b| b.held_count), 0);
        drain(&b);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_waiting_caller_writes_and_syncs_a_closed_batch_itself() {
        let b = backend(small_standard());
        let (path, file) = temp_file("in_caller");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        let writes = [append(&b, h, b"one "), append(&b, h, b"two")];
        let sync = b.submit_datasync(h).unwrap();
        let mut out = Vec::new();
        b.wait(3, None, &mut out).unwrap();
        assert_eq!(out, vec![(writes[0], 4), (writes[1], 3), (sync, 0)]);
        assert_eq!(b.with(|b| b.work_in_caller()), (1, 1));
        assert_eq!(
            b.with(|b| b.manager.metrics()).submitted,
            0,
            "nothing went through the ring"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"one two");
        // With a short timeout the same work goes through the ring instead.
        let late = append(&b, h, b"!");
        let sync = b.submit_datasync(h).unwrap();
        let mut out = Vec::new();
        while out.len() < 2 {
            b.wait(2, Some(Duration::from_millis(100)), &mut out)
                .unwrap();
        }
        assert_eq!(out, vec![(late, 1), (sync, 0)]);
        assert_eq!(b.with(|b| b.work_in_caller()), (1, 1));
        assert_eq!(b.with(|b| b.manager.metrics()).submitted, 2);
        assert_eq!(std::fs::read(&path).unwrap(), b"one two!");
        assert_eq!(
            b.with(|b| b.free_buffers_for_test()),
            8,
            "every buffer came back"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn appends_land_back_to_back_and_large_writes_split_under_one_token() {
        let b = backend(small_standard());
        let (path, mut file) = temp_file("appends");
        std::io::Write::write_all(&mut file, b"head").unwrap();
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        let mut expected = b"head".to_vec();
        let mut tokens = Vec::new();
        for i in 0..50usize {
            // 0 bytes up to five buffers' worth: exercises splitting and the empty write.
            let chunk = vec![(i % 251) as u8; (i * 977) % (5 * 4096)];
            tokens.push((append(&b, h, &chunk), chunk.len()));
            expected.extend_from_slice(&chunk);
        }
        let results: HashMap<u64, i64> = drain(&b).into_iter().collect();
        for (token, len) in tokens {
            assert_eq!(
                results[&token], len as i64,
                "token {token} reported a partial length"
            );
        }
        let mut actual = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut actual).unwrap();
        assert_eq!(actual, expected);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_write_larger_than_the_whole_pool_travels_from_its_own_copy() {
        let b = backend(small_standard());
        let (path, file) = temp_file("huge");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let token = b.submit_write(h, &data, 10).unwrap();
        let done = drain(&b);
        assert_eq!(done, vec![(token, data.len() as i64)]);
        let actual = std::fs::read(&path).unwrap();
        assert_eq!(&actual[10..], &data[..]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn deregister_keeps_other_files_completions() {
        let b = backend(small_standard());
        let (path_a, a) = temp_file("dereg_a");
        let (path_b, f) = temp_file("dereg_b");
        let ha = b.register_fd(a.as_raw_fd()).unwrap();
        let hb = b.register_fd(f.as_raw_fd()).unwrap();
        let ta = append(&b, ha, b"aaaa");
        let tb = append(&b, hb, b"bbbb");
        b.deregister_fd(ha).unwrap();
        assert!(matches!(b.submit_datasync(ha), Err(BackendError::BadFd(_))));
        let mut tokens: Vec<u64> = drain(&b).iter().map(|c| c.0).collect();
        tokens.sort_unstable();
        assert_eq!(tokens, vec![ta, tb]);
        // The slot is reused with a new generation; the old handle stays dead.
        let hc = b.register_fd(a.as_raw_fd()).unwrap();
        assert_eq!(hc.slot, ha.slot);
        assert_ne!(hc.generation, ha.generation);
        assert!(matches!(b.check_handle(ha), Err(BackendError::BadFd(_))));
        std::fs::remove_file(path_a).unwrap();
        std::fs::remove_file(path_b).unwrap();
    }

    #[test]
    fn full_completion_queue_loses_nothing() {
        let b = backend(IoUringConfig {
            ring_entries: 1,
            buffer_count: 256,
            ..small_standard()
        });
        let (path, file) = temp_file("overflow");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        let tokens: Vec<u64> = (0..256).map(|_| append(&b, h, b"x")).collect();
        b.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50)); // let the kernel post more CQEs than fit
        let done = drain(&b);
        assert_eq!(done.len(), tokens.len());
        assert!(done.iter().all(|&(_, r)| r == 1));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn handles_of_another_instance_are_refused() {
        let b = backend(small_standard());
        let (path, file) = temp_file("foreign");
        let h = b.register_fd(file.as_raw_fd()).unwrap();
        let foreign = Handle {
            owner: h.owner + 1,
            ..h
        };
        assert!(matches!(
            b.submit_datasync(foreign),
            Err(BackendError::BadFd(_))
        ));
        std::fs::remove_file(path).unwrap();
    }
}
