//! Waiting for completions: io_uring_enter with a count and a timeout, and what a waiter
//! needs to sleep in the kernel without holding the manager (`SleepTicket`; the sleeping
//! itself is `waiters`'). A sleeper is woken by no-ops under the wake token.

use io_uring::{opcode, types};
use std::io;
use std::time::Duration;

use super::tokens::{PART_BITS, WAKE_TOKEN};
use super::RingManager;
use crate::config::RingMode;

/// What a waiter needs to sleep in the kernel without the manager's lock.
#[derive(Clone, Copy, Debug)]
pub struct SleepTicket {
    /// The ring's descriptor; the ring stays alive while anyone sleeps on it.
    pub fd: std::os::fd::RawFd,
    pub to_submit: u32,
    /// Wake when this many CQEs are unreaped.
    pub want: u32,
    /// SQPOLL's kernel thread is asleep and must be woken to take the queued SQEs.
    pub wake_sqpoll: bool,
}

impl RingManager {
    /// One io_uring_enter: submits what is queued and, with `want > 0`, blocks until that
    /// many CQEs are posted or `timeout` passes. A timeout is not an error.
    pub(super) fn enter(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.metrics.enter_calls += 1;
        let submitter = self.ring.submitter();
        let result = match timeout {
            Some(t) if want > 0 => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)
            }
            _ => submitter.submit_and_wait(want),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            // The completion queue is full and the kernel wants it drained before it takes
            // more; the caller reaps and comes back.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and blocks until at least one CQE is posted or `timeout`
    /// passes. EINTR comes back as an error so the caller can run signal handlers.
    pub fn wait_for_cqe(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_for_cqes(1, timeout)
    }

    /// As `wait_for_cqe`, for at least `want` CQEs (capped at what can still arrive).
    pub fn wait_for_cqes(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.move_backlog();
        self.metrics.sqes_submitted += std::mem::take(&mut self.queued) as u64;
        let posted = self.ring.completion().len();
        let want = want.min(self.sqes_in_flight()).max(1);
        if posted >= want {
            return Ok(());
        }
        self.enter(want - posted, timeout)
    }

    /// Gets the ring ready for a waiter to sleep in io_uring_enter without holding the
    /// manager (see `waiters`): queued SQEs are handed over by that same call, and `want`
    /// is capped at what can still arrive and at what the completion queue holds.
    pub fn prepare_sleep(&mut self, want: usize) -> SleepTicket {
        self.move_backlog();
        let to_submit = std::mem::take(&mut self.queued);
        self.metrics.sqes_submitted += to_submit as u64;
        self.metrics.enter_calls += 1;
        let cq_room = (self.ring.params().cq_entries() as usize / 2).max(1);
        let want = want
            .min(self.sqes_with_tokens_in_flight())
            .min(cq_room)
            .max(1);
        let wake_sqpoll = self.mode == RingMode::Sqpoll && self.ring.submission().need_wakeup();
        SleepTicket {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.ring),
            to_submit: to_submit as u32,
            want: want as u32,
            wake_sqpoll,
        }
    }

    /// Makes a waiter sleeping for `want` CQEs (from the same completion-queue head, which
    /// nobody moves while it sleeps) wake up: posts no-ops until that many are there.
    pub fn wake_sleeper(&mut self, want: usize) -> io::Result<()> {
        let posted = self.ring.completion().len();
        for _ in posted..want {
            let nop = opcode::Nop::new()
                .build()
                .user_data(WAKE_TOKEN << PART_BITS);
            self.push(nop);
        }
        self.after_push();
        self.flush().map(|_| ())
    }

    /// `n` SQEs handed to a sleeping waiter's io_uring_enter were not taken by the kernel:
    /// they go with the next flush.
    pub fn requeue(&mut self, n: u32) {
        self.queued += n as usize;
        self.metrics.sqes_submitted -= u64::from(n);
    }

    /// CQEs posted and not reaped yet.
    pub fn unreaped(&mut self) -> usize {
        self.ring.completion().len()
    }

    /// The ring's submitter, for registrations that do not touch operations in flight
    /// (an eventfd, for instance).
    pub fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }
}
