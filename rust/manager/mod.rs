//! The per-core ring manager: one ring, its registered buffers and files, the table of
//! operations in flight keyed by one token counter, and the single place where completions
//! are turned back into finished operations (short writes continued, buffers returned).
//!
//! An operation is what a caller submitted (one token). A write may travel as several
//! parts, one per registered buffer, each its own SQE; the SQE's user_data is
//! `token << PART_BITS | part`, so every CQE finds its operation and its part.
//!
//! One concern per file:
//! - `ring_manager`: the `RingManager` value, setting it up (and probing that the ring
//!   works), its accessors and its teardown;
//! - `tokens`: the token counter, how a token and a part share an SQE's user_data, and the
//!   hasher of the pending table;
//! - `pending`: the table of operations in flight: what each is and where its bytes live;
//! - `submission`: building SQEs and queueing them (with a backlog when the queue is full),
//!   and handing them to the kernel, taking back what it refused for good;
//! - `unconsumed`: the queue's entries the kernel has not taken, and taking them back;
//! - `sleeping`: io_uring_enter for waiters, and what a waiter sleeping without the lock
//!   needs (`SleepTicket`);
//! - `completion`: reaping CQEs: short writes continued, work the kernel cancelled reissued,
//!   work we cancelled finished, finished operations handed to the backend;
//! - `reads`: how a read travels through the ring;
//! - `eventfd`: an eventfd the kernel signals for every completion (for event loops).

mod completion;
mod eventfd;
mod pending;
pub mod reads;
mod ring_manager;
mod sleeping;
mod submission;
#[cfg(test)]
mod tests;
mod tokens;
mod unconsumed;

pub use completion::{Done, Finished};
pub use reads::STREAM_OFFSET;
pub use ring_manager::{Metrics, RingManager};
pub use sleeping::{SleepTicket, RETRY_REFUSED};
pub use tokens::{TokenHasher, TokenMap};
