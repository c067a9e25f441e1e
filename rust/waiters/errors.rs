//! What a waiting call can end with other than its result.

use crate::backend::{BackendError, ClaimError};

#[derive(Debug)]
pub enum WaitError {
    Closed,
    /// A signal arrived, or a slice passed: run signal handlers and call again.
    Interrupted,
    TimedOut,
    Claim(ClaimError),
    Backend(BackendError),
}

impl From<BackendError> for WaitError {
    fn from(e: BackendError) -> Self {
        WaitError::Backend(e)
    }
}

impl From<std::io::Error> for WaitError {
    fn from(e: std::io::Error) -> Self {
        WaitError::Backend(BackendError::Os(e))
    }
}
