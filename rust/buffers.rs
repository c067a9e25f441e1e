//! The registered buffer pool: one page-aligned arena cut into equal buffers, a free list,
//! and a record of who holds each buffer.
//!
//! The arena comes from `mmap`, so every buffer starts on a page boundary (what O_DIRECT
//! needs) and the memory does not move for as long as the kernel holds it registered. A
//! buffer is lent from `acquire` until `release`: first to the caller, who fills it
//! (`buffer_mut`), then, once an SQE names it, to the kernel (`lend_to_kernel`), which reads
//! it for a write or fills it for a read. While the kernel holds it no `&mut` (or, for a
//! read, `&`) of it may exist, so `buffer_mut` and `filled` refuse it: the ring manager
//! takes it back (`returned_by_kernel`, `release`) only when the kernel has posted the
//! completion of the last operation that uses it, which is what makes reading, reusing or
//! unmapping it safe.
//!
//! The arena is not inherited by a child process (MADV_DONTFORK). Registering pins its pages,
//! and fork() must copy pinned anonymous pages at once rather than share them copy-on-write,
//! so every live instance would add its whole pool to the cost of every fork(); and a child
//! has no use for it (an instance inherited across fork() refuses every call).

use std::io;
use std::ptr::NonNull;

/// Who holds a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Free,
    /// Lent out and not named by an SQE: its holder may fill or read it.
    Caller,
    /// Named by an SQE in flight: the kernel reads it, or writes into it for a read.
    Kernel,
}

pub struct BufferPool {
    arena: NonNull<u8>,
    arena_len: usize,
    buffer_size: usize,
    count: usize,
    /// Indices of buffers nobody holds; a stack, so the most recently used (cache-warm)
    /// buffer is handed out first.
    free: Vec<u32>,
    holders: Vec<Holder>,
    /// Never unmap the arena: the kernel may still use it (see `leak`).
    leaked: bool,
}

// SAFETY: the pool owns its arena exclusively; moving it between threads moves that
// ownership. Shared access is always through `&mut self` or behind the caller's lock.
unsafe impl Send for BufferPool {}

