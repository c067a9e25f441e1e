//! Waiting for completions: io_uring_enter with a count and a timeout, and what a waiter
//! needs to sleep in the kernel without holding the manager (`SleepTicket`; the sleeping
//! itself is `waiters`'). A sleeper is woken by no-ops under the wake token.
//!
//! A waiter's io_uring_enter never submits: queued SQEs are handed over by `flush` under
//! the manager first. That keeps every enter that can take entries under the manager, which
//! is what lets a refused submission be taken back (`Unconsumed`), and a refused wait loses
//! nothing.

use io_uring::{opcode, types};
use std::io;
use std::time::Duration;

use super::submission::is_transient;
use super::tokens::{PART_BITS, WAKE_TOKEN};
use super::RingManager;
use crate::config::RingMode;

/// What a waiter needs to sleep in the kernel without the manager's lock.
#[derive(Clone, Copy, Debug)]
pub struct SleepTicket {
    /// The ring's descriptor; the ring stays alive while anyone sleeps on it.
    pub fd: std::os::fd::RawFd,
    /// Wake when this many CQEs are unreaped.
    pub want: u32,
    /// SQPOLL's kernel thread is asleep and must be woken to take the queued SQEs.
    pub wake_sqpoll: bool,
}

/// How long a waiter sleeps before handing the kernel again what it refused for now
/// (EAGAIN, EBUSY): long enough not to spin, short enough not to be seen.
pub const RETRY_REFUSED: Duration = Duration::from_millis(1);

impl RingManager {
    /// One io_uring_enter: submits what is queued and, with `want > 0`, blocks until that
    /// many CQEs are posted or `timeout` passes (not an error). Returns what the kernel
    /// says it took.
    pub(super) fn enter(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<usize> {
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
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(0),
            other => other,
        }
    }

    /// Submits what is queued and blocks until at least one CQE is posted or `timeout`
    /// passes. EINTR comes back as an error so the caller can run signal handlers.
    pub fn wait_for_cqe(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_for_cqes(1, timeout)
    }

    /// As `wait_for_cqe`, for at least `want` CQEs (capped at what can still arrive). A
    /// refused submission is handled as `flush` handles it; the error comes back only when
    /// it refused nothing that is now reported through a completion.
    pub fn wait_for_cqes(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.move_backlog();
        let posted = self.ring.completion().len();
        let want = want.min(self.sqes_in_flight()).max(1);
        if posted >= want || !self.refused.is_empty() {
            return Ok(());
        }
        match self.enter(want - posted, timeout) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Err(e),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => {
                self.refuse(&e);
                if self.refused.is_empty() {
                    Err(e)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Gets the ring ready for a waiter to sleep in io_uring_enter without holding the
    /// manager (see `waiters`): `want` is capped at what can still arrive and at what the
    /// completion queue holds. The caller has flushed; the waiter's enter submits nothing.
    pub fn prepare_sleep(&mut self, want: usize) -> SleepTicket {
        self.metrics.enter_calls += 1;
        let cq_room = (self.ring.params().cq_entries() as usize / 2).max(1);
        let want = want
            .min(self.sqes_with_tokens_in_flight())
            .min(cq_room)
            .max(1);
        let wake_sqpoll = self.mode == RingMode::Sqpoll && self.ring.submission().need_wakeup();
        SleepTicket {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.ring),
            want: want as u32,
            wake_sqpoll,
        }
    }

    /// How long a waiter may sleep in the kernel now: not at all while refused operations
    /// wait to be reaped, briefly while SQEs wait to be handed over again, else `wanted`.
    pub fn sleep_allowed(&mut self, wanted: Option<Duration>) -> Option<Option<Duration>> {
        if !self.refused.is_empty() {
            return None;
        }
        if self.unsubmitted() > 0 {
            return Some(Some(wanted.map_or(RETRY_REFUSED, |w| w.min(RETRY_REFUSED))));
        }
        Some(wanted)
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
