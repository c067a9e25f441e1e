//! The calls that wait, each a condition over the backend that `Shared::block_on` waits
//! for: wait, wait_for (claim, wait_claimed, withdraw), room for a submission, a file's
//! deregistration. Closing is `closing`'s.

use std::time::Instant;

use super::errors::WaitError;
use super::shared::{Progress, Shared};
use crate::backend::{Completion, Handle};

impl Shared {
    /// Blocks until at least `min_complete` completions are ready (or every unclaimed
    /// outstanding operation is, if fewer are outstanding) or `deadline` passes, then hands
    /// back everything ready and unclaimed.
    pub fn wait(
        &self,
        min_complete: usize,
        deadline: Option<Instant>,
        out: &mut Vec<Completion>,
    ) -> Result<(), WaitError> {
        self.block_on(deadline, true, |backend, expired| {
            backend.take_submit_count();
            let ready = backend.handback().ready_len();
            let could_be = ready + backend.unclaimed_outstanding();
            let target = min_complete.min(could_be);
            if ready >= target || expired {
                backend.handback().take_ready(out);
                return Ok(Progress::Done(()));
            }
            // When even every write already in the kernel would not make up the count, the
            // caller waits for its open batches: write them now rather than send them off
            // and sleep until a worker has.
            let write_open = could_be.saturating_sub(backend.tokens_in_open_batches()) < target;
            Ok(Progress::Waiting {
                want: target - ready,
                write_open,
            })
        })
    }

    /// flush(): hands what is queued to the kernel and returns the submit_* calls made since
    /// the last flush, poll, wait or wait_for. A batch of writes that heads its file is
    /// written by this thread, without the lock (see `UringBackend::take_flush_work`).
    pub fn flush(&self) -> Result<usize, WaitError> {
        let mut state = self.lock();
        if state.closing {
            return Err(WaitError::Closed);
        }
        // What was submitted before the batches this call may write (a read, a datasync
        // released earlier) reaches the kernel first, as it did when the batches went in
        // the same submission: a read queued before a write must not see it.
        let backend = state.backend.as_mut().ok_or(WaitError::Closed)?;
        backend.submit_queued()?;
        loop {
            let backend = state.backend.as_mut().ok_or(WaitError::Closed)?;
            let Some(work) = backend.take_flush_work() else {
                backend.flush()?;
                return Ok(backend.take_submit_count());
            };
            state = self.do_caller_work(state, work);
            if state.closing {
                return Err(WaitError::Closed);
            }
        }
    }

    /// Claims `tokens` for this caller's `wait_claimed`: from now on nobody else is handed
    /// their completions. Claims nothing if any of them cannot be claimed.
    pub fn claim(&self, tokens: &[u64]) -> Result<(), WaitError> {
        let mut state = self.lock();
        if state.closing {
            return Err(WaitError::Closed);
        }
        let backend = state.backend.as_mut().ok_or(WaitError::Closed)?;
        backend.take_submit_count();
        backend.handback().claim(tokens).map_err(WaitError::Claim)
    }

    /// Blocks until every claimed token of `tokens` completed; hands back exactly their
    /// completions, in that order. On timeout (or any error) the claim stays: `withdraw` it.
    pub fn wait_claimed(
        &self,
        tokens: &[u64],
        deadline: Option<Instant>,
    ) -> Result<Vec<Completion>, WaitError> {
        self.block_on(deadline, true, |backend, _| {
            let handback = backend.handback();
            if handback.claim_complete(tokens) {
                return Ok(Progress::Done(handback.take_claim(tokens)));
            }
            Ok(Progress::Waiting {
                want: tokens.len() - handback.claim_progress(tokens),
                write_open: false,
            })
        })
    }

    /// Gives up a claim: what of it completed is handed to the next wait/poll instead.
    /// Returns how many of `tokens` had completed. Takes the lock, which is only ever held
    /// for bookkeeping, but may be busy: call it without the GIL.
    pub fn withdraw(&self, tokens: &[u64]) -> usize {
        let mut state = self.lock();
        let Some(backend) = state.backend.as_mut() else {
            return 0;
        };
        let finished = backend.handback().claim_progress(tokens);
        backend.handback().withdraw(tokens);
        self.announce(&mut state);
        finished
    }

    /// Blocks until a write of `len` bytes (with `held`, a held datasync or read) has
    /// room.
    pub fn make_room(&self, len: usize, held: bool) -> Result<(), WaitError> {
        self.block_on(None, false, |backend, _| {
            Ok(if backend.room_for(len, held)? {
                Progress::Done(())
            } else {
                Progress::Waiting {
                    want: backend.room_want(len),
                    write_open: false,
                }
            })
        })
    }

    /// Blocks until nothing is outstanding on `handle`'s file, then closes the backend's
    /// descriptor.
    pub fn deregister_fd(&self, handle: Handle) -> Result<(), WaitError> {
        let retired = self.block_on(None, false, |backend, _| {
            if backend.file_idle(handle)? {
                return Ok(Progress::Done(backend.finish_deregister(handle)?));
            }
            Ok(Progress::Waiting {
                want: 1,
                write_open: false,
            })
        })?;
        // Its descriptors close here, without the lock: closing one can wait for the
        // file system (NFS writes back on close).
        drop(retired);
        Ok(())
    }
}
