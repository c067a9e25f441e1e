//! One instance shared by threads: waiting without holding the instance.
//!
//! The backend sits behind one mutex, held only for bookkeeping, never across a call that
//! sleeps. A thread that must wait (for completions, for buffers, for a file to go idle,
//! for everything at close) does so in one of two ways:
//!
//! - as *the sleeper*: at most one thread at a time sleeps in io_uring_enter(GETEVENTS)
//!   itself, with the lock released. While it sleeps, nobody else reaps the completion
//!   queue, so the queue's head does not move and the kernel's wake-up condition ("`want`
//!   CQEs unreaped") stays exactly what the sleeper asked for. When it wakes it takes the
//!   lock again, reaps everything into the backend's queues, wakes the other waiters and
//!   gives up the role.
//! - as *a condvar waiter*: every other waiting thread sleeps on a condition variable, and
//!   the sleeper's reap (or another thread's delivery) wakes it.
//!
//! No wake-up is lost: a thread that starts waiting while the sleeper waits for more than
//! one CQE, or that delivers completions without the ring (work done in the caller's
//! thread), posts no-op SQEs until the sleeper's count is reached (`wake_sleeper`); since
//! the head does not move, that count is exact whether the sleeper has entered the kernel
//! yet or not. (A zero IORING_OP_TIMEOUT would wake a sleeper already in the kernel, but
//! not one about to enter it.) The sleeper asks for one CQE whenever other threads wait.
//!
//! Work done in the caller's thread (`UringBackend::take_caller_work`) also runs with the
//! lock released: the work is marked taken, done, and accounted for under the lock again.
//! `close()` marks the instance closed (every other call, and every waiter, then gets
//! `Closed`), wakes the sleeper, waits until no thread is in the kernel or doing such work,
//! and only then waits for what is in flight and frees the ring: nothing is freed under a
//! thread that still uses it.
//!
//! Signals: a sleeper interrupted by one (EINTR), and a condvar waiter every `SLICE`, return
//! `Interrupted`, so that the caller can run its signal handlers (Python's
//! KeyboardInterrupt) and call again; nothing is lost by that.
//!
//! Rejected alternatives: every waiter in the kernel at once (a waiter whose completions
//! another one reaped sleeps on, since no CQE is left for it); a dedicated reaper thread
//! (a thread per instance, and a hop to it and back on every completion, which is the cost
//! the in-caller work exists to avoid).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::backend::{BackendError, CallerWork, ClaimError, Completion, UringBackend};
use crate::backend::{Handle, IN_CALLER_MIN_BUDGET};
use crate::manager::SleepTicket;

/// A condvar waiter returns `Interrupted` this often, so that signals are looked at.
const SLICE: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub enum WaitError {
    Closed,
    /// A signal arrived, or a slice passed: run signal handlers and call again.
    Interrupted,
    TimedOut,
    Claim(ClaimError),
    Backend(BackendError),
}

impl From<BackendError> for WaitError {
    fn from(e: BackendError) -> Self {
        WaitError::Backend(e)
    }
}

impl From<std::io::Error> for WaitError {
    fn from(e: std::io::Error) -> Self {
        WaitError::Backend(BackendError::Os(e))
    }
}

struct State {
    backend: Option<UringBackend>,
    /// The CQE count the thread sleeping in io_uring_enter waits for, if one does.
    sleeper: Option<usize>,
    condvar_waiters: usize,
    /// Threads doing caller work without the lock.
    working: usize,
    closing: bool,
    /// A thread is inside `close()`, draining.
    closer: bool,
    /// The stream pump thread runs.
    pump: bool,
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
    state: Mutex<State>,
    wake: Condvar,
    closed: AtomicBool,
    /// Itself, for the pump thread to hold.
    this: Weak<Shared>,
}

