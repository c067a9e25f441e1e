//! Reaping: every CQE finds its operation and part by its user_data; a short write is
//! continued from where the kernel stopped, work the kernel cancelled is reissued, and an
//! operation whose last part is done leaves the pending table as a `Finished`.

use io_uring::{opcode, squeue};
use std::time::Instant;

use super::pending::{written_prefix, Kind, Operation, Source};
use super::reads::ReadStep;
use super::submission::{background_flush_entry, datasync_entry, part_entry};
use super::tokens::{CANCEL_USER_DATA, PART_BITS, PART_MASK, WAKE_TOKEN};
use super::{Metrics, RingManager};
use crate::buffers::BufferPool;

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

impl RingManager {
    /// Reaps every posted CQE without blocking. Parts cut short are resubmitted for their
    /// rest; an operation whose last part is done is appended to `out`.
    pub fn reap(&mut self, out: &mut Vec<Finished>) {
        // Entries a failed io_uring_enter refused (`refuse`) first: their parts complete
        // with its errno, as if the kernel had failed them.
        for (user_data, result) in std::mem::take(&mut self.refused) {
            self.complete_part(user_data, result, out, true);
        }
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
                self.complete_part(user_data, result, out, false);
            }
        }
        self.cqe_scratch = scratch;
    }

    /// One CQE (or, `refused`, one SQE the kernel never took): the part it names is done,
    /// cut short, failed or cancelled.
    pub(super) fn complete_part(
        &mut self,
        user_data: u64,
        result: i32,
        out: &mut Vec<Finished>,
        refused: bool,
    ) {
        let token = user_data >> PART_BITS;
        let index = (user_data & PART_MASK) as usize;
        if token == WAKE_TOKEN {
            return; // a wake-up (`wake_sleeper`) or a cancellation (`cancel`): nobody's
        }
        let Some(op) = self.in_flight.get_mut(&token) else {
            debug_assert!(false, "CQE for unknown token {token}");
            return;
        };
        let mut books = Books {
            pool: &mut self.pool,
            metrics: &mut self.metrics,
            private_bytes: &mut self.private_bytes,
        };
        let ours = op.cancel_requested || refused;
        let mut outcome = if result == -libc::ECANCELED && !ours {
            reissue_cancelled(&mut books, op, token, index, user_data)
        } else {
            advance(&mut books, op, token, index, user_data, result)
        };
        if ours && matches!(outcome, PartOutcome::Resubmit(_)) {
            // Cut short after we asked for a cancellation: what is left of it is cancelled.
            outcome = advance(&mut books, op, token, index, user_data, -libc::ECANCELED);
        }
        match outcome {
            PartOutcome::Resubmit(entry) => {
                self.push(entry);
            }
            PartOutcome::Waiting => {}
            PartOutcome::Finished(finished_result) => {
                self.finish_operation(token, finished_result, out);
            }
        }
    }

    /// Asks the kernel to cancel every operation in flight whose file slot `select` picks
    /// (IORING_OP_ASYNC_CANCEL, one per SQE of it): each completes with -ECANCELED if the
    /// kernel could stop it, or as it would have otherwise (a write the kernel is already
    /// doing on a regular file, say). Nothing of a cancelled operation is issued again.
    /// Returns how many operations were asked for.
    pub fn cancel(&mut self, mut select: impl FnMut(u32) -> bool) -> usize {
        let mut entries = Vec::new();
        let mut asked = 0;
        for (&token, op) in self.in_flight.iter_mut() {
            if op.cancel_requested || !select(op.file_slot) {
                continue;
            }
            op.cancel_requested = true;
            asked += 1;
            let parts = match &op.kind {
                Kind::Write { parts, .. } => parts.len(),
                Kind::Sync | Kind::Read(_) | Kind::BackgroundFlush { .. } => 1,
            };
            entries.extend((0..parts as u64).map(|index| {
                opcode::AsyncCancel::new(token << PART_BITS | index)
                    .build()
                    .user_data(CANCEL_USER_DATA)
            }));
        }
        // Each goes behind the SQEs of the operation it names (the queue and the backlog
        // keep their order), so the kernel has taken those when it looks for them.
        for entry in entries {
            self.push(entry);
        }
        self.after_push();
        asked
    }

    /// Whether every operation still in flight is one `cancel` asked for.
    pub fn only_cancelled_in_flight(&self) -> bool {
        self.in_flight.values().all(|op| op.cancel_requested)
    }

    /// The operation under `token` is done: out of the pending table, its read's bytes
    /// taken, counted, and handed on as a `Finished`.
    fn finish_operation(&mut self, token: u64, finished_result: i64, out: &mut Vec<Finished>) {
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
        self.count_finished(done, finished_result, op.submitted_at);
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

    /// The metrics of a finished operation; a background flush has its own counter.
    fn count_finished(&mut self, done: Done, finished_result: i64, submitted_at: Instant) {
        if done != Done::BackgroundFlush {
            self.metrics.completed += 1;
            if finished_result < 0 {
                self.metrics.failed += 1;
            } else if let Done::Write { len, .. } = done {
                self.metrics.bytes_written += len as u64;
            }
            self.metrics.latency_ns_total += submitted_at.elapsed().as_nanos() as u64;
        }
    }
}

