//! The entries of the submission queue that the kernel has not taken, seen through a second
//! mapping of the ring, so that an `io_uring_enter` that refused them can be answered by
//! taking them back.
//!
//! io_uring_enter takes SQEs from the queue's head up to the tail we published. When it fails
//! before taking them (EAGAIN, EBUSY, EINTR, or an error that will not go away), the entries
//! stay in the queue, and the next enter that is told to submit takes them. For a transient
//! error that is what we want: they are simply sent again. For any other error the
//! operations must fail instead, and their SQEs must never reach the kernel afterwards (their
//! buffers go back to the pool, to be reused). The `io-uring` crate has no call that takes an
//! entry back, so this module maps the queue's control words and SQE array a second time,
//! reads the user data of the entries between head and tail, and moves the tail back to the
//! head.
//!
//! Sound only while no other thread can make the kernel take entries: in STANDARD mode every
//! io_uring_enter that submits is made under the manager (`&mut RingManager`), and the
//! waiters' raw enters submit nothing. Under SQPOLL the kernel's thread takes entries on its
//! own at any time, so nothing is ever taken back there: an enter under SQPOLL only wakes the
//! thread or waits, and a failed one loses no entry.
//!
//! Rejected alternative: rewriting refused SQEs into no-ops in place. It needs the same
//! mapping, leaves entries for a later enter to carry, and their no-op completions would have
//! to be told from the wake-ups'.

use io_uring::IoUring;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `struct io_uring_params` as the kernel lays it out (include/uapi/linux/io_uring.h), which
/// `io_uring::Parameters` wraps transparently.
#[repr(C)]
struct RawParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: [u32; 10],
}

#[repr(C)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

const IORING_OFF_SQ_RING: libc::off_t = 0;
const IORING_OFF_SQES: libc::off_t = 0x1000_0000;
const IORING_SETUP_NO_SQARRAY: u32 = 1 << 16;
const SQE_SIZE: usize = 64;
/// Where an SQE keeps its user data.
const SQE_USER_DATA: usize = 32;

struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: i32, offset: libc::off_t, len: usize) -> io::Result<Self> {
        // SAFETY: a shared mapping of the ring's own descriptor at an offset the kernel
        // defines for it, with no address hint; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = Self {
            addr: NonNull::new(addr.cast()).expect("mmap never returns null on success"),
            len,
        };
        // A child process has no use for the parent's ring (see `crate::ring`).
        // SAFETY: advice on a range this mapping owns.
        unsafe { libc::madvise(addr, len, libc::MADV_DONTFORK) };
        Ok(mapping)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `new` with this length and nothing refers to it
        // once its owner is dropped.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

pub(super) struct Unconsumed {
    ring: Mapping,
    sqes: Mapping,
    head: usize,
    tail: usize,
    /// Offset of the index array, or `None` when the ring has none (NO_SQARRAY).
    array: Option<usize>,
    mask: u32,
}

// SAFETY: the mappings belong to this value alone; the words it touches are shared with the
// kernel, never with another thread of ours (the manager is behind its owner's lock).
unsafe impl Send for Unconsumed {}

impl Unconsumed {
    pub(super) fn new(ring: &IoUring) -> io::Result<Self> {
        // SAFETY: `Parameters` is a transparent wrapper of the kernel's io_uring_params,
        // whose layout `RawParams` repeats.
        let params =
            unsafe { &*(ring.params() as *const io_uring::Parameters as *const RawParams) };
        let fd = std::os::fd::AsRawFd::as_raw_fd(ring);
        let off = &params.sq_off;
        let ring_len = off.array as usize + params.sq_entries as usize * 4;
        let sqes_len = params.sq_entries as usize * SQE_SIZE;
        let array = (params.flags & IORING_SETUP_NO_SQARRAY == 0).then_some(off.array as usize);
        let ring_map = Mapping::new(fd, IORING_OFF_SQ_RING, ring_len)?;
        let sqes = Mapping::new(fd, IORING_OFF_SQES, sqes_len)?;
        // SAFETY: ring_mask is a word inside the ring mapping, written once by the kernel.
        let mask = unsafe {
            ring_map
                .addr
                .as_ptr()
                .add(off.ring_mask as usize)
                .cast::<u32>()
                .read()
        };
        Ok(Self {
            ring: ring_map,
            sqes,
            head: off.head as usize,
            tail: off.tail as usize,
            array,
            mask,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of the kernel's offsets of a 4-byte aligned word inside the
        // ring mapping, which lives as long as `self`.
        unsafe { &*self.ring.addr.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// The user data of the SQE at position `position` of the queue.
    fn user_data(&self, position: u32) -> u64 {
        let slot = position & self.mask;
        let index = match self.array {
            // SAFETY: the array has one u32 per entry and `slot` <= mask < entries.
            Some(array) => unsafe {
                self.ring
                    .addr
                    .as_ptr()
                    .add(array + slot as usize * 4)
                    .cast::<u32>()
                    .read_volatile()
            },
            None => slot,
        } & self.mask;
        // SAFETY: `index` <= mask < entries, so the SQE lies inside the SQE mapping; its
        // user data is a u64 at an 8-byte aligned offset of it.
        unsafe {
            self.sqes
                .addr
                .as_ptr()
                .add(index as usize * SQE_SIZE + SQE_USER_DATA)
                .cast::<u64>()
                .read_volatile()
        }
    }

    /// Takes back every entry the kernel has not taken: the tail moves back to the head,
    /// and the user data of the entries comes back, oldest first.
    ///
    /// The caller guarantees that no io_uring_enter can take entries meanwhile (see the
    /// module's comment), and that no `SubmissionQueue` of the crate is alive (it would
    /// publish its own copy of the tail when dropped).
    pub(super) fn take_back(&mut self) -> Vec<u64> {
        let head = self.word(self.head).load(Ordering::Acquire);
        let tail = self.word(self.tail).load(Ordering::Acquire);
        let taken: Vec<u64> = (0..tail.wrapping_sub(head))
            .map(|i| self.user_data(head.wrapping_add(i)))
            .collect();
        self.word(self.tail).store(head, Ordering::Release);
        taken
    }
}
