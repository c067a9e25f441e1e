//! The shared instance: the backend behind one mutex, the roles of sleeper and condvar
//! waiter (see `waiters`), the stream pump thread, and `block_on`, the loop every waiting
//! call runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::errors::WaitError;
use super::kernel_sleep::enter_and_wait;
use crate::backend::{BackendError, CallerWork, Completion, UringBackend, IN_CALLER_MIN_BUDGET};

/// A condvar waiter returns `Interrupted` this often, so that signals are looked at.
pub(super) const SLICE: Duration = Duration::from_millis(100);

pub(super) struct State {
    pub(super) backend: Option<UringBackend>,
    /// The CQE count the thread sleeping in io_uring_enter waits for, if one does.
    pub(super) sleeper: Option<usize>,
    pub(super) condvar_waiters: usize,
    /// Threads blocked on `wake` for any reason (`Shared::park`): notifying none is a futex
    /// syscall for nothing, twice per round trip of a waiter that does its own work.
    pub(super) parked: usize,
    /// Threads doing caller work without the lock.
    pub(super) working: usize,
    pub(super) closing: bool,
    /// A thread is inside `close()`, draining.
    pub(super) closer: bool,
    /// The stream pump thread runs.
    pub(super) pump: bool,
    /// What a close has cancelled so far (`closing`).
    pub(super) cancellations: super::closing::Cancellations,
}

/// What a waiting call's condition says.
pub enum Progress<T> {
    Done(T),
    /// Not yet: `want` more completions could do it; `write_open`: the caller may write
    /// open batches itself.
    Waiting {
        want: usize,
        write_open: bool,
    },
}

pub struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) wake: Condvar,
    pub(super) closed: AtomicBool,
    /// Itself, for the pump thread to hold.
    pub(super) this: Weak<Shared>,
}

/// The lock on a shared backend, for calls that do not wait.
pub struct Access<'a> {
    pub(super) shared: &'a Shared,
    pub(super) state: MutexGuard<'a, State>,
}

impl Access<'_> {
    /// Runs `f` on the backend; completions it delivers wake whoever waits for them.
    pub fn run<R>(
        mut self,
        f: impl FnOnce(&mut UringBackend) -> Result<R, BackendError>,
    ) -> Result<R, WaitError> {
        if self.state.closing {
            return Err(WaitError::Closed);
        }
        let pump_runs = self.state.pump;
        let backend = self.state.backend.as_mut().ok_or(WaitError::Closed)?;
        let before = backend.deliveries();
        let result = f(backend);
        let pump = !pump_runs && backend.stream_ops_waiting() > 0;
        if backend.deliveries() != before {
            self.shared.announce(&mut self.state);
        }
        if pump {
            self.shared.start_pump(&mut self.state);
        }
        Ok(result?)
    }

    /// Hands back what is ready without blocking. While a sleeper waits for the kernel's
    /// completions it is the one to reap them: wake it if some are there.
    pub fn poll(mut self, out: &mut Vec<Completion>) -> Result<(), WaitError> {
        if self.state.closing {
            return Err(WaitError::Closed);
        }
        let sleeper = self.state.sleeper;
        let backend = self.state.backend.as_mut().ok_or(WaitError::Closed)?;
        backend.take_submit_count();
        backend.poll(out, sleeper.is_none())?;
        backend.signal_event_loop();
        if let Some(want) = sleeper {
            if backend.manager_mut().unreaped() > 0 {
                backend.manager_mut().wake_sleeper(want)?;
            }
        }
        Ok(())
    }
}

