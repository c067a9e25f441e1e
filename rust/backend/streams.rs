//! Operations on a stream (a pipe, a socket, a terminal): one at a time, in submission
//! order, each whole.
//!
//! A stream has no offsets: whatever reaches the kernel first is what the reader gets first.
//! The file path sends several writes (and the parts of a large write) to the ring at once
//! and lets them land in any order, which is harmless at distinct offsets and scrambles a
//! stream. So a stream's operations wait in this queue and go to the ring one by one, the
//! next when the previous has completed, and each write goes as one SQE from a private copy
//! (continued if short) instead of one SQE per registered buffer.
//!
//! Rejected alternative: IOSQE_IO_LINK chains. A chain is cut by a short write (the kernel
//! cancels the rest), which on a pipe is the ordinary case for a write larger than the pipe
//! buffer, and it needs every member in the ring at once, which a queue does not.
//!
//! Nothing would move a queue along while the caller does not call in (it may be blocked
//! reading the other end of the pipe): while any stream has operations waiting, a pump
//! thread waits for their completions like any other waiter (`waiters::Shared::pump`) and
//! sends each next one. The sync backend runs a stream's operations on a thread too.
//!
//! The queue is bounded, as on the sync backend, so that a stream nobody reads cannot make
//! memory grow without limit: past the bound, `submit_*` raises QueueFullError. One
//! operation of any size is always taken when nothing waits for the descriptor.

use std::collections::VecDeque;

use super::errors::BackendError;
use super::UringBackend;
use crate::manager::STREAM_OFFSET;

/// Queued operations past this many are refused (QueueFullError).
pub const MAX_QUEUED_OPERATIONS: usize = 1024;
/// Queued write bytes past this many are refused (QueueFullError).
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

pub enum StreamOp {
    Write { token: u64, data: Box<[u8]> },
    Datasync { token: u64 },
    Read { token: u64, len: usize },
}

/// The operations of one stream not completed yet: the one in the ring and those waiting
/// behind it. The bound counts them all, the one in the ring included, as the sync backend
/// counts the one its worker performs: the same calls are refused on both.
#[derive(Default)]
pub struct StreamQueue {
    waiting: VecDeque<StreamOp>,
    /// Write bytes of the operations not completed, the one in the ring included.
    queued_bytes: usize,
    /// Write bytes of the operation in the ring.
    in_ring_bytes: usize,
    /// An operation of this stream is in the ring.
    busy: bool,
}

impl StreamQueue {
    /// Refuses an operation carrying `bytes` when the queue is at its bound; the text is
    /// the QueueFullError message. One operation of any size is taken when none is
    /// outstanding.
    pub fn check_room(&self, bytes: usize) -> Result<(), String> {
        let outstanding = self.waiting.len() + usize::from(self.busy);
        if outstanding == 0
            || (outstanding < MAX_QUEUED_OPERATIONS
                && self.queued_bytes + bytes <= MAX_QUEUED_BYTES)
        {
            return Ok(());
        }
        Err(format!(
            "stream queue full: {outstanding} operations ({} bytes) waiting for this \
             descriptor; wait for completions and retry",
            self.queued_bytes
        ))
    }

    /// Takes `op`: returns it back when it may go to the ring now (nothing of this stream
    /// is there), else keeps it until `next`.
    pub fn admit(&mut self, op: StreamOp) -> Option<StreamOp> {
        let bytes = match &op {
            StreamOp::Write { data, .. } => data.len(),
            _ => 0,
        };
        self.queued_bytes += bytes;
        if !self.busy {
            self.busy = true;
            self.in_ring_bytes = bytes;
            return Some(op);
        }
        self.waiting.push_back(op);
        None
    }

    /// Empties the queue behind the operation in the ring (close cancels them).
    pub fn take_waiting(&mut self) -> Vec<StreamOp> {
        self.queued_bytes = self.in_ring_bytes;
        self.waiting.drain(..).collect()
    }

    /// Operations waiting behind the one in the ring.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The operation in the ring finished: the next one to send, if any.
    pub fn finished(&mut self) -> Option<StreamOp> {
        self.queued_bytes -= self.in_ring_bytes;
        let op = self.waiting.pop_front();
        self.in_ring_bytes = match &op {
            Some(StreamOp::Write { data, .. }) => data.len(),
            _ => 0,
        };
        self.busy = op.is_some();
        op
    }
}

// The backend's side of streams: admitting an operation to a stream's queue and sending the
// next one to the ring.

/// The tag of a stream's writes, which have no write sequence.
const STREAM_WRITE_TAG: u64 = u64::MAX;

impl UringBackend {
    /// An operation on a stream: to the ring if nothing of the stream is there, else queued
    /// behind what is (see `streams`).
    pub(super) fn submit_to_stream(
        &mut self,
        slot: u32,
        bytes: usize,
        make: impl FnOnce(u64) -> crate::backend::streams::StreamOp,
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

    pub(super) fn send_stream_op(&mut self, slot: u32, op: crate::backend::streams::StreamOp) {
        use crate::backend::streams::StreamOp;
        match op {
            StreamOp::Write { token, data } => {
                self.manager
                    .submit_owned(token, slot, data, STREAM_OFFSET, STREAM_WRITE_TAG);
            }
            StreamOp::Datasync { token } => {
                self.manager.push_datasync(token, slot, 0);
            }
            StreamOp::Read { token, len } => {
                self.manager
                    .submit_read(token, slot, len, STREAM_OFFSET, false);
            }
        }
    }

    /// Stream operations waiting behind another of their stream (see `streams`).
    pub fn stream_ops_waiting(&self) -> usize {
        self.stream_ops_waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_in_order_and_bounded() {
        let mut q = StreamQueue::default();
        let first = q.admit(StreamOp::Datasync { token: 1 });
        assert!(matches!(first, Some(StreamOp::Datasync { token: 1 })));
        // The one in the ring counts: 1023 more are taken, the 1025th is refused.
        for t in 2..=(MAX_QUEUED_OPERATIONS as u64) {
            assert!(q.check_room(0).is_ok());
            assert!(q.admit(StreamOp::Datasync { token: t }).is_none());
        }
        assert!(q
            .check_room(0)
            .unwrap_err()
            .starts_with("stream queue full"));
        assert!(matches!(
            q.finished(),
            Some(StreamOp::Datasync { token: 2 })
        ));
        let mut empty = StreamQueue::default();
        assert!(
            empty.check_room(MAX_QUEUED_BYTES * 2).is_ok(),
            "one of any size"
        );
        let big = vec![0u8; MAX_QUEUED_BYTES].into_boxed_slice();
        assert!(empty
            .admit(StreamOp::Write {
                token: 1,
                data: big
            })
            .is_some());
        assert!(
            empty.check_room(1).is_err(),
            "the write in the ring counts against the bytes"
        );
        assert!(empty.finished().is_none());
        assert!(empty.check_room(MAX_QUEUED_BYTES * 2).is_ok());
    }
}