/// The lock on a shared backend, for calls that do not wait.
pub struct Access<'a> {
    shared: &'a Shared,
    state: MutexGuard<'a, State>,
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
        if let Some(want) = sleeper {
            if backend.manager_mut().unreaped() > 0 {
                backend.manager_mut().wake_sleeper(want)?;
            }
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
                working: 0,
                closing: false,
                closer: false,
                pump: false,
            }),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            this: this.clone(),
        })
    }

    /// Starts the thread that moves stream queues along while their operations wait.
    fn start_pump(&self, state: &mut State) {
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
    fn pump(&self) {
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
                self.wake.notify_all();
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
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
    fn announce(&self, state: &mut State) {
        if let (Some(want), Some(backend)) = (state.sleeper, state.backend.as_mut()) {
            // Failing to post the no-ops leaves the sleeper to its own wake-up: nothing is
            // lost, only later.
            let _ = backend.manager_mut().wake_sleeper(want);
        }
        self.wake.notify_all();
    }

    /// Blocks until `check` says done, or `deadline` passes (`check` is then told so and
    /// must finish). `in_caller`: work may be done in this thread.
    fn block_on<T>(
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

    fn do_caller_work<'a>(
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

    fn wait_on_condvar<'a>(
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
        let (mut state, timeout) = self
            .wake
            .wait_timeout(state, slice)
            .unwrap_or_else(|p| p.into_inner());
        state.condvar_waiters -= 1;
        if timeout.timed_out() && remaining.is_none_or(|r| r > SLICE) {
            return Err(WaitError::Interrupted);
        }
        Ok(state)
    }

    fn sleep_in_kernel<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        want: usize,
        remaining: Option<Duration>,
    ) -> Result<MutexGuard<'a, State>, WaitError> {
        let want = if state.condvar_waiters > 0 { 1 } else { want };
        let backend = state.backend.as_mut().expect("checked by the caller");
        let ticket = backend.manager_mut().prepare_sleep(want);
        state.sleeper = Some(ticket.want as usize);
        drop(state);
        let (unsubmitted, result) = enter_and_wait(ticket, remaining);
        let mut state = self.lock();
        state.sleeper = None;
        let backend = state.backend.as_mut().expect("close waits for the sleeper");
        backend.manager_mut().requeue(unsubmitted);
        backend.collect();
        self.wake.notify_all();
        match result {
            Ok(()) => Ok(state),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(WaitError::Interrupted),
            Err(e) => Err(e.into()),
        }
    }

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
    /// Returns how many of `tokens` had completed.
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
        self.block_on(None, false, |backend, _| {
            if backend.file_idle(handle)? {
                backend.finish_deregister(handle)?;
                return Ok(Progress::Done(()));
            }
            Ok(Progress::Waiting {
                want: 1,
                write_open: false,
            })
        })
    }

    /// Closes: from now on every call gets `Closed`; waits until no thread uses the ring,
    /// then for everything in flight, then frees the ring, buffers and files. Closing a
    /// closed instance does nothing. `Interrupted`: call again to go on waiting.
    pub fn close(&self) -> Result<(), WaitError> {
        let mut state = self.lock();
        self.closed.store(true, Ordering::Release);
        state.closing = true;
        while state.closer {
            // Another thread is closing: done when it is.
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.backend.is_none() {
            return Ok(());
        }
        if let Some(want) = state.sleeper {
            let backend = state.backend.as_mut().expect("checked above");
            let _ = backend.manager_mut().wake_sleeper(want);
        }
        self.wake.notify_all();
        while state.sleeper.is_some() || state.working > 0 || state.pump {
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.closer = true;
        let (mut state, result) = self.drain(state);
        state.closer = false;
        let backend = match result {
            Ok(()) => state.backend.take(),
            Err(_) => None,
        };
        self.wake.notify_all();
        drop(state);
        // The ring and the pool go here, without the lock.
        drop(backend);
        result
    }

    /// Waits for everything in flight; the caller is `close`, alone with the ring (every
    /// other call returns `Closed` now). The lock is released while it sleeps.
    fn drain<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
    ) -> (MutexGuard<'a, State>, Result<(), WaitError>) {
        loop {
            let backend = state.backend.as_mut().expect("checked by close");
            let step = (|| -> Result<bool, WaitError> {
                backend.flush()?;
                backend.collect();
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
            let ticket = backend.manager_mut().prepare_sleep(1);
            state.sleeper = Some(ticket.want as usize);
            drop(state);
            let (unsubmitted, result) = enter_and_wait(ticket, None);
            state = self.lock();
            state.sleeper = None;
            let backend = state.backend.as_mut().expect("only close takes it");
            backend.manager_mut().requeue(unsubmitted);
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    return (state, Err(WaitError::Interrupted))
                }
                Err(e) => return (state, Err(e.into())),
            }
        }
    }
}

/// io_uring_enter(2) flags and the extended-argument layout (include/uapi/linux/io_uring.h).
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
const IORING_ENTER_SQ_WAKEUP: u32 = 1 << 1;
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;

