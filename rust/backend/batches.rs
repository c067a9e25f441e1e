//! Placing a write: the append position is reserved at submission (in submission order,
//! whatever order the kernel finishes in), and writes to one file that follow each other
//! byte for byte are combined in one registered buffer and leave as one SQE.

use std::io;

use super::errors::BackendError;
use super::files::Handle;
use super::UringBackend;

/// Writes to one file that follow each other byte for byte and have not reached the ring
/// yet, gathered in one registered buffer: they leave as one SQE, and each keeps its token.
///
/// Write combining is what lets per-record calls beat a pwrite loop: the kernel's cost is
/// mostly per write, not per byte, so sixteen 4 KiB appends written as one 64 KiB write
/// cost it about one write. A batch leaves when it is full, when something else is
/// submitted to its file (a datasync, a write elsewhere), and at every flush, poll and wait.
pub struct Batch {
    pub(super) buffer: u32,
    pub(super) offset: u64,
    pub(super) len: usize,
    pub(super) seq: u64,
    /// (token, length) of each write in it, in submission order; the first token also
    /// names the SQE.
    pub(super) members: Vec<(u64, usize)>,
    /// A datasync was submitted behind it: nothing more joins, and a caller that waits for
    /// that datasync may write it itself (see `wait`).
    pub(super) closed: bool,
}

impl UringBackend {
    pub fn submit_write(
        &mut self,
        handle: Handle,
        data: &[u8],
        offset: u64,
    ) -> Result<u64, BackendError> {
        self.submit_writev(handle, &[data], offset)
    }

