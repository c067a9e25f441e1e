//! The registered buffer pool: one page-aligned arena cut into equal buffers, a free list,
//! and a record of which buffers are lent out.
//!
//! The arena comes from `mmap`, so every buffer starts on a page boundary (what O_DIRECT
//! needs) and the memory does not move for as long as the kernel holds it registered. A
//! buffer is "lent" from `acquire` until `release`; the ring manager releases a buffer only
//! when the kernel has posted the completion of the last operation that reads it, which is
//! what makes reusing or unmapping it safe.

use std::io;
use std::ptr::NonNull;

pub struct BufferPool {
    arena: NonNull<u8>,
    arena_len: usize,
    buffer_size: usize,
    count: usize,
    /// Indices of buffers nobody holds; a stack, so the most recently used (cache-warm)
    /// buffer is handed out first.
    free: Vec<u32>,
    lent: Vec<bool>,
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
        let count_u32 = u32::try_from(count).expect("buffer_count is checked to fit in u32");
        Ok(Self {
            arena,
            arena_len,
            buffer_size,
            count,
            free: (0..count_u32).rev().collect(),
            lent: vec![false; count],
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
        self.lent[index as usize] = true;
        Some(index)
    }

    /// Returns a lent buffer. Releasing a buffer that is not lent is a bug in the caller
    /// (it would hand one buffer to two operations), so it panics rather than corrupt data.
    pub fn release(&mut self, index: u32) {
        let slot = &mut self.lent[index as usize];
        assert!(*slot, "buffer {index} released twice");
        *slot = false;
        self.free.push(index);
    }

    /// Keeps the arena mapped for the rest of the process: for when operations that use it
    /// could not be waited out, so the kernel may still read or write it.
    pub fn leak(&mut self) {
        self.leaked = true;
    }

    pub fn is_lent(&self, index: u32) -> bool {
        self.lent[index as usize]
    }

    pub fn pointer(&self, index: u32) -> *mut u8 {
        assert!(
            (index as usize) < self.count,
            "buffer index {index} out of range"
        );
        // SAFETY: index < count, so the offset stays inside the arena.
        unsafe { self.arena.as_ptr().add(index as usize * self.buffer_size) }
    }

    /// The whole of a lent buffer, to copy data into before the kernel sees it.
    pub fn buffer_mut(&mut self, index: u32) -> &mut [u8] {
        assert!(self.is_lent(index), "buffer {index} is not lent");
        // SAFETY: the range is inside the arena, and `&mut self` makes it the only access
        // from this side; the kernel reads it only after the caller has pushed an SQE.
        unsafe { std::slice::from_raw_parts_mut(self.pointer(index), self.buffer_size) }
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
    #[should_panic(expected = "released twice")]
    fn double_release_is_caught() {
        let mut pool = BufferPool::new(4096, 1).unwrap();
        let a = pool.acquire().unwrap();
        pool.release(a);
        pool.release(a);
    }
}