impl BufferPool {
    /// `buffer_size` must be a non-zero multiple of the page size (the config checks it).
    pub fn new(buffer_size: usize, count: usize) -> io::Result<Self> {
        assert!(
            buffer_size > 0 && count > 0,
            "pool needs at least one non-empty buffer"
        );
        let arena_len = buffer_size
            .checked_mul(count)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                arena_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let arena = NonNull::new(addr.cast::<u8>()).expect("mmap never returns null on success");
        // SAFETY: advice on the mapping just made; it changes only what fork() copies. A
        // refusal (a kernel without it) costs only speed, so it is not an error.
        unsafe { libc::madvise(addr, arena_len, libc::MADV_DONTFORK) };
        let count_u32 = u32::try_from(count).expect("buffer_count is checked to fit in u32");
        Ok(Self {
            arena,
            arena_len,
            buffer_size,
            count,
            free: (0..count_u32).rev().collect(),
            holders: vec![Holder::Free; count],
            leaked: false,
        })
    }

    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// One iovec per buffer, in index order, for `io_uring_register_buffers`.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                iov_base: self.pointer(i as u32).cast(),
                iov_len: self.buffer_size,
            })
            .collect()
    }

    pub fn acquire(&mut self) -> Option<u32> {
        let index = self.free.pop()?;
        self.holders[index as usize] = Holder::Caller;
        Some(index)
    }

    /// Returns a lent buffer. Releasing a buffer that is not lent is a bug in the caller
    /// (it would hand one buffer to two operations), so it panics rather than corrupt data.
    /// A buffer the kernel holds is released only once the kernel has posted the last
    /// completion of the operation that used it.
    pub fn release(&mut self, index: u32) {
        let holder = &mut self.holders[index as usize];
        assert!(*holder != Holder::Free, "buffer {index} released twice");
        *holder = Holder::Free;
        self.free.push(index);
    }

    /// An SQE about to be pushed names the buffer: from now on the kernel may read it, or
    /// write into it, until `returned_by_kernel` or `release`.
    pub fn lend_to_kernel(&mut self, index: u32) {
        let holder = &mut self.holders[index as usize];
        assert!(
            *holder == Holder::Caller,
            "buffer {index} handed to the kernel while {holder:?}"
        );
        *holder = Holder::Kernel;
    }

    /// The kernel posted the last completion of the operation that used the buffer: its
    /// holder may read it again (the bytes of a read).
    pub fn returned_by_kernel(&mut self, index: u32) {
        let holder = &mut self.holders[index as usize];
        assert!(
            *holder == Holder::Kernel,
            "buffer {index} is not the kernel's"
        );
        *holder = Holder::Caller;
    }

    /// Keeps the arena mapped for the rest of the process: for when operations that use it
    /// could not be waited out, so the kernel may still read or write it.
    pub fn leak(&mut self) {
        self.leaked = true;
    }

    pub fn is_lent(&self, index: u32) -> bool {
        self.holders[index as usize] != Holder::Free
    }

    pub fn pointer(&self, index: u32) -> *mut u8 {
        assert!(
            (index as usize) < self.count,
            "buffer index {index} out of range"
        );
        // SAFETY: index < count, so the offset stays inside the arena.
        unsafe { self.arena.as_ptr().add(index as usize * self.buffer_size) }
    }

    /// The whole of a buffer lent to the caller, to copy data into before an SQE names it.
    /// Panics for a buffer the kernel holds: it may be reading it, or filling it for a read.
    pub fn buffer_mut(&mut self, index: u32) -> &mut [u8] {
        let holder = self.holders[index as usize];
        assert!(
            holder == Holder::Caller,
            "buffer {index} borrowed while {holder:?}"
        );
        // SAFETY: the range is inside the arena, and `&mut self` makes it the only access
        // from this side; the kernel does not hold it (checked above), and will only once
        // the caller has handed it over with `lend_to_kernel`, after this borrow ends.
        unsafe { std::slice::from_raw_parts_mut(self.pointer(index), self.buffer_size) }
    }

    /// The first `len` bytes of a buffer the kernel has given back (what a read put there).
    pub fn filled(&self, index: u32, len: usize) -> &[u8] {
        let holder = self.holders[index as usize];
        assert!(
            holder == Holder::Caller,
            "buffer {index} read while {holder:?}"
        );
        assert!(len <= self.buffer_size, "{len} bytes do not fit one buffer");
        // SAFETY: inside the arena, and the kernel no longer writes it (checked above).
        unsafe { std::slice::from_raw_parts(self.pointer(index), len) }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: the arena was mapped by `new` with this length. The owner (the ring
        // manager) drops the pool only after the ring is gone or no buffer is in flight.
        unsafe {
            libc::munmap(self.arena.as_ptr().cast(), self.arena_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_and_distinct() {
        let pool = BufferPool::new(8192, 5).unwrap();
        let iovecs = pool.iovecs();
        assert_eq!(iovecs.len(), 5);
        for (i, v) in iovecs.iter().enumerate() {
            assert_eq!(v.iov_base as usize % 4096, 0, "buffer {i} not page aligned");
            assert_eq!(v.iov_len, 8192);
            if i > 0 {
                assert_eq!(v.iov_base as usize - iovecs[i - 1].iov_base as usize, 8192);
            }
        }
    }

    #[test]
    fn acquire_until_empty_then_release_reuses() {
        let mut pool = BufferPool::new(4096, 3).unwrap();
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        let c = pool.acquire().unwrap();
        assert_eq!(pool.acquire(), None);
        let mut seen = [a, b, c];
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        pool.release(b);
        assert_eq!(pool.free_count(), 1);
        assert_eq!(pool.acquire(), Some(b));
    }

    #[test]
    fn writes_to_one_buffer_stay_in_it() {
        let mut pool = BufferPool::new(4096, 2).unwrap();
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        pool.buffer_mut(a).fill(0xAA);
        pool.buffer_mut(b).fill(0x55);
        assert!(pool.buffer_mut(a).iter().all(|&x| x == 0xAA));
        assert!(pool.buffer_mut(b).iter().all(|&x| x == 0x55));
    }

    #[test]
    #[should_panic(expected = "borrowed while Kernel")]
    fn a_buffer_the_kernel_holds_cannot_be_borrowed() {
        let mut pool = BufferPool::new(4096, 1).unwrap();
        let a = pool.acquire().unwrap();
        pool.lend_to_kernel(a);
        pool.buffer_mut(a);
    }

    #[test]
    #[should_panic(expected = "read while Kernel")]
    fn a_buffer_being_filled_cannot_be_read() {
        let mut pool = BufferPool::new(4096, 1).unwrap();
        let a = pool.acquire().unwrap();
        pool.lend_to_kernel(a);
        pool.filled(a, 10);
    }

    #[test]
    fn the_arena_is_not_inherited_by_a_child() {
        let pool = BufferPool::new(4096, 3).unwrap();
        let start = pool.pointer(0) as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // The kernel shows MADV_DONTFORK as "dc" among the mapping's VmFlags.
        let mut in_arena = false;
        let mut flags_seen = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((from, to)) = range.split_once('-') {
                    if let (Ok(from), Ok(to)) = (
                        usize::from_str_radix(from, 16),
                        usize::from_str_radix(to, 16),
                    ) {
                        in_arena = from <= start && start < to;
                        continue;
                    }
                }
            }
            if in_arena {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    assert!(
                        flags.split_whitespace().any(|f| f == "dc"),
                        "the arena's VmFlags lack dc: {flags}"
                    );
                    flags_seen = true;
                }
            }
        }
        assert!(flags_seen, "the arena's mapping was not found in smaps");
    }

    #[test]
    #[should_panic(expected = "released twice")]
    fn double_release_is_caught() {
        let mut pool = BufferPool::new(4096, 1).unwrap();
        let a = pool.acquire().unwrap();
        pool.release(a);
        pool.release(a);
    }
}
