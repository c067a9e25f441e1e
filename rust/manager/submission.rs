//! Submission: building the SQE of each part of an operation, entering the operation in
//! the pending table, queueing the SQE (into a backlog when the submission queue is full),
//! and handing what is queued to the kernel. The `unsafe` of pushing an SQE is here and
//! only here.

use io_uring::{opcode, squeue, types};
use std::io;
use std::time::Instant;

use super::pending::{Kind, Operation, Part, Source};
use super::reads::{ReadOp, STREAM_OFFSET};
use super::tokens::PART_BITS;
use super::RingManager;
use crate::buffers::BufferPool;
use crate::config::RingMode;

/// The kernel moves at most this many bytes in one write (MAX_RW_COUNT); longer parts are
/// continued like a short write.
pub(super) const MAX_BYTES_PER_SQE: usize = 0x7fff_f000;

impl RingManager {
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
        let read = match buffer {
            Some(buffer) => {
                // From here until the read finishes the kernel writes into it: no
                // `buffer_mut` can reach it (`BufferPool::lend_to_kernel`).
                self.pool.lend_to_kernel(buffer);
                ReadOp::registered(buffer, offset, len)
            }
            None => ReadOp::private(offset, len),
        };
        self.admit(token, file_slot, 0, Kind::Read(read));
        let op = self.in_flight.get_mut(&token).expect("admitted above");
        let Kind::Read(read) = &mut op.kind else {
            unreachable!("admitted as a read")
        };
        let entry = read.entry(&self.pool, file_slot, token << PART_BITS);
        self.private_bytes += read.private_bytes();
        self.push(entry);
        self.metrics.submitted += 1;
        self.after_push();
    }

    /// Enters an operation in the pending table. Every SQE is pushed only after its
    /// operation is there: the table is what keeps the memory an SQE points at alive and
    /// unaliased until its CQE is reaped, and what a CQE (or a refused SQE) is looked up in.
    pub(super) fn admit(&mut self, token: u64, file_slot: u32, tag: u64, kind: Kind) {
        let op = Operation {
            file_slot,
            tag,
            kind,
            submitted_at: Instant::now(),
            cancel_requested: false,
        };
        let previous = self.in_flight.insert(token, op);
        assert!(previous.is_none(), "token {token} is already in flight");
    }

    /// Queues the SQEs of every part of a write and tracks it until its last part is done.
    pub(super) fn issue_write(
        &mut self,
        token: u64,
        file_slot: u32,
        parts: Vec<Part>,
        total: usize,
        tag: u64,
    ) {
        for part in &parts {
            match &part.source {
                Source::Owned(bytes) => self.private_bytes += bytes.len(),
                // The kernel reads it from the first SQE on: no more `buffer_mut`.
                Source::Registered(buffer) => self.pool.lend_to_kernel(*buffer),
            }
        }
        let count = parts.len();
        let kind = Kind::Write {
            parts,
            parts_left: count,
            first_error: None,
            total,
        };
        self.admit(token, file_slot, tag, kind);
        for index in 0..count {
            let entry = {
                let op = &self.in_flight[&token];
                let Kind::Write { parts, .. } = &op.kind else {
                    unreachable!("admitted as a write")
                };
                part_entry(&self.pool, file_slot, token, index, &parts[index])
            };
            self.push(entry);
        }
        self.metrics.submitted += 1;
        self.after_push();
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

    pub(super) fn registered_part(&mut self, chunk: &[u8], offset: u64) -> Part {
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
}

impl RingManager {
    /// Queues an fdatasync of the file in `file_slot`. Ordering against earlier writes is
    /// the backend's job; this only issues it.
    pub fn submit_datasync(&mut self, file_slot: u32, tag: u64) -> u64 {
        let token = self.take_token();
        self.push_datasync(token, file_slot, tag);
        token
    }

    /// Queues the fdatasync `token`; returns its place (see `kernel_has_taken`).
    pub fn push_datasync(&mut self, token: u64, file_slot: u32, tag: u64) -> u64 {
        self.admit(token, file_slot, tag, Kind::Sync);
        let place = self.push(datasync_entry(file_slot, token));
        self.metrics.submitted += 1;
        self.after_push();
        place
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
        self.admit(
            token,
            file_slot,
            0,
            Kind::BackgroundFlush { fd, offset, len },
        );
        self.push(background_flush_entry(fd, token, offset, len));
        self.metrics.background_flushes += 1;
        self.after_push();
    }

    /// Places `entry` in the queue (or the backlog behind it); returns its place in the
    /// order the kernel takes entries (see `kernel_has_taken`). The entry's operation is in
    /// the pending table already (`admit`), or it is a no-op or a cancellation of ours.
    pub(super) fn push(&mut self, entry: squeue::Entry) -> u64 {
        let place = self.placed;
        self.placed += 1;
        if self.backlog.is_empty() {
            let mut queue = self.ring.submission();
            // SAFETY: every buffer an SQE points at (a registered buffer or an owned copy)
            // belongs to an operation in `in_flight` (`admit` ran first), which keeps it
            // alive and unaliased until the CQE of that part is reaped or the entry is taken
            // back (`Unconsumed`); the fixed file slot stays registered until the backend
            // sees no operation on it.
            if unsafe { queue.push(&entry) }.is_ok() {
                self.metrics.sqes_submitted += 1;
                return place;
            }
        }
        self.backlog.push_back(entry);
        place
    }

    /// Whether the kernel has taken the entry placed at `place` from the submission queue
    /// (and may have started it). An entry still in the queue or the backlog starts after
    /// this call, whatever happens next.
    pub fn kernel_has_taken(&mut self, place: u64) -> bool {
        let waiting = self.ring.submission().len() + self.backlog.len();
        self.placed - waiting as u64 > place
    }

    pub(super) fn after_push(&mut self) {
        // With SQPOLL the kernel thread takes entries as they land; only a sleeping thread
        // needs a wake-up call, which `submit` makes only when IORING_SQ_NEED_WAKEUP is set.
        // A wake-up that fails is made again by the next call that finds the thread asleep.
        // In standard mode entries wait for the next flush, so a batch costs one syscall.
        if self.mode == RingMode::Sqpoll && self.backlog.is_empty() {
            let _ = self.ring.submit();
        }
    }

    /// Hands every queued SQE (backlog included) to the kernel. Returns how many SQEs the
    /// queue held when the kernel was last asked to take them.
    ///
    /// A refused submission strands nothing. EINTR is retried at once. EAGAIN and EBUSY
    /// leave the entries in the queue, where the next enter that submits (the next flush,
    /// poll or wait) carries them; `unsubmitted` tells a waiter not to sleep on them. Any
    /// other error takes them back and completes their operations with it (`refuse`), and is
    /// not raised: it is in those completions.
    pub fn flush(&mut self) -> io::Result<usize> {
        let mut handed = 0;
        loop {
            self.move_backlog();
            let waiting = self.ring.submission().len();
            // Nothing to hand over: skip the syscall, unless completions wait in the kernel's
            // overflow list, which only an enter moves back into the ring.
            if waiting == 0 && !self.ring.submission().cq_overflow() {
                return Ok(handed);
            }
            handed += waiting;
            match self.enter(0, None) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if is_transient(&e) => return Ok(handed),
                Err(e) => {
                    self.refuse(&e);
                    return Ok(handed);
                }
            }
            if self.backlog.is_empty() {
                return Ok(handed);
            }
            if self.mode == RingMode::Sqpoll {
                // The kernel thread has not consumed the queue yet; sleep until it has room.
                self.metrics.enter_calls += 1;
                match self.ring.submitter().squeue_wait() {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(_) => return Ok(handed),
                }
            } else if self.ring.submission().len() == waiting {
                // The kernel took none of them: try again at the next call, not in a loop.
                return Ok(handed);
            }
        }
    }

    /// SQEs queued that no io_uring_enter has handed to the kernel yet: in the backlog, and
    /// in STANDARD mode in the queue (under SQPOLL the kernel's thread takes those itself).
    /// A waiter must not sleep for completions while there are any: they have not started.
    pub fn unsubmitted(&mut self) -> usize {
        let queued = match self.mode {
            RingMode::Standard => self.ring.submission().len(),
            RingMode::Sqpoll => 0,
        };
        self.backlog.len() + queued
    }

    /// io_uring_enter failed with `error`, which will not go away by asking again: the
    /// entries it did not take will not be taken. In STANDARD mode they are taken back
    /// from the queue and their operations complete with the error at the next reap (the
    /// backlog, which no enter was given, goes with the next flush). Under SQPOLL an enter
    /// only wakes the kernel's thread or waits, so nothing is taken back: the thread takes
    /// the entries when it is woken again.
    pub(super) fn refuse(&mut self, error: &io::Error) {
        if self.mode == RingMode::Sqpoll {
            return;
        }
        let errno = error.raw_os_error().unwrap_or(libc::EIO);
        let taken_back = self.unconsumed.take_back();
        self.metrics.sqes_submitted -= taken_back.len() as u64;
        self.refused
            .extend(taken_back.into_iter().map(|user_data| (user_data, -errno)));
    }

    pub(super) fn move_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            let mut queue = self.ring.submission();
            // SAFETY: as in `push`: the entry's buffer and file slot belong to an operation
            // still in flight.
            if unsafe { queue.push(entry) }.is_err() {
                break;
            }
            drop(queue);
            self.backlog.pop_front();
            self.metrics.sqes_submitted += 1;
        }
    }
}

/// An io_uring_enter error after which the same call may succeed: the kernel was short of
/// memory for requests (EAGAIN), wants its completion queue drained first (EBUSY), or a
/// signal came (EINTR). The entries it did not take are sent again.
pub(super) fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::EINTR)
    )
}

pub(super) fn datasync_entry(file_slot: u32, token: u64) -> squeue::Entry {
    opcode::Fsync::new(types::Fixed(file_slot))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(token << PART_BITS)
}

/// The kernel takes an fsync range as [offset, offset + len] with the end included
/// (io_uring's IORING_OP_FSYNC hands `offset + len` to vfs_fsync_range as its last byte), so
/// `len` bytes starting at `offset` are `len - 1` here.
pub(super) fn background_flush_entry(
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
pub(super) fn part_entry(
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
