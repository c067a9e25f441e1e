//! The durable log's hot path in plain Rust: the on-disk format (`format`), framing records
//! into the bytes a commit writes (`framer`), and reading segments back for recovery and
//! replay (`scan`). Its PyO3 crossing is `python::wal`, built only with the `python` feature.
//!
//! The log's policy that needs the `StorageIo` (group commit, poisoning, the lock, segment
//! files) lives in Python (`python/storage_io/wal/`): it is I/O orchestration, not per-byte
//! work, and it must run on any backend.

pub mod format;
pub mod framer;
pub mod mapping;
pub mod scan;
