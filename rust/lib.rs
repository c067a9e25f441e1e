//! storage_io's native core: a per-core io_uring write path (Linux) and its Python binding.
//!
//! Plain Rust below `python`, so `cargo test` checks the core without an interpreter.
//!
//! Every `unsafe` block states what makes it sound in a `// SAFETY:` comment of its own, and
//! an `unsafe fn` spells out the unsafe operations in its body: both are lint errors here,
//! so the habit does not depend on review.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod descriptor;
pub mod wal;

#[cfg(target_os = "linux")]
pub mod backend;
#[cfg(target_os = "linux")]
pub mod buffers;
#[cfg(target_os = "linux")]
pub mod fork;
#[cfg(target_os = "linux")]
pub mod handback;
#[cfg(target_os = "linux")]
pub mod manager;
#[cfg(target_os = "linux")]
pub mod ring;
#[cfg(target_os = "linux")]
pub mod waiters;

#[cfg(feature = "python")]
mod python;