#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// One io_uring_enter on `ticket`'s ring: submits its SQEs and sleeps until `want` CQEs are
/// unreaped, `timeout` passes (not an error) or a signal arrives (`Interrupted`). Called
/// without the instance's lock: it touches no user-space ring memory. Returns how many of
/// the SQEs it was given the kernel did not take, to be submitted again.
fn enter_and_wait(ticket: SleepTicket, timeout: Option<Duration>) -> (u32, std::io::Result<()>) {
    let mut flags = IORING_ENTER_GETEVENTS;
    if ticket.wake_sqpoll {
        flags |= IORING_ENTER_SQ_WAKEUP;
    }
    let ts = timeout.map(|t| KernelTimespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let arg = ts.as_ref().map(|ts| GeteventsArg {
        sigmask: 0,
        sigmask_sz: 0,
        min_wait_usec: 0,
        ts: ts as *const KernelTimespec as u64,
    });
    let (argp, argsz) = match &arg {
        Some(a) => {
            flags |= IORING_ENTER_EXT_ARG;
            (
                a as *const GeteventsArg as *const libc::c_void,
                std::mem::size_of::<GeteventsArg>(),
            )
        }
        None => (std::ptr::null(), 0),
    };
    // SAFETY: the ring descriptor stays open while anyone sleeps on it (`close` waits for
    // the sleeper); `argp` is null or points at `arg`, which (with the timespec it points
    // at) lives until the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            ticket.fd,
            ticket.to_submit,
            ticket.want,
            flags,
            argp,
            argsz,
        )
    };
    if rc >= 0 {
        let taken = (rc as u64).min(u64::from(ticket.to_submit)) as u32;
        return (ticket.to_submit - taken, Ok(()));
    }
    let err = std::io::Error::last_os_error();
    // A negative result means the SQEs were not all taken: the kernel returns how many it
    // took when it took any, whatever the wait then did.
    let unsubmitted = ticket.to_submit;
    match err.raw_os_error() {
        Some(libc::ETIME) | Some(libc::EBUSY) | Some(libc::EAGAIN) => (unsubmitted, Ok(())),
        _ => (unsubmitted, Err(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IoUringConfig, RingMode};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    fn shared() -> Arc<Shared> {
        let config = IoUringConfig {
            mode: RingMode::Standard,
            ring_entries: 8,
            buffer_size: 4096,
            buffer_count: 8,
            ..IoUringConfig::default()
        };
        Shared::new(UringBackend::new(0, &config, 9).unwrap())
    }

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills both descriptors on success, checked below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are ours.
        unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    // Threads waiting on one instance are tested from Python (tests/test_shared_instances.py,
    // tests/test_uring_waiters.py): under valgrind, which the CI runs these tests in, a
    // thread asleep in io_uring_enter holds valgrind's lock and no other thread runs.

    #[test]
    fn a_probe_times_out_without_losing_its_tokens_and_close_refuses_later_calls() {
        let s = shared();
        let (reader, writer) = pipe();
        let r = s
            .access()
            .run(|b| b.register_fd(reader.as_raw_fd()))
            .unwrap();
        let w = s
            .access()
            .run(|b| b.register_fd(writer.as_raw_fd()))
            .unwrap();
        let read = s.access().run(|b| b.submit_read(r, 3, 0)).unwrap();
        s.claim(&[read]).unwrap();
        assert!(matches!(
            s.claim(&[read]),
            Err(WaitError::Claim(ClaimError::AlreadyClaimed(_)))
        ));
        assert!(matches!(
            s.wait_claimed(&[read], Some(Instant::now())),
            Err(WaitError::TimedOut)
        ));
        let write = s.access().run(|b| b.submit_append(w, b"abc")).unwrap();
        let mut out = Vec::new();
        while !out.iter().any(|c: &Completion| c.token == write) {
            s.wait(1, Some(Instant::now() + Duration::from_secs(5)), &mut out)
                .unwrap();
        }
        assert!(
            out.iter().all(|c| c.token != read),
            "a claimed token went to wait()"
        );
        let got = loop {
            match s.wait_claimed(&[read], Some(Instant::now() + Duration::from_secs(5))) {
                Err(WaitError::Interrupted) => continue,
                other => break other.unwrap(),
            }
        };
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data.as_deref(), Some(&b"abc"[..]));
        s.close().unwrap();
        assert!(s.is_closed());
        assert!(matches!(
            s.access().run(|b| b.submit_append(w, b"x")),
            Err(WaitError::Closed)
        ));
        s.close().unwrap(); // twice is harmless
    }
}
