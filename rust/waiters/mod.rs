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
//! and only then waits for what is in flight (cancelling what cannot finish, see `closing`)
//! and frees the ring: nothing is freed under a thread that still uses it.
//!
//! Signals: a sleeper interrupted by one (EINTR), and a condvar waiter every `SLICE`, return
//! `Interrupted`, so that the caller can run its signal handlers (Python's
//! KeyboardInterrupt) and call again; nothing is lost by that.
//!
//! Rejected alternatives: every waiter in the kernel at once (a waiter whose completions
//! another one reaped sleeps on, since no CQE is left for it); a dedicated reaper thread
//! (a thread per instance, and a hop to it and back on every completion, which is the cost
//! the in-caller work exists to avoid).

//!
//! One concern per file: `shared` (the lock, the roles of sleeper and condvar waiter, and
//! the loop every waiting call runs), `calls` (the waiting calls themselves: wait,
//! wait_for, make_room, deregister), `closing` (close, with its deadlines and
//! cancellations), `kernel_sleep` (io_uring_enter without the lock), `errors`.

mod calls;
mod closing;
mod errors;
mod kernel_sleep;
mod shared;
#[cfg(test)]
mod tests;

pub use closing::{CloseDeadlines, CANCEL_GRACE, STREAM_GRACE};
pub use errors::WaitError;
pub use shared::{Access, Progress, Shared};