    /// One write of the concatenation of `parts` at `offset` (`None`: at the file's append
    /// position), under one token.
    pub fn submit_writev(
        &mut self,
        handle: Handle,
        parts: &[&[u8]],
        offset: u64,
    ) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        self.wait_behind_queue()?;
        let token = self.place(handle, parts, Some(offset))?;
        Ok(self.issued(token))
    }

    /// One append of the concatenation of `parts`, under one token.
    pub fn submit_appendv(&mut self, handle: Handle, parts: &[&[u8]]) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        self.wait_behind_queue()?;
        let token = self.place(handle, parts, None)?;
        Ok(self.issued(token))
    }

    pub fn submit_append(&mut self, handle: Handle, data: &[u8]) -> Result<u64, BackendError> {
        self.submit_appendv(handle, &[data])
    }

    /// Puts a write of `data` (the concatenation of its parts) at `offset`, or with `None`
    /// at the file's append position (reserved now, in submission order, whatever order the
    /// kernel finishes the writes in; a failed append leaves its range as a hole, as it
    /// does on every backend): into the file's open batch when it continues it, else into
    /// a new batch, else (larger than a buffer) as its own split write. The handle is
    /// checked; the token is not issued yet.
    pub(super) fn place(
        &mut self,
        handle: Handle,
        data: &[&[u8]],
        offset: Option<u64>,
    ) -> Result<u64, BackendError> {
        if self.file_at(handle.slot).stream.is_some() {
            let bytes: Box<[u8]> = data.concat().into();
            return self.submit_to_stream(handle.slot, bytes.len(), |token| {
                crate::backend::streams::StreamOp::Write { token, data: bytes }
            });
        }
        let position = self.file_at(handle.slot).append_end.position();
        self.place_in_file(handle, data, offset.unwrap_or(position), offset.is_none())
    }

    pub(super) fn place_in_file(
        &mut self,
        handle: Handle,
        data: &[&[u8]],
        offset: u64,
        append: bool,
    ) -> Result<u64, BackendError> {
        let len: usize = data.iter().map(|part| part.len()).sum();
        check_write_range(len, offset)?;
        let slot = handle.slot;
        if let Some(token) = self.join_open_batch(slot, data, len, offset, append) {
            return Ok(token);
        }
        if self.seal(slot) {
            // A full batch goes to the kernel now rather than at the caller's next wait:
            // the kernel writes it (on another core) while the caller fills the next one.
            // One syscall per batch; an error here resurfaces at the next flush or wait,
            // which submit the same queue again.
            let _ = self.manager.flush();
        }
        if !self.has_room(len) {
            return Err(BackendError::NoRoom);
        }
        self.start_write(slot, data, len, offset, append)
    }

    /// Appends a write to the file's open batch when it continues it byte for byte and
    /// fits; returns its token, or `None` when it must start a write of its own.
    fn join_open_batch(
        &mut self,
        slot: u32,
        data: &[&[u8]],
        len: usize,
        offset: u64,
        append: bool,
    ) -> Option<u64> {
        let buffer_size = self.buffer_size;
        let file = self.slots[slot as usize]
            .file
            .as_mut()
            .expect("handle checked");
        if let Some(batch) = file.open_batch.as_mut() {
            if !batch.closed
                && batch.offset + batch.len as u64 == offset
                && batch.len + len <= buffer_size
            {
                gather(
                    &mut self.manager.buffer_mut(batch.buffer)[batch.len..],
                    data,
                );
                let token = self.manager.reserve_token();
                batch.members.push((token, len));
                batch.len += len;
                if append {
                    file.append_end.reserve(len as u64);
                }
                file.operations += 1;
                self.outstanding += 1;
                self.counts.submitted += 1;
                return Some(token);
            }
        }
        None
    }

    /// Starts a write of its own (room checked): a new open batch, or, larger than a
    /// buffer, a write split over several buffers (or a private copy) under one token.
    fn start_write(
        &mut self,
        slot: u32,
        data: &[&[u8]],
        len: usize,
        offset: u64,
        append: bool,
    ) -> Result<u64, BackendError> {
        let buffer_size = self.buffer_size;
        let file = self.file_at(slot);
        if append {
            file.append_end.reserve(len as u64);
        }
        let seq = file.next_write_seq;
        file.next_write_seq += 1;
        file.writes_in_flight.insert(seq);
        file.operations += 1;
        self.outstanding += 1;
        self.counts.submitted += 1;
        if len > buffer_size {
            let token = match data {
                [one] => self.manager.submit_write(slot, one, offset, seq),
                parts => self
                    .manager
                    .submit_write(slot, &parts.concat(), offset, seq),
            };
            return Ok(token);
        }
        let buffer = self.manager.acquire_buffer().expect("room checked above");
        gather(self.manager.buffer_mut(buffer), data);
        let token = self.manager.reserve_token();
        self.file_at(slot).open_batch = Some(Batch {
            buffer,
            offset,
            len,
            seq,
            members: vec![(token, len)],
            closed: false,
        });
        self.open_batches.push(slot);
        Ok(token)
    }

    /// Sends the open batch of the file in `slot`, if it has one, to the ring; says whether
    /// there was one.
    pub(super) fn seal(&mut self, slot: u32) -> bool {
        let Some(batch) = self.file_at(slot).open_batch.take() else {
            return false;
        };
        if let Some(at) = self.open_batches.iter().position(|&s| s == slot) {
            self.open_batches.swap_remove(at);
        }
        self.send_batch(slot, batch);
        true
    }

    pub(super) fn send_batch(&mut self, slot: u32, batch: Batch) {
        let token = batch.members[0].0;
        if batch.members.len() > 1 {
            self.batch_members.insert(token, batch.members);
        }
        self.manager.submit_registered(
            token,
            slot,
            batch.buffer,
            batch.offset,
            batch.len,
            batch.seq,
        );
    }

    pub(super) fn seal_all(&mut self) {
        while let Some(slot) = self.open_batches.pop() {
            if let Some(batch) = self.file_at(slot).open_batch.take() {
                self.send_batch(slot, batch);
            }
        }
    }

    /// Tokens waiting in open batches, which no completion from the ring can finish.
    pub fn tokens_in_open_batches(&self) -> usize {
        let slots = &self.slots;
        self.open_batches
            .iter()
            .filter_map(|&slot| slots[slot as usize].file.as_ref()?.open_batch.as_ref())
            .map(|batch| batch.members.len())
            .sum()
    }
}

/// A write must end within what a file offset can address.
pub(super) fn check_write_range(len: usize, offset: u64) -> Result<(), BackendError> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(io::Error::from_raw_os_error(libc::EFBIG).into());
    }
    Ok(())
}

/// Copies `parts` one after another to the start of `target`.
pub(super) fn gather(target: &mut [u8], parts: &[&[u8]]) {
    let mut at = 0;
    for part in parts {
        target[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
}
