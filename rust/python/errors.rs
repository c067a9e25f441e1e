//! The exception classes of `storage_io._native` and the mapping of an OS error to an
//! `OSError` with its errno (so Python raises FileNotFoundError and friends). What a call
//! of the class can fail with is mapped in `call_error`.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError};
use pyo3::prelude::*;

create_exception!(
    storage_io,
    StorageIoError,
    PyException,
    "Base of every storage_io error."
);

create_exception!(
    storage_io,
    QueueFullError,
    StorageIoError,
    "The submission queue is full."
);

create_exception!(
    storage_io,
    BadFdError,
    StorageIoError,
    "Not a live IoFd of this instance."
);

create_exception!(
    storage_io,
    ClosedError,
    StorageIoError,
    "The instance is closed."
);

create_exception!(
    storage_io,
    BufferExhaustedError,
    StorageIoError,
    "No registered buffer is free and none can come back."
);

create_exception!(
    storage_io,
    UringUnavailableError,
    StorageIoError,
    "io_uring cannot be used here; the message says why."
);

/// An OSError whose `errno` is set (so Python maps it to FileNotFoundError and friends).
pub(super) fn os_error(err: &std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, strerror(errno))),
        None => {
            // An error of ours that explains an errno underneath it: keep both.
            let inner = err
                .get_ref()
                .and_then(|e| e.source())
                .and_then(|e| e.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error);
            match inner {
                Some(errno) => PyOSError::new_err((errno, err.to_string())),
                None => PyOSError::new_err(err.to_string()),
            }
        }
    }
}

pub(super) fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}
