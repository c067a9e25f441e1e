//! What a child process gives up of the io_uring instances it inherits across fork().
//!
//! A child may not use an inherited instance (every call raises ClosedError there), but it
//! still holds copies of the instance's descriptors: the ring's, which keeps the parent's
//! ring (and its SQPOLL thread) alive after the parent closes it, and the backend's own
//! descriptors of the registered files. The sync backend closes its copies in the child;
//! this module does the same for io_uring instances: every descriptor an instance keeps is
//! listed here while it is open, and a fork handler closes them all in the child. (The
//! memory of the ring and the buffer pool is not inherited at all: MADV_DONTFORK, see
//! `crate::ring` and `crate::buffers`.)
//!
//! The list is guarded by a spin lock that the fork handler takes before fork() and
//! releases after it, in both processes: the child then finds the list consistent even if
//! another thread was changing it at that moment, and closes descriptors with nothing but
//! close(2), which is safe in a child of a threaded process.

use std::cell::UnsafeCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

struct Tracked {
    locked: AtomicBool,
    /// (instance, descriptor) of every descriptor a live instance keeps.
    descriptors: UnsafeCell<Vec<(u64, RawFd)>>,
}

// SAFETY: `descriptors` is only touched while `locked` is held (see `with`).
unsafe impl Sync for Tracked {}

static TRACKED: Tracked = Tracked {
    locked: AtomicBool::new(false),
    descriptors: UnsafeCell::new(Vec::new()),
};

static INSTALL: Once = Once::new();

fn lock() {
    while TRACKED
        .locked
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

fn unlock() {
    TRACKED.locked.store(false, Ordering::Release);
}

fn with<R>(f: impl FnOnce(&mut Vec<(u64, RawFd)>) -> R) -> R {
    INSTALL.call_once(|| {
        // SAFETY: the handlers only take or release the spin lock and close descriptors,
        // which is what fork handlers may do.
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_in_parent),
                Some(after_in_child),
            )
        };
    });
    lock();
    // SAFETY: the spin lock is held, so this is the only reference to the list.
    let result = f(unsafe { &mut *TRACKED.descriptors.get() });
    unlock();
    result
}

extern "C" fn before_fork() {
    lock();
}

extern "C" fn after_in_parent() {
    unlock();
}

extern "C" fn after_in_child() {
    // SAFETY: `before_fork` took the lock in the parent, and this is the child's only
    // thread, so this is the only reference to the list.
    let descriptors = unsafe { &mut *TRACKED.descriptors.get() };
    for &(_, fd) in descriptors.iter() {
        // SAFETY: close(2) on a descriptor this process inherited; nothing in the child
        // uses it (an inherited instance refuses every call and never closes it itself).
        unsafe { libc::close(fd) };
    }
    // Not freed: the child may not be able to allocate safely yet; emptied for any fork the
    // child makes in turn.
    descriptors.clear();
    unlock();
}

/// `instance` keeps `fd` open from now on.
pub fn track(instance: u64, fd: RawFd) {
    with(|list| list.push((instance, fd)));
}

/// `instance` is about to close `fd`: list it no more (before closing, so that a fork in
/// between closes nothing that another owner may have reopened under that number).
pub fn untrack(instance: u64, fd: RawFd) {
    with(|list| list.retain(|&entry| entry != (instance, fd)));
}

/// Every descriptor `instance` keeps: about to be closed.
pub fn untrack_instance(instance: u64) {
    with(|list| list.retain(|&(owner, _)| owner != instance));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_closes_the_tracked_descriptors_and_the_parent_keeps_them() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        track(u64::MAX, fd);
        // SAFETY: the child only makes async-signal-safe calls (fcntl, _exit).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: fcntl on a descriptor number; EBADF if the fork handler closed it.
            let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(if open { 1 } else { 0 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child made above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        untrack_instance(u64::MAX);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "open in the child"
        );
        // SAFETY: fcntl on a descriptor we own.
        let still_open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        assert!(still_open, "closed in the parent");
    }
}
