//! What a backend call can fail with, before the PyO3 layer maps it to a Python exception
//! (`python::errors`).

use std::io;

use super::files::Handle;

#[derive(Debug)]
pub enum BackendError {
    BadFd(String),
    /// The buffers a write needs are all in flight; `make_room` and retry.
    NoRoom,
    /// No buffers will come back: nothing is in flight to free one.
    BufferExhausted(String),
    /// Too much is waiting to be handed to the kernel; wait for completions and retry.
    QueueFull(String),
    TooManyFiles(String),
    /// A value the call cannot take (a directory to register, for instance).
    Invalid(String),
    Os(io::Error),
}

impl From<io::Error> for BackendError {
    fn from(e: io::Error) -> Self {
        BackendError::Os(e)
    }
}

pub(super) fn bad_fd(handle: Handle, owner: u64) -> BackendError {
    if handle.owner != owner {
        BackendError::BadFd(format!("{handle} belongs to another StorageIo instance"))
    } else {
        BackendError::BadFd(format!(
            "{handle} is not registered (deregistered or never issued)"
        ))
    }
}