impl Access<'_> {
    /// Hands back the finished `*_nowait` operations without blocking, as `poll` does for
    /// the others: queued work goes to the kernel, and the kernel's completions are reaped
    /// unless a sleeper is the one to reap them (it is woken if some are there).
    pub fn take_nowait(mut self, out: &mut Vec<Completion>) -> Result<(), WaitError> {
        if self.state.closing {
            return Err(WaitError::Closed);
        }
        let sleeper = self.state.sleeper;
        let backend = self.state.backend.as_mut().ok_or(WaitError::Closed)?;
        let before = backend.deliveries();
        backend.advance(sleeper.is_none())?;
        backend.take_nowait_completions(out);
        if let Some(want) = sleeper {
            if backend.manager_mut().unreaped() > 0 {
                backend.manager_mut().wake_sleeper(want)?;
            }
        }
        if backend.deliveries() != before {
            // Others' completions reaped here: wake whoever waits for them.
            self.shared.announce(&mut self.state);
        }
        Ok(())
    }
}

impl Shared {
    pub fn new(backend: UringBackend) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            state: Mutex::new(State {
                backend: Some(backend),
                sleeper: None,
                condvar_waiters: 0,
                parked: 0,
                working: 0,
                closing: false,
                closer: false,
                pump: false,
                cancellations: Default::default(),
            }),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            this: this.clone(),
        })
    }

    /// Starts the thread that moves stream queues along while their operations wait.
    pub(super) fn start_pump(&self, state: &mut State) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let started = std::thread::Builder::new()
            .name("storage_io-streams".to_string())
            .spawn(move || this.pump());
        // Without the thread, the queues still move whenever the caller polls or waits.
        state.pump = started.is_ok();
    }

    /// Waits, as any waiter does, until no stream operation waits behind another.
    pub(super) fn pump(&self) {
        loop {
            let result = self.block_on(None, false, |backend, _| {
                Ok(if backend.stream_ops_waiting() == 0 {
                    Progress::Done(())
                } else {
                    Progress::Waiting {
                        want: 1,
                        write_open: false,
                    }
                })
            });
            let mut state = self.lock();
            let idle = state
                .backend
                .as_ref()
                .is_none_or(|b| b.stream_ops_waiting() == 0);
            if matches!(result, Err(WaitError::Closed | WaitError::Backend(_))) || idle {
                state.pump = false;
                self.notify(&state);
                return;
            }
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside a call (a bug, reported to Python as PanicException) poisons the
        // lock; refusing every later call would turn that one bug into a dead instance
        // that can no longer even be closed, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn access(&self) -> Access<'_> {
        Access {
            shared: self,
            state: self.lock(),
        }
    }

    /// The lock if it is free now.
    pub fn try_access(&self) -> Option<Access<'_>> {
        let state = match self.state.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Access {
            shared: self,
            state,
        })
    }

    /// True from the start of `close()`; never blocks.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Completions appeared outside the sleeper's reap: wake everyone who may want them.
    pub(super) fn announce(&self, state: &mut State) {
        if let Some(backend) = state.backend.as_mut() {
            backend.signal_event_loop();
            if let Some(want) = state.sleeper {
                // Failing to post the no-ops leaves the sleeper to its own wake-up: nothing
                // is lost, only later.
                let _ = backend.manager_mut().wake_sleeper(want);
            }
        }
        self.notify(state);
    }

    /// Wakes every thread parked on `wake`, if there is one.
    pub(super) fn notify(&self, state: &State) {
        if state.parked > 0 {
            self.wake.notify_all();
        }
    }

    /// Blocks on `wake` until notified (or `timeout` passes: then true comes back too).
    pub(super) fn park<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> (MutexGuard<'a, State>, bool) {
        state.parked += 1;
        let (mut state, timed_out) = match timeout {
            Some(t) => {
                let (g, r) = self
                    .wake
                    .wait_timeout(state, t)
                    .unwrap_or_else(|p| p.into_inner());
                (g, r.timed_out())
            }
            None => (
                self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
                false,
            ),
        };
        state.parked -= 1;
        (state, timed_out)
    }

    /// Blocks until `check` says done, or `deadline` passes (`check` is then told so and
    /// must finish). `in_caller`: work may be done in this thread.
    pub(super) fn block_on<T>(
        &self,
        deadline: Option<Instant>,
        in_caller: bool,
        mut check: impl FnMut(&mut UringBackend, bool) -> Result<Progress<T>, WaitError>,
    ) -> Result<T, WaitError> {
        let mut state = self.lock();
        loop {
            if state.closing {
                return Err(WaitError::Closed);
            }
            let sleeping = state.sleeper.is_some();
            let backend = state.backend.as_mut().ok_or(WaitError::Closed)?;
            if !sleeping {
                backend.collect();
                backend.signal_event_loop();
            }
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let expired = remaining.is_some_and(|r| r.is_zero());
            let (want, write_open) = match check(backend, expired)? {
                Progress::Done(value) => {
                    backend.send_released();
                    backend.flush()?;
                    return Ok(value);
                }
                Progress::Waiting { .. } if expired => {
                    // A probe (timeout 0) still starts what it probed for.
                    backend.send_released();
                    backend.flush()?;
                    return Err(WaitError::TimedOut);
                }
                Progress::Waiting { want, write_open } => (want, write_open),
            };
            if in_caller && remaining.is_none_or(|r| r >= IN_CALLER_MIN_BUDGET) {
                if let Some(work) = backend.take_caller_work(write_open) {
                    state = self.do_caller_work(state, work);
                    continue;
                }
            }
            backend.send_released();
            backend.flush()?;
            state = if sleeping || !backend.kernel_busy() {
                // Someone else reaps, or only another thread's caller work can finish it.
                self.wait_on_condvar(state, remaining)?
            } else {
                self.sleep_in_kernel(state, want, remaining)?
            };
        }
    }

    pub(super) fn do_caller_work<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        work: CallerWork,
    ) -> MutexGuard<'a, State> {
        state.working += 1;
        drop(state);
        let outcome = work.run();
        let mut state = self.lock();
        state.working -= 1;
        state
            .backend
            .as_mut()
            .expect("close waits for caller work")
            .finish_caller_work(work, outcome);
        self.announce(&mut state);
        state
    }

    pub(super) fn wait_on_condvar<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        remaining: Option<Duration>,
    ) -> Result<MutexGuard<'a, State>, WaitError> {
        if let (Some(want), Some(backend)) = (state.sleeper, state.backend.as_mut()) {
            if want > 1 {
                // The sleeper waits for more than this thread may need: make it wake and
                // sleep again for one CQE at a time while others wait.
                backend.manager_mut().wake_sleeper(want)?;
            }
        }
        state.condvar_waiters += 1;
        let slice = remaining.map_or(SLICE, |r| r.min(SLICE));
        let (mut state, timed_out) = self.park(state, Some(slice));
        state.condvar_waiters -= 1;
        if timed_out && remaining.is_none_or(|r| r > SLICE) {
            return Err(WaitError::Interrupted);
        }
        Ok(state)
    }

    pub(super) fn sleep_in_kernel<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        want: usize,
        remaining: Option<Duration>,
    ) -> Result<MutexGuard<'a, State>, WaitError> {
        let want = if state.condvar_waiters > 0 { 1 } else { want };
        let backend = state.backend.as_mut().expect("checked by the caller");
        let Some(timeout) = backend.manager_mut().sleep_allowed(remaining) else {
            return Ok(state); // refused operations to reap first: no sleep
        };
        let ticket = backend.manager_mut().prepare_sleep(want);
        state.sleeper = Some(ticket.want as usize);
        drop(state);
        let result = enter_and_wait(ticket, timeout);
        let mut state = self.lock();
        state.sleeper = None;
        let backend = state.backend.as_mut().expect("close waits for the sleeper");
        backend.collect();
        backend.signal_event_loop();
        self.notify(&state);
        match result {
            Ok(()) => Ok(state),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(WaitError::Interrupted),
            Err(e) => Err(e.into()),
        }
    }
}
