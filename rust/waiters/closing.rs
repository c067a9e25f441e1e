//! Closing: every other call gets `Closed` from the start, the threads that use the ring
//! (a sleeper, caller work, the stream pump) are let go first, then everything in flight is
//! waited for, but not forever.
//!
//! Work on a regular file always ends (the kernel finishes a disk write, or fails it), and a
//! caller who closes expects it done: close waits for it without limit unless given a
//! timeout. Work on a pipe or socket ends only when the other side reads or writes, which
//! may never happen: close waits for it `STREAM_GRACE` (or until its timeout), then cancels
//! it (IORING_OP_ASYNC_CANCEL: it completes with -ECANCELED). With a timeout, everything
//! still in flight when it passes is cancelled. What the kernel could not stop (a write it
//! is already doing) is waited for `CANCEL_GRACE` more, and then left to the kernel with
//! the memory it may still use (`RingManager::abandon`), so close returns within the timeout
//! (or the grace) plus that.
//!
//! The deadlines are fixed once, when close is first called (`CloseDeadlines`): a close that
//! a signal interrupts (`Interrupted`, for Python's KeyboardInterrupt) and that is called
//! again goes on towards the same ones.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::errors::WaitError;
use super::kernel_sleep::enter_and_wait;
use super::shared::{Shared, State, SLICE};
use crate::manager::RETRY_REFUSED;

/// How long close waits for operations on pipes and sockets when it has no timeout.
pub const STREAM_GRACE: Duration = Duration::from_secs(2);

/// How long close waits for cancelled operations before leaving them to the kernel.
pub const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// When close stops waiting, fixed at its first call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseDeadlines {
    /// Past it everything still in flight is cancelled; `None`: work on regular files is
    /// waited for as long as it takes.
    pub everything: Option<Instant>,
    /// Past it the operations on pipes and sockets are cancelled.
    pub streams: Instant,
}

impl CloseDeadlines {
    /// For a close called now with `deadline` (its timeout from now, if it has one).
    pub fn starting_now(deadline: Option<Instant>) -> Self {
        Self {
            everything: deadline,
            streams: deadline.unwrap_or_else(|| Instant::now() + STREAM_GRACE),
        }
    }
}

/// What close has cancelled so far.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Cancellations {
    streams: bool,
    everything: bool,
    /// When the first cancellation was asked for.
    since: Option<Instant>,
}

impl Shared {
    /// Closes (see the module's comment). Closing a closed instance does nothing.
    /// `Interrupted`: a signal came, or a slice passed; call again to go on.
    pub fn close(&self, deadlines: CloseDeadlines) -> Result<(), WaitError> {
        let mut state = self.lock();
        self.closed.store(true, Ordering::Release);
        state.closing = true;
        // Wait until no other thread uses the ring: a sleeper is woken (again each slice, in
        // case a wake-up was refused), waiters see `closing` and leave, and another thread's
        // close is let finish.
        loop {
            if state.backend.is_none() {
                return Ok(());
            }
            if !state.closer && state.sleeper.is_none() && state.working == 0 && !state.pump {
                break;
            }
            if let (Some(want), Some(backend)) = (state.sleeper, state.backend.as_mut()) {
                let _ = backend.manager_mut().wake_sleeper(want);
            }
            self.notify(&state);
            let (guard, timed_out) = self.park(state, Some(SLICE));
            state = guard;
            if timed_out {
                return Err(WaitError::Interrupted);
            }
        }
        state.closer = true;
        let (mut state, result) = self.drain(state, deadlines);
        state.closer = false;
        let backend = match result {
            Ok(()) => state.backend.take(),
            Err(_) => None,
        };
        self.notify(&state);
        drop(state);
        // The ring, the pool and the descriptors go here, without the lock.
        drop(backend);
        result
    }

    /// Waits for everything in flight, cancelling at the deadlines; the caller is `close`,
    /// alone with the ring (every other call returns `Closed` now). The lock is released
    /// while it sleeps.
    fn drain<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        deadlines: CloseDeadlines,
    ) -> (MutexGuard<'a, State>, Result<(), WaitError>) {
        loop {
            let cancelled = state.cancellations;
            let backend = state.backend.as_mut().expect("checked by close");
            let step = (|| -> Result<bool, WaitError> {
                backend.flush()?;
                backend.collect();
                backend.signal_event_loop();
                backend.send_released();
                backend.flush()?;
                Ok(backend.drained())
            })();
            match step {
                Ok(true) => {
                    backend.release_files();
                    return (state, Ok(()));
                }
                Ok(false) => {}
                Err(e) => return (state, Err(e)),
            }
            let now = Instant::now();
            let cancel_all =
                !cancelled.everything && deadlines.everything.is_some_and(|d| now >= d);
            let cancel_streams = !cancelled.streams && now >= deadlines.streams;
            if cancel_all || cancel_streams {
                let asked = backend.cancel(cancel_all);
                let c = &mut state.cancellations;
                c.streams = true;
                c.everything |= cancel_all;
                if asked > 0 {
                    c.since.get_or_insert(now);
                }
                continue;
            }
            let give_up_at = cancelled.since.map(|since| since + CANCEL_GRACE);
            if give_up_at.is_some_and(|at| now >= at) && backend.only_cancelled_left() {
                backend.abandon();
                return (state, Ok(()));
            }
            let next = [
                deadlines.everything.filter(|_| !cancelled.everything),
                Some(deadlines.streams).filter(|_| !cancelled.streams),
                give_up_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = next.map(|at| at.saturating_duration_since(now));
            let manager = backend.manager_mut();
            let Some(timeout) = manager.sleep_allowed(timeout) else {
                continue; // refused operations to reap first
            };
            if !backend.kernel_busy() {
                // Nothing for the kernel to complete; what is left moves on at the next
                // step (a stream's next operation, a released datasync).
                let (guard, _) = self.park(state, Some(timeout.unwrap_or(SLICE).min(SLICE)));
                state = guard;
                continue;
            }
            let ticket = backend.manager_mut().prepare_sleep(1);
            state.sleeper = Some(ticket.want as usize);
            drop(state);
            let result = enter_and_wait(ticket, timeout);
            state = self.lock();
            state.sleeper = None;
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    return (state, Err(WaitError::Interrupted))
                }
                // A wait the kernel refused loses nothing (it submitted nothing): look again
                // shortly, until the deadlines say otherwise.
                Err(_) => {
                    drop(state);
                    std::thread::sleep(RETRY_REFUSED);
                    state = self.lock();
                }
            }
        }
    }
}