/// What one CQE means for the operation it belongs to.
enum PartOutcome {
    /// Some of it is still to do: queue this SQE (a cancelled part reissued, a short write
    /// or read continued).
    Resubmit(squeue::Entry),
    /// Other parts of it are still in flight.
    Waiting,
    /// It is done, with this result (bytes, or a negative errno).
    Finished(i64),
}

/// The manager's books that a completing part updates, borrowed apart from the pending
/// table that holds the part.
struct Books<'a> {
    pool: &'a mut BufferPool,
    metrics: &'a mut Metrics,
    private_bytes: &'a mut usize,
}

/// Work we did not ask to cancel (see `cancel`). The kernel cancels work that was punted to
/// its io-wq workers when the thread that submitted it exits (the work belongs to the submitting task), which
/// happens whenever a short-lived thread flushed the ring. A write at an explicit offset
/// and a datasync are idempotent: issue the same SQE again from this (live) thread.
fn reissue_cancelled(
    books: &mut Books<'_>,
    op: &mut Operation,
    token: u64,
    index: usize,
    user_data: u64,
) -> PartOutcome {
    let entry = match &mut op.kind {
        Kind::Sync => datasync_entry(op.file_slot, token),
        Kind::BackgroundFlush { fd, offset, len } => {
            background_flush_entry(*fd, token, *offset, *len)
        }
        Kind::Write { parts, .. } => {
            part_entry(books.pool, op.file_slot, token, index, &parts[index])
        }
        Kind::Read(read) => read.entry(books.pool, op.file_slot, user_data),
    };
    books.metrics.cancelled_reissued += 1;
    PartOutcome::Resubmit(entry)
}

/// A part's result (not a cancellation): a read or a write continued when short, a
/// write's part accounted (its buffer back, its error kept) until its last part is in.
fn advance(
    books: &mut Books<'_>,
    op: &mut Operation,
    token: u64,
    index: usize,
    user_data: u64,
    result: i32,
) -> PartOutcome {
    match &mut op.kind {
        Kind::Sync | Kind::BackgroundFlush { .. } => PartOutcome::Finished(i64::from(result)),
        Kind::Read(read) => match read.complete(result) {
            ReadStep::Continue => {
                let before = read.private_bytes();
                let entry = read.entry(books.pool, op.file_slot, user_data);
                *books.private_bytes += read.private_bytes() - before;
                PartOutcome::Resubmit(entry)
            }
            ReadStep::Finished(r) => PartOutcome::Finished(r),
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
                    let entry = part_entry(books.pool, op.file_slot, token, index, part);
                    books.metrics.short_writes_continued += 1;
                    return PartOutcome::Resubmit(entry);
                }
            } else if result == 0 && part.done < part.len {
                // No progress on a non-empty write: report it rather than retry forever.
                first_error.get_or_insert(-libc::EIO);
            } else if result < 0 {
                first_error.get_or_insert(result);
            }
            match &part.source {
                Source::Registered(buffer) => books.pool.release(*buffer),
                Source::Owned(bytes) => *books.private_bytes -= bytes.len(),
            }
            *parts_left -= 1;
            if *parts_left > 0 {
                return PartOutcome::Waiting;
            }
            PartOutcome::Finished(match first_error {
                Some(errno) => i64::from(*errno),
                None => *total as i64,
            })
        }
    }
}
