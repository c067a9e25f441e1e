//! Background flushes: once a file has `background_flush_bytes` of completed, unflushed
//! writes, the backend issues a ranged fdatasync of them itself, so that the caller's
//! datasync at the end of a long run finds only the last stretch left (see
//! `UringBackend::start_flush_if_due`).

use std::os::fd::AsRawFd;

use super::UringBackend;

/// Completed writes of one file that no datasync or background flush has covered yet.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Unflushed {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) bytes: u64,
}

impl Unflushed {
    pub(super) fn add(&mut self, offset: u64, len: u64) {
        if self.bytes == 0 {
            (self.start, self.end) = (offset, offset + len);
        } else {
            self.start = self.start.min(offset);
            self.end = self.end.max(offset + len);
        }
        self.bytes += len;
    }
}

/// The largest range one ranged fsync SQE takes (its length is a u32), in whole pages.
const MAX_FLUSH_RANGE: u64 = u32::MAX as u64 & !(PAGE as u64 - 1);

const PAGE: usize = crate::config::PAGE_SIZE;

impl UringBackend {
    /// Flushes the file's completed, not yet flushed bytes in the background once there are
    /// `background_flush_bytes` of them: an fdatasync of their range, issued by the backend.
    ///
    /// A datasync at the end of a long run of writes otherwise does all the disk's work
    /// after the writes instead of during them: writing the dirty pages, then flushing the
    /// device's cache, whose cost grows with everything written since its last flush (here
    /// ~1.5 ms per MiB: W5's 49 MiB took ~65 ms to flush after the last write). Flushed a
    /// megabyte at a time as the writes complete, the disk keeps pace with them, and the
    /// caller's datasync finds only the last stretch left.
    ///
    /// It goes through a descriptor on an open file description of its own: an fdatasync
    /// reports a writeback error once per description, and this one must not take the
    /// error from the caller's datasyncs (which use ours) or from the caller's descriptors.
    ///
    /// The page the range ends in is left out: appends are still filling it, and flushing it
    /// now would write it twice, or make the next append wait for it on devices that need
    /// stable pages.
    pub(super) fn start_flush_if_due(&mut self, slot: u32) {
        let threshold = self.background_flush_bytes;
        if self.cancelled_everything {
            return;
        }
        let file = self.file_at(slot);
        if threshold == 0 || file.flush_in_flight || file.unflushed.bytes < threshold {
            return;
        }
        let Some(fd) = file.flush_descriptor.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        let start = file.unflushed.start & !(PAGE as u64 - 1);
        let end = (file.unflushed.end & !(PAGE as u64 - 1)).min(start + MAX_FLUSH_RANGE);
        if end <= start {
            return;
        }
        // What remains (the partial last page, or beyond the largest range) waits for the
        // next flush.
        let rest_end = file.unflushed.end;
        file.unflushed = Unflushed::default();
        if rest_end > end {
            file.unflushed.add(end, rest_end - end);
        }
        file.flush_in_flight = true;
        self.flushes_in_flight += 1;
        self.manager
            .submit_background_flush(slot, fd, start, (end - start) as u32);
    }
}
