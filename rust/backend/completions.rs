//! Turning what the ring reaped into the caller's completions: the members of a batch each
//! get their own, a write that stopped part-way completes the records wholly written, a
//! stream moves its next operation along, and a finished write releases what was held
//! behind it.

use super::UringBackend;
use crate::handback::Completion;
use crate::manager::{Done, Finished};

impl UringBackend {
    /// Reaps what the kernel has finished and turns it into ready completions; held
    /// operations whose writes are now all done move to `released`.
    pub fn collect(&mut self) {
        let mut finished = std::mem::take(&mut self.finished);
        loop {
            finished.clear();
            self.manager.reap(&mut finished);
            if finished.is_empty() {
                break;
            }
            for done in finished.drain(..) {
                self.finish(done);
            }
        }
        self.finished = finished;
    }

    /// One operation the kernel finished.
    pub(super) fn finish(&mut self, done: Finished) {
        let slot = done.file_slot;
        if done.done == Done::BackgroundFlush {
            self.flushes_in_flight -= 1;
            self.file_at(slot).flush_in_flight = false;
            // Its result is nobody's: an error it met was taken on its own open file
            // description, and every other description of the file (the caller's
            // datasyncs go through ours) still reports it.
            self.start_flush_if_due(slot);
            return;
        }
        let completed = match (self.batch_members.remove(&done.token), done.done) {
            (Some(members), _) => {
                self.deliver_records(&members, done.result, done.written);
                members.len()
            }
            (None, Done::Read) => {
                self.deliver_read(done.token, done.result, done.data);
                1
            }
            (None, Done::Write { len, .. }) => {
                self.deliver_records(&[(done.token, len)], done.result, done.written);
                1
            }
            (None, Done::Datasync | Done::BackgroundFlush) => {
                self.finish_datasync(done.token, slot, done.result)
            }
        };
        self.outstanding -= completed;
        let file = self.file_at(slot);
        file.operations -= completed;
        if let Some(queue) = file.stream.as_mut() {
            if let Some(next) = queue.finished() {
                self.stream_ops_waiting -= 1;
                self.send_stream_op(slot, next);
            }
            return;
        }
        if let Done::Write { offset, len } = done.done {
            if done.result >= 0 {
                file.unflushed.add(offset, len as u64);
                self.start_flush_if_due(slot);
            }
            self.write_finished(slot, done.tag);
        }
    }

    /// The records (token, length) of one kernel write, back to back: when it stopped
    /// part-way with `result` < 0 after `written` bytes, the records wholly inside those
    /// bytes are on the file and complete with their length; the rest get the error.
    pub(super) fn deliver_records(
        &mut self,
        members: &[(u64, usize)],
        result: i64,
        written: usize,
    ) {
        let mut end = 0;
        for &(token, len) in members {
            end += len;
            let ok = result >= 0 || end <= written && len > 0;
            self.deliver(token, if ok { len as i64 } else { result }, true);
        }
    }

    /// Hands a finished token to the caller's next poll or wait (or its wait_for), and
    /// counts it.
    pub(super) fn deliver(&mut self, token: u64, result: i64, is_write: bool) {
        self.count(result, is_write);
        self.handback.deliver(Completion::new(token, result));
    }

    pub(super) fn count(&mut self, result: i64, is_write: bool) {
        self.counts.completed += 1;
        if result < 0 {
            self.counts.failed += 1;
        } else if is_write {
            self.counts.bytes_written += result as u64;
        }
    }
}
