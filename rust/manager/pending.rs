//! The table of operations in flight: what each operation is (a write in parts, a
//! datasync, a read, a background flush), where the bytes of each part live while the
//! kernel reads them, and how far each has got.

use std::time::Instant;

use super::reads::ReadOp;
use super::RingManager;

/// Where the bytes of one part of a write live while the kernel reads them.
pub(super) enum Source {
    /// A registered buffer of the pool (written with `WriteFixed`).
    Registered(u32),
    /// A private copy, for a write larger than the whole pool (written with `Write`).
    Owned(Box<[u8]>),
}

pub(super) struct Part {
    pub(super) source: Source,
    pub(super) offset: u64,
    pub(super) len: usize,
    /// Bytes the kernel has confirmed so far; a short write resubmits from here.
    pub(super) done: usize,
}

pub(super) enum Kind {
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

pub(super) struct Operation {
    pub(super) file_slot: u32,
    /// The caller's own tag, returned with the completion (the backend's write sequence).
    pub(super) tag: u64,
    pub(super) kind: Kind,
    pub(super) submitted_at: Instant,
    /// We asked the kernel to cancel it (`RingManager::cancel`): -ECANCELED is its answer,
    /// not the kernel's doing, and nothing of it is issued again.
    pub(super) cancel_requested: bool,
}

impl RingManager {
    /// Operations handed to the ring (or its backlog) whose completion has not been reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// An upper bound on the CQEs still to come: one per part of each operation in flight.
    pub(super) fn sqes_in_flight(&self) -> usize {
        self.in_flight
            .values()
            .map(|op| match &op.kind {
                Kind::Write { parts_left, .. } => *parts_left,
                Kind::Sync | Kind::Read(_) | Kind::BackgroundFlush { .. } => 1,
            })
            .sum()
    }

    /// As `sqes_in_flight`, without background flushes: the CQEs that can hand a waiter a
    /// token. A waiter that asked the kernel for all CQEs in flight would otherwise sleep
    /// until the file's background fdatasync is done too, and every `wait()` of a long run
    /// of writes would wait for a flush (W1's 100,000 appends: 1.8-1.9 s with flushes
    /// counted, 1.2 s without, on this machine).
    pub(super) fn sqes_with_tokens_in_flight(&self) -> usize {
        self.in_flight
            .values()
            .map(|op| match &op.kind {
                Kind::Write { parts_left, .. } => *parts_left,
                Kind::Sync | Kind::Read(_) => 1,
                Kind::BackgroundFlush { .. } => 0,
            })
            .sum()
    }
}

/// Bytes of a write the kernel wrote from its start before it stopped: every part wholly
/// written up to the first that is not, plus what that one got.
pub(super) fn written_prefix(parts: &[Part]) -> usize {
    let mut written = 0;
    for part in parts {
        written += part.done;
        if part.done < part.len {
            break;
        }
    }
    written
}
