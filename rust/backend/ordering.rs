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
//! ordered, per file, and needs no kernel feature. Reads are held the same way (`reads`).

use super::background_flush::Unflushed;
use super::errors::BackendError;
use super::files::{Handle, HeldOperation};
use super::UringBackend;

/// An operation held back until the writes before it to its file are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Datasync,
    Read { len: usize, offset: u64 },
}

/// Held operations past this many (all files) make `submit_*` wait for room.
pub(super) const MAX_HELD: usize = 16_384;

impl UringBackend {
    pub fn submit_datasync(&mut self, handle: Handle) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        self.wait_behind_queue()?;
        let token = self.place_datasync(handle)?;
        Ok(self.issued(token))
    }

    /// The datasync of `handle`'s file (checked), its token not issued yet.
    pub(super) fn place_datasync(&mut self, handle: Handle) -> Result<u64, BackendError> {
        if self.file_at(handle.slot).stream.is_some() {
            self.submit_to_stream(handle.slot, 0, |token| {
                crate::backend::streams::StreamOp::Datasync { token }
            })
        } else {
            self.submit_held(handle.slot, Held::Datasync)
        }
    }

    /// A datasync or read of a file (not a stream): to the ring now when no earlier write
    /// to the file (through this registration or another of the same file) is unfinished,
    /// else held until they are.
    pub(super) fn submit_held(&mut self, slot: u32, what: Held) -> Result<u64, BackendError> {
        let siblings = self.file_at(slot).siblings.clone();
        let covers_siblings: Vec<(u32, u64)> = siblings
            .iter()
            .filter_map(|&other| {
                let file = self.file_at(other);
                let last = file.writes_in_flight.last().copied()?;
                Some((other, last))
            })
            .collect();
        let file = self.file_at(slot);
        let must_hold = !file.writes_in_flight.is_empty() || !covers_siblings.is_empty();
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
        self.file_at(slot).held.push_back(HeldOperation {
            token,
            what,
            covers,
            covers_siblings,
        });
        self.held_count += 1;
        Ok(token)
    }

    pub(super) fn issue_held(&mut self, token: u64, slot: u32, what: Held) {
        match what {
            Held::Datasync => self.issue_datasync(token, slot),
            Held::Read { len, offset } => {
                self.manager.submit_read(token, slot, len, offset, true);
            }
        }
    }

    /// Sends the held operations whose writes are all done to the ring, then what waits in
    /// the queue of `*_nowait` submissions (called after them) as far as there is room.
    pub fn send_released(&mut self) {
        for (token, slot, what) in std::mem::take(&mut self.released) {
            self.issue_held(token, slot, what);
        }
        if !self.queue.is_empty() {
            self.send_queued();
        }
    }

    /// The write with sequence `seq` of the file in `slot` is done: release the operations
    /// that were waiting for it, of this registration and of the others of the same file,
    /// and nothing else.
    pub(super) fn write_finished(&mut self, slot: u32, seq: u64) {
        let file = self.file_at(slot);
        file.writes_in_flight.remove(&seq);
        let siblings = file.siblings.clone();
        self.release_held(slot);
        for other in siblings {
            self.release_held(other);
        }
    }

    /// Moves the held operations of `slot` whose writes are all done to `released`, in
    /// order: the first still waiting keeps the ones behind it waiting too.
    fn release_held(&mut self, slot: u32) {
        loop {
            let slots = &self.slots;
            let file = slots[slot as usize]
                .file
                .as_ref()
                .expect("a file stays registered while it has work in the backend");
            let Some(front) = file.held.front() else {
                return;
            };
            let waits_here = file
                .writes_in_flight
                .first()
                .is_some_and(|&oldest| oldest <= front.covers);
            let waits_elsewhere = front.covers_siblings.iter().any(|&(other, last)| {
                slots[other as usize]
                    .file
                    .as_ref()
                    .and_then(|f| f.writes_in_flight.first())
                    .is_some_and(|&oldest| oldest <= last)
            });
            if waits_here || waits_elsewhere {
                return;
            }
            let held = self
                .file_at(slot)
                .held
                .pop_front()
                .expect("looked at above");
            self.held_count -= 1;
            self.released.push((held.token, slot, held.what));
        }
    }
}
