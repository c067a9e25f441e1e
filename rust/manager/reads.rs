//! Reads through the ring: one operation per `submit_read`, continued until its length or
//! the end of the file, handing back the bytes it read.
//!
//! A read that fits one registered buffer is read into it with `ReadFixed` (the kernel
//! skips pinning the pages per call) and copied out once at completion. A longer one reads
//! into a private buffer of its own with plain `Read`, one SQE at a time, the buffer growing
//! as data arrives. Rejected alternative: splitting a long read over several registered
//! buffers in flight together would read a large file faster, but it holds most of the pool
//! for one caller and needs every part's result before it knows where the file ended; a log
//! is read back once, at recovery, where one sequential stream is what the disk does best.
//! Growing the private buffer instead of allocating `length` at once means that asking for
//! far more than the file holds (the usual "read the rest") costs only what is there.
//!
//! A short read is continued from where it stopped (a regular file reads short only at its
//! end, where the next read returns 0; a pipe reads what its writer has written so far), so
//! a completion is short only at the end of the file or stream.

use io_uring::{opcode, squeue, types};

use crate::buffers::BufferPool;

/// `offset` of an operation on a stream (pipe, socket): the kernel's "current position",
/// which a stream ignores. An offset passed as-is would be refused by some (ESPIPE).
pub const STREAM_OFFSET: u64 = u64::MAX;

/// The first allocation of a private read buffer; it doubles up to the read's length.
const PRIVATE_START: usize = 1 << 20;
/// The kernel moves at most this many bytes per read (MAX_RW_COUNT).
const MAX_BYTES_PER_SQE: usize = 0x7fff_f000;

pub enum ReadTarget {
    Registered(u32),
    Private(Vec<u8>),
}

pub struct ReadOp {
    pub target: ReadTarget,
    /// Where the read starts, or `STREAM_OFFSET`.
    pub offset: u64,
    pub len: usize,
    /// Bytes read so far.
    pub done: usize,
}

/// What a read's CQE means for it.
pub enum ReadStep {
    /// More to read: issue the next SQE.
    Continue,
    /// Finished: at the length, at the end of the file, or with an error.
    Finished(i64),
}

impl ReadOp {
    pub fn registered(buffer: u32, offset: u64, len: usize) -> Self {
        Self {
            target: ReadTarget::Registered(buffer),
            offset,
            len,
            done: 0,
        }
    }

    pub fn private(offset: u64, len: usize) -> Self {
        Self {
            target: ReadTarget::Private(Vec::with_capacity(len.min(PRIVATE_START))),
            offset,
            len,
            done: 0,
        }
    }

    /// Bytes of memory of its own this read holds (not counting the pool's).
    pub fn private_bytes(&self) -> usize {
        match &self.target {
            ReadTarget::Private(v) => v.capacity(),
            ReadTarget::Registered(_) => 0,
        }
    }

    /// The SQE that reads what is left, into the room after what was read.
    pub fn entry(&mut self, pool: &BufferPool, file_slot: u32, user_data: u64) -> squeue::Entry {
        let offset = if self.offset == STREAM_OFFSET {
            STREAM_OFFSET
        } else {
            self.offset + self.done as u64
        };
        let file = types::Fixed(file_slot);
        let want = (self.len - self.done).min(MAX_BYTES_PER_SQE);
        match &mut self.target {
            ReadTarget::Registered(buffer) => {
                let pointer = pool.pointer(*buffer).wrapping_add(self.done);
                opcode::ReadFixed::new(file, pointer, want as u32, *buffer as u16)
                    .offset(offset)
                    .build()
                    .user_data(user_data)
            }
            ReadTarget::Private(bytes) => {
                if bytes.capacity() == bytes.len() {
                    let more = (self.len - self.done).min(bytes.capacity().max(PRIVATE_START));
                    bytes.reserve_exact(more);
                }
                let room = (bytes.capacity() - bytes.len()).min(want);
                // Zeroed first: the bytes the kernel writes are then initialised in every
                // tool's eyes (valgrind does not see the kernel write them), and a count the
                // kernel got wrong could never expose stale heap memory. A memset is small
                // next to the read it precedes.
                let spare = &mut bytes.spare_capacity_mut()[..room];
                spare.fill(std::mem::MaybeUninit::new(0));
                let pointer = spare.as_mut_ptr().cast::<u8>();
                opcode::Read::new(file, pointer, room as u32)
                    .offset(offset)
                    .build()
                    .user_data(user_data)
            }
        }
    }

    /// Accounts for one CQE of this read.
    pub fn complete(&mut self, result: i32) -> ReadStep {
        if result < 0 {
            return ReadStep::Finished(i64::from(result));
        }
        let n = result as usize;
        if let ReadTarget::Private(bytes) = &mut self.target {
            // SAFETY: the kernel wrote `n` bytes into the spare capacity the SQE pointed at
            // (never more than it was given), right after the bytes already there.
            unsafe { bytes.set_len(bytes.len() + n) };
        }
        self.done += n;
        if n == 0 || self.done >= self.len {
            ReadStep::Finished(self.done as i64)
        } else {
            ReadStep::Continue
        }
    }

    /// The bytes read; a registered buffer goes back to the pool. Called once the kernel
    /// has posted the read's last completion.
    pub fn into_data(self, pool: &mut BufferPool) -> Vec<u8> {
        match self.target {
            ReadTarget::Registered(buffer) => {
                pool.returned_by_kernel(buffer);
                let data = pool.filled(buffer, self.done).to_vec();
                pool.release(buffer);
                data
            }
            ReadTarget::Private(mut bytes) => {
                bytes.truncate(self.done);
                bytes
            }
        }
    }
}
