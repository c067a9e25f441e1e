//! The `UringBackend` value: the ring manager, the file table, the tokens outstanding and
//! the counters; and the calls that look at all of it at once (flush, poll, drained). Its
//! other methods live with their concern in the sibling files (see `backend`).

use std::io;
use std::os::fd::RawFd;

use super::files::FileSlot;
use super::nowait::SubmitQueue;
use super::ordering::Held;
use crate::config::IoUringConfig;
use crate::handback::{Completion, Handback};
use crate::manager::{Finished, Metrics, RingManager, TokenMap};
use crate::ring::Unavailable;

pub struct UringBackend {
    pub(super) manager: RingManager,
    pub(super) owner: u64,
    pub(super) buffer_size: usize,
    pub(super) slots: Vec<FileSlot>,
    pub(super) free_slots: Vec<u32>,
    /// Slots whose file has an open batch, so a flush seals them without scanning all.
    pub(super) open_batches: Vec<u32>,
    /// The members of sealed batches of more than one write, by the batch's SQE token.
    pub(super) batch_members: TokenMap<Vec<(u64, usize)>>,
    pub(super) handback: Handback,
    /// Tokens handed out and not yet completed (ready ones excluded).
    pub(super) outstanding: usize,
    pub(super) held_count: usize,
    /// `*_nowait` submissions accepted without room, waiting for it (`nowait`).
    pub(super) queue: SubmitQueue,
    /// Held operations whose writes have all completed: (token, slot, what), not yet issued.
    pub(super) released: Vec<(u64, u32, Held)>,
    /// submit_* calls since the last flush/poll/wait/wait_for (what flush() reports).
    pub(super) submits_since_flush: usize,
    /// Stream operations queued behind another of their stream, all streams (`streams`):
    /// kept as a count because every call looks at it.
    pub(super) stream_ops_waiting: usize,
    pub(super) datasyncs_in_caller: u64,
    pub(super) writes_in_caller: u64,
    /// Datasyncs that completed with another's fdatasync (`shared_syncs`), and the tokens
    /// waiting on each fdatasync in the ring, by the token of its SQE.
    pub(super) datasyncs_joined: u64,
    pub(super) sync_joiners: TokenMap<Vec<u64>>,
    pub(super) counts: OperationCounts,
    pub(super) finished: Vec<Finished>,
    pub(super) background_flush_bytes: u64,
    /// Background flushes in flight, all files: they hold no token, but close waits for them.
    pub(super) flushes_in_flight: usize,
    /// An eventfd is registered: an event loop learns of completions from the kernel's
    /// CQEs, so flush() leaves every write to the ring (`take_flush_work`).
    pub(super) eventfd_registered: bool,
    /// The registered eventfd, signalled by us too when another thread hands a `*_nowait`
    /// completion over (`signal_event_loop`): the kernel's signal for its CQE went to the
    /// loop before that thread reaped it, and the loop found nothing then.
    pub(super) eventfd: Option<RawFd>,
    /// Close cancelled everything (`cancel`): no background flush starts any more.
    pub(super) cancelled_everything: bool,
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // Its descriptors (the ring's, the files') close as its fields drop, after this.
        crate::fork::untrack_instance(self.owner);
    }
}

/// What the caller's operations (tokens) did, however they travelled: through the ring
/// (one SQE for a whole batch of writes), or in the caller's thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationCounts {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
}

