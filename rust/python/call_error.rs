//! What a call of `UringStorageIo` can fail with (the backend's error, a Python error
//! raised while taking its arguments, or the instance being closed), and the exception
//! each becomes.

use pyo3::exceptions::{PyTimeoutError, PyValueError};
use pyo3::prelude::*;

use super::errors::{
    os_error, BadFdError, BufferExhaustedError, ClosedError, QueueFullError, StorageIoError,
};
use crate::backend::BackendError;
use crate::waiters::WaitError;

/// A failure of a call, before or inside the backend.
pub(super) enum CallError {
    Backend(BackendError),
    Python(PyErr),
    Closed,
}

impl From<BackendError> for CallError {
    fn from(e: BackendError) -> Self {
        CallError::Backend(e)
    }
}

impl From<std::io::Error> for CallError {
    fn from(e: std::io::Error) -> Self {
        CallError::Backend(BackendError::Os(e))
    }
}

impl From<PyErr> for CallError {
    fn from(e: PyErr) -> Self {
        CallError::Python(e)
    }
}

impl From<WaitError> for CallError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Closed => CallError::Closed,
            WaitError::Backend(b) => CallError::Backend(b),
            WaitError::Claim(c) => CallError::Python(PyValueError::new_err(c.to_string())),
            // Callers handle these two themselves; reaching here is a bug of ours.
            WaitError::Interrupted | WaitError::TimedOut => {
                CallError::Python(PyTimeoutError::new_err("interrupted wait was not retried"))
            }
        }
    }
}

impl From<CallError> for PyErr {
    fn from(e: CallError) -> PyErr {
        match e {
            CallError::Closed => ClosedError::new_err("this StorageIo instance is closed"),
            CallError::Python(err) => err,
            CallError::Backend(BackendError::BadFd(m)) => BadFdError::new_err(m),
            CallError::Backend(BackendError::BufferExhausted(m)) => {
                BufferExhaustedError::new_err(m)
            }
            CallError::Backend(BackendError::QueueFull(m)) => QueueFullError::new_err(m),
            CallError::Backend(BackendError::TooManyFiles(m)) => StorageIoError::new_err(m),
            CallError::Backend(BackendError::Invalid(m)) => PyValueError::new_err(m),
            CallError::Backend(BackendError::NoRoom) => {
                BufferExhaustedError::new_err("no registered buffer is free")
            }
            CallError::Backend(BackendError::Os(err)) => os_error(&err),
        }
    }
}

pub(super) type CallResult<T> = Result<T, CallError>;
