//! `UringStorageIo`'s semantics in plain Rust, below the PyO3 layer, one concern per file:
//!
//! - `instance`: the `UringBackend` value, its counters, and the calls that touch all of it
//!   (flush, poll, drained);
//! - `files`: the file table: registering a descriptor, handles and their generations,
//!   deregistering;
//! - `batches`: placing a write: the append position reserved at submission, and write
//!   combining (writes that follow each other byte for byte share one SQE);
//! - `room`: whether a submission has buffers (or held slots) to go now, and how many
//!   completions to wait for when it has not;
//! - `ordering`: datasyncs held back until every earlier write to their file is done;
//! - `nowait`: submissions that never wait (an event loop's), queued in call order
//!   while there is no room;
//! - `shared_syncs`: datasyncs released together sharing one fdatasync;
//! - `reads`: reads, held behind earlier writes as datasyncs are;
//! - `streams`: pipes and sockets, whose operations go one at a time, in order;
//! - `completions`: what the ring reaped, turned into the caller's completions;
//! - `caller_work`: a batch or a datasync a waiting caller runs in its own thread;
//! - `background_flush`: ranged fdatasyncs issued as writes complete;
//! - `cancel`: what close no longer waits for, completed with -ECANCELED;
//! - `errors`: what a call can fail with.
//!
//! The waiting itself (threads, the lock, sleeping in the kernel) is `crate::waiters`'s.

mod background_flush;
mod batches;
mod caller_work;
mod cancel;
mod completions;
mod errors;
mod files;
mod instance;
mod nowait;
mod ordering;
mod reads;
mod room;
mod shared_syncs;
pub mod streams;
#[cfg(test)]
mod tests;

pub use crate::handback::{ClaimError, Completion};
pub use batches::Batch;
pub use caller_work::{CallerWork, WorkOutcome, IN_CALLER_MIN_BUDGET};
pub use errors::BackendError;
pub use files::{prepare_registration, Handle, PreparedFile, Retired};
pub use instance::{OperationCounts, UringBackend};
pub use nowait::{Request, QUEUE_BOUND};
pub use ordering::Held;