impl UringBackend {
    /// `config` must already be validated.
    pub fn new(core_id: usize, config: &IoUringConfig, owner: u64) -> Result<Self, Unavailable> {
        let manager = RingManager::new(core_id, config)?;
        crate::fork::track(owner, manager.ring_descriptor());
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
            queue: SubmitQueue::default(),
            released: Vec::new(),
            submits_since_flush: 0,
            stream_ops_waiting: 0,
            datasyncs_in_caller: 0,
            writes_in_caller: 0,
            datasyncs_joined: 0,
            sync_joiners: TokenMap::default(),
            counts: OperationCounts::default(),
            finished: Vec::new(),
            background_flush_bytes: config.background_flush_bytes as u64,
            flushes_in_flight: 0,
            eventfd_registered: false,
            eventfd: None,
            cancelled_everything: false,
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

    /// Datasyncs that completed with an fdatasync issued for another (`shared_syncs`).
    pub fn datasyncs_joined(&self) -> u64 {
        self.datasyncs_joined
    }

    /// Signal `eventfd` for every completion the kernel posts (see
    /// `RingManager::register_eventfd`). A completion is only handed back by `poll`, so a
    /// waiter reads the eventfd first and then polls until nothing is left.
    pub fn register_eventfd(&mut self, eventfd: RawFd) -> io::Result<()> {
        self.manager.register_eventfd(eventfd)?;
        self.eventfd_registered = true;
        self.eventfd = Some(eventfd);
        Ok(())
    }

    pub fn unregister_eventfd(&mut self) -> io::Result<()> {
        self.manager.unregister_eventfd()?;
        self.eventfd_registered = false;
        self.eventfd = None;
        Ok(())
    }

    /// Signals the registered eventfd if `*_nowait` completions were handed over since the
    /// event loop last took them: called by every path that reaps or delivers for another
    /// caller (a sleeper, a caller doing work itself, a poll), never by the loop's own
    /// `take_nowait`, which takes them at once.
    pub fn signal_event_loop(&mut self) {
        if !self.handback.take_nowait_signal() {
            return;
        }
        if let Some(eventfd) = self.eventfd {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to a descriptor the caller keeps open
            // while it is registered (it unregisters, under the same lock, before closing
            // it). A full counter (EAGAIN) already means "wake up".
            let _ = unsafe { libc::write(eventfd, (&raw const one).cast(), 8) };
        }
    }

    /// Submitted and not yet handed back.
    pub fn pending_count(&self) -> usize {
        self.outstanding + self.queue.len() + self.handback.waiting_len()
    }

    /// The submit_* calls since the last call of this (flush, poll, wait, wait_for do).
    pub fn take_submit_count(&mut self) -> usize {
        std::mem::take(&mut self.submits_since_flush)
    }

    /// A token handed to the caller: it is live until handed back.
    pub(super) fn issued(&mut self, token: u64) -> u64 {
        self.handback.issued(token);
        self.submits_since_flush += 1;
        token
    }

    /// Completions handed over so far; a change tells a waiter there may be something new.
    pub fn deliveries(&self) -> u64 {
        self.handback.deliveries
    }

    /// Hands queued work (open batches included) to the kernel; returns how many SQEs went.
    pub fn flush(&mut self) -> io::Result<usize> {
        self.seal_all();
        self.manager.flush()
    }

    /// Hands the kernel what is queued and the held operations released so far, leaving
    /// open batches open: what `flush()` sends ahead of the batches it writes itself.
    pub fn submit_queued(&mut self) -> io::Result<usize> {
        self.send_released();
        self.manager.flush()
    }

    /// Never blocks on I/O: submits what is queued and hands back what is ready. Reaps the
    /// kernel's completions only with `may_reap` (see `waiters`: not while another thread
    /// sleeps for them).
    pub fn poll(&mut self, out: &mut Vec<Completion>, may_reap: bool) -> io::Result<()> {
        self.advance(may_reap)?;
        self.handback.take_ready(out);
        Ok(())
    }

    /// What a poll does before handing back: submits what is queued and (`may_reap`)
    /// reaps what the kernel finished.
    pub fn advance(&mut self, may_reap: bool) -> io::Result<()> {
        self.flush()?;
        if may_reap {
            self.collect();
            self.send_released();
            // Operations released by `collect` should not wait for the next call.
            self.manager.flush()?;
        }
        Ok(())
    }

    pub fn handback(&mut self) -> &mut Handback {
        &mut self.handback
    }

    /// Tokens not completed, not claimed by a `wait_for` and not of a `*_nowait`
    /// submission: what a `wait()` may still be handed.
    pub fn unclaimed_outstanding(&self) -> usize {
        (self.outstanding + self.queue.len())
            .saturating_sub(self.handback.claimed_unfinished())
            .saturating_sub(self.handback.nowait_unfinished())
    }

    /// Nothing in flight or queued any more, background flushes included.
    pub fn drained(&self) -> bool {
        self.outstanding == 0 && self.queue.is_empty() && self.flushes_in_flight == 0
    }

    /// Whether anything the kernel will complete is in flight.
    pub fn kernel_busy(&self) -> bool {
        self.manager.in_flight() > 0
    }

    pub fn manager_mut(&mut self) -> &mut RingManager {
        &mut self.manager
    }
}
