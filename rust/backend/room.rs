//! Room for a submission: registered buffers (or, for a write larger than the pool, a
//! bound on private copies) and a bound on held operations. A submission without room
//! fails with `NoRoom`, and the caller waits (`waiters::Shared::make_room`) for as many
//! completions as `room_want` says.

use super::errors::BackendError;
use super::ordering::MAX_HELD;
use super::UringBackend;

/// Private copies of writes larger than the pool past this many bytes (or the pool's size,
/// if larger) make `submit_*` wait: as much again as the pool, so a large write never waits
/// for less than a pool's worth in flight.
const MIN_PRIVATE_BYTES: usize = 16 << 20;

impl UringBackend {
    /// Whether a write of `len` bytes can be copied in now without waiting for buffers.
    pub(super) fn has_room(&self, len: usize) -> bool {
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

    /// Whether a write of `len` bytes (or, with `held`, a held operation) has room now;
    /// `Err` when it never will (nothing in flight can free any).
    pub fn room_for(&self, len: usize, held: bool) -> Result<bool, BackendError> {
        if !self.queue.is_empty() {
            // Behind the queue of `*_nowait` submissions: its turn comes when that is empty.
            return Ok(false);
        }
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
}

#[cfg(test)]
impl UringBackend {
    #[cfg(test)]
    pub(super) fn free_buffers_for_test(&self) -> usize {
        self.manager.free_buffers()
    }
}
