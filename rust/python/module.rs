//! `storage_io._native` itself: the `#[pymodule]` that registers every class, exception
//! and function, and the two module-level functions both backends use.

use pyo3::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

use super::arguments::file_descriptor;
use super::errors::{
    os_error, BadFdError, BufferExhaustedError, ClosedError, QueueFullError, StorageIoError,
    UringUnavailableError,
};
use super::values::{PyIoCompletion, PyIoFd, PyIoUringConfig, PyRingMode};

static NEXT_INSTANCE_ID: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique id for a backend instance (both backends take one), so a handle
/// from one instance is recognised as foreign by another.
#[pyfunction]
pub(super) fn new_instance_id() -> u64 {
    NEXT_INSTANCE_ID.fetch_add(1, Ordering::Relaxed)
}

/// A new descriptor, owned by the caller, for writing to the file behind `fd` at explicit
/// offsets: a duplicate, or where `fd` has O_APPEND (which makes Linux ignore write
/// offsets) a reopening without it. Both backends keep one of these per registered file.
#[pyfunction]
fn descriptor_for_writes(py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<i32> {
    let raw = file_descriptor(fd)?;
    let owned = py
        .detach(|| crate::descriptor::descriptor_for_writes(raw))
        .map_err(|e| os_error(&e))?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(owned))
}

#[pymodule]
pub(super) fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StorageIoError", py.get_type::<StorageIoError>())?;
    m.add("QueueFullError", py.get_type::<QueueFullError>())?;
    m.add("BadFdError", py.get_type::<BadFdError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add(
        "BufferExhaustedError",
        py.get_type::<BufferExhaustedError>(),
    )?;
    m.add(
        "UringUnavailableError",
        py.get_type::<UringUnavailableError>(),
    )?;
    m.add_class::<PyRingMode>()?;
    m.add_class::<PyIoUringConfig>()?;
    m.add_class::<PyIoFd>()?;
    m.add_class::<PyIoCompletion>()?;
    m.add_function(wrap_pyfunction!(new_instance_id, m)?)?;
    m.add_function(wrap_pyfunction!(descriptor_for_writes, m)?)?;
    #[cfg(target_os = "linux")]
    super::class::add(m)?;
    #[cfg(not(target_os = "linux"))]
    super::unsupported::add(m)?;
    super::wal::add(m)
}
