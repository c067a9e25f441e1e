//! Cancelling at close: what close no longer waits for (see `waiters::closing`) completes
//! with -ECANCELED. Operations still in the backend's hands (held behind writes, waiting in
//! a stream's queue, waiting for a file's fdatasync to share) never reach the kernel; those
//! in the kernel's hands are asked to stop (`RingManager::cancel`).

use super::ordering::Held;
use super::UringBackend;

const CANCELLED: i64 = -(libc::ECANCELED as i64);

impl UringBackend {
    /// Cancels the operations on streams, or with `everything` on every file. Returns how
    /// many operations the kernel was asked to stop. Only for close: nothing new is
    /// submitted meanwhile.
    pub fn cancel(&mut self, everything: bool) -> usize {
        if everything {
            // Batches not yet sent go to the ring first, to be cancelled there with the rest
            // (their buffers are the kernel's once an SQE names them).
            self.seal_all();
            self.cancelled_everything = true;
        }
        let picked: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&slot| {
                self.slots[slot as usize]
                    .file
                    .as_ref()
                    .is_some_and(|f| everything || f.stream.is_some())
            })
            .collect();
        for &slot in &picked {
            self.cancel_unissued(slot);
        }
        self.cancel_queued(|slot| picked.contains(&slot));
        let released = std::mem::take(&mut self.released);
        for (token, slot, what) in released {
            if picked.contains(&slot) {
                self.complete_unissued(token, slot, what);
            } else {
                self.released.push((token, slot, what));
            }
        }
        self.manager.cancel(|slot| picked.contains(&slot))
    }

    /// Completes with -ECANCELED what of the file in `slot` has not reached the kernel.
    fn cancel_unissued(&mut self, slot: u32) {
        let file = self.file_at(slot);
        let held: Vec<(u64, Held)> = file.held.drain(..).map(|h| (h.token, h.what)).collect();
        let next_syncs = std::mem::take(&mut file.next_syncs);
        let queued = file
            .stream
            .as_mut()
            .map(|queue| queue.take_waiting())
            .unwrap_or_default();
        self.held_count -= held.len();
        self.stream_ops_waiting -= queued.len();
        for (token, what) in held {
            self.complete_unissued(token, slot, what);
        }
        for token in next_syncs {
            self.complete_unissued(token, slot, Held::Datasync);
        }
        for op in queued {
            use super::streams::StreamOp;
            match op {
                StreamOp::Write { token, .. } => self.retire_unissued(token, slot, true),
                StreamOp::Datasync { token } => self.complete_unissued(token, slot, Held::Datasync),
                StreamOp::Read { token, len } => {
                    self.complete_unissued(token, slot, Held::Read { len, offset: 0 })
                }
            }
        }
    }

    fn complete_unissued(&mut self, token: u64, slot: u32, what: Held) {
        match what {
            Held::Datasync => self.retire_unissued(token, slot, false),
            Held::Read { .. } => {
                self.outstanding -= 1;
                self.file_at(slot).operations -= 1;
                self.deliver_read(token, CANCELLED, None);
            }
        }
    }

    fn retire_unissued(&mut self, token: u64, slot: u32, is_write: bool) {
        self.outstanding -= 1;
        self.file_at(slot).operations -= 1;
        self.deliver(token, CANCELLED, is_write);
    }

    /// Whether all that is left in flight is what `cancel` asked the kernel to stop.
    pub fn only_cancelled_left(&self) -> bool {
        self.manager.only_cancelled_in_flight()
            && self.held_count == 0
            && self.stream_ops_waiting == 0
    }

    /// Leaves what is in flight to the kernel (see `RingManager::abandon`).
    pub fn abandon(&mut self) {
        self.manager.abandon();
    }
}
