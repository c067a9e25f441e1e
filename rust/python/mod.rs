//! The PyO3 layer only: taking arguments, releasing the GIL, mapping errors, handing back
//! values. Semantics live in `crate::backend`, waiting in `crate::waiters`, the log in
//! `crate::wal`; nothing here decides what an operation does. One concern per file:
//!
//! - `module`: the `#[pymodule] _native` and its module-level functions;
//! - `errors`: the exception classes and the mapping of OS errors; `call_error`: what a
//!   `UringStorageIo` call fails with and the exception each becomes;
//! - `values`: `RingMode`, `IoUringConfig`, `IoFd`, `IoCompletion`;
//! - `arguments`: checked extraction of ints, descriptors, timeouts, tokens;
//! - `buffer`: the buffer-protocol view a write borrows its bytes through;
//! - `class` and `methods`: the `UringStorageIo` class (`unsupported` off Linux);
//! - `fastcall`: positional-only METH_FASTCALL entry points for the hottest submit methods;
//! - `wal`: the log's classes and functions (`WalFramer`, `WalReplay`...).

mod arguments;
mod buffer;
mod errors;
mod module;
mod values;
mod wal;

#[cfg(target_os = "linux")]
mod call_error;
#[cfg(target_os = "linux")]
mod class;
#[cfg(target_os = "linux")]
mod fastcall;
#[cfg(target_os = "linux")]
mod methods;
#[cfg(not(target_os = "linux"))]
mod unsupported;
