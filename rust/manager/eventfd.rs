//! Completion notification through an eventfd, for callers that wait in an event loop
//! (storage_io.aio) instead of in `io_uring_enter`.
//!
//! Plain IORING_REGISTER_EVENTFD: the kernel signals the eventfd for every CQE it posts.
//! IORING_REGISTER_EVENTFD_ASYNC was rejected: it signals only for completions that went
//! through an io-wq worker, so a write finished inline at submission never wakes the
//! waiter (the lost wake-ups of caio issue 69).

use std::io;

use super::RingManager;

impl RingManager {
    pub fn register_eventfd(&self, eventfd: std::os::fd::RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(eventfd)
    }

    pub fn unregister_eventfd(&self) -> io::Result<()> {
        self.ring.submitter().unregister_eventfd()
    }
}
