//! Work a waiting caller does itself, without the instance's lock: the writes of a batch a
//! datasync closed, or a released datasync, run in the caller's thread instead of an io-wq
//! worker's (see `UringBackend::take_caller_work` for the measurement).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::batches::Batch;
use super::ordering::Held;
use super::UringBackend;

/// `wait()` with less time than this left never runs work in the caller's thread.
pub const IN_CALLER_MIN_BUDGET: Duration = Duration::from_secs(1);

/// Work a waiting caller does itself, without the instance's lock (see `UringBackend::
/// take_caller_work`): the syscall runs on memory and descriptors the backend keeps alive
/// until `finish_caller_work`.
pub enum CallerWork {
    Batch {
        slot: u32,
        batch: Batch,
        fd: RawFd,
        bytes: *const u8,
    },
    /// One fdatasync for every released datasync of the file (`tokens`).
    Datasync {
        tokens: Vec<u64>,
        slot: u32,
        fd: RawFd,
    },
}

// SAFETY: the pointer is into a registered buffer that stays lent to this batch (and the
// pool mapped: close waits for caller work) until `finish_caller_work`.
unsafe impl Send for CallerWork {}

/// Bytes written before a write stopped, and the errno that stopped it, if any.
pub type WorkOutcome = (usize, Option<i32>);

impl CallerWork {
    /// The syscall itself; no lock is held.
    pub fn run(&self) -> WorkOutcome {
        match self {
            CallerWork::Batch {
                batch, fd, bytes, ..
            } => {
                // SAFETY: see the `Send` impl: `batch.len` bytes of a lent buffer.
                let bytes = unsafe { std::slice::from_raw_parts(*bytes, batch.len) };
                pwrite_all(*fd, bytes, batch.offset)
            }
            CallerWork::Datasync { fd, .. } => loop {
                // SAFETY: fdatasync on a descriptor the backend keeps open until this work
                // is finished; it touches no memory of ours.
                if unsafe { libc::fdatasync(*fd) } == 0 {
                    break (0, None);
                }
                let err = io::Error::last_os_error();
                // Interrupted (NFS, FUSE): the data is not known durable; ask again.
                if err.kind() != io::ErrorKind::Interrupted {
                    break (0, Some(err.raw_os_error().unwrap_or(libc::EIO)));
                }
            },
        }
    }
}

impl UringBackend {
    /// Takes one piece of work a waiting caller can do itself, without the lock: the
    /// writes of an open batch that a datasync closed (with `every_open`, of any open
    /// batch), or a released datasync. Until `finish_caller_work`, the batch stays among
    /// its file's unfinished writes (so nothing overtakes it and held work stays held) and
    /// its buffer and descriptor stay the backend's.
    ///
    /// io_uring hands a buffered write on this kernel, and every fsync, to an io-wq worker
    /// thread: a hop there and a wake-up back. A caller that would only sleep meanwhile
    /// reaches the same durability point sooner by doing the work itself (measured on W4,
    /// append + datasync + wait, p50 against the pwrite loop's in the same run: 1.22x ->
    /// 1.16x).
    pub fn take_caller_work(&mut self, every_open: bool) -> Option<CallerWork> {
        if let Some(work) = self.take_open_batch(every_open) {
            return Some(work);
        }
        let slot = self
            .released
            .iter()
            .find(|&&(_, _, what)| what == Held::Datasync)
            .map(|&(_, slot, _)| slot)?;
        // All of the file's released datasyncs: their writes are all complete, so one
        // fdatasync started now covers every one of them (`shared_syncs`).
        let mut tokens = Vec::new();
        self.released.retain(|&(token, at, what)| {
            let take = at == slot && what == Held::Datasync;
            if take {
                tokens.push(token);
            }
            !take
        });
        let fd = self.file_at(slot).descriptor.as_raw_fd();
        Some(CallerWork::Datasync { tokens, slot, fd })
    }

    /// What `flush()` writes in the caller's thread instead of handing it to the ring: an
    /// open batch that heads its file's unfinished writes, so nothing of the file is in the
    /// kernel's hands and the caller is about to wait for exactly this.
    ///
    /// That is the round trip "submit a window, flush(), wait for all of it". Sent to the
    /// ring, the batch's buffered write goes to an io-wq worker on this kernel, and the
    /// waiter sleeps until the worker has written it and woken it, where the write itself
    /// is a copy into the page cache of a few microseconds. Measured in the bench, pattern
    /// `window`, against the pwrite loop of the same run: W5 2.25x -> 3.60x; W4 (append,
    /// datasync, flush, wait both) p50 297/303/280 us before against 268/234/239 us for the
    /// same loop without flush(), and now the same syscalls as that loop.
    /// A datasync behind the batch is released by it, and the next wait() runs it in its
    /// own thread as it would have without the flush() call; a later poll or flush sends it
    /// to the ring (`submit_queued`). No datasync runs here: flush() never waits for an
    /// fdatasync, only for a write into the page cache.
    ///
    /// Nothing is taken while an eventfd is registered: such an instance is driven by an
    /// event loop, which learns of completions only from the CQEs that signal it (a write
    /// done here posts none, and the datasync it releases would wait for a call that the
    /// loop makes only when signalled), and which must not spend its time in a write.
    pub fn take_flush_work(&mut self) -> Option<CallerWork> {
        if self.eventfd_registered {
            return None;
        }
        self.take_open_batch(true)
    }

    /// An open batch a caller may write itself: its file's oldest unfinished write, of a
    /// regular file, with nothing of the file in the kernel's hands, and (without
    /// `every_open`) closed by a datasync.
    fn take_open_batch(&mut self, every_open: bool) -> Option<CallerWork> {
        for index in 0..self.open_batches.len() {
            let slot = self.open_batches[index];
            let file = self.file_at(slot);
            let Some((closed, seq, members)) = file
                .open_batch
                .as_ref()
                .map(|b| (b.closed, b.seq, b.members.len()))
            else {
                continue;
            };
            // Only the file's oldest unfinished write: an earlier one still in the ring may
            // overlap it, and a pwrite now would land first and be overwritten by it.
            let oldest = file.writes_in_flight.first() == Some(&seq);
            // And nothing else of the file in the ring: a read submitted before this batch
            // (in the ring, or still queued for it, in SQPOLL mode picked up whenever the
            // kernel thread gets to it) must not see it. The operations held behind the
            // batch are the only others allowed.
            let alone = file.operations == members + file.held.len();
            if !file.regular || !oldest || !alone || (!closed && !every_open) {
                continue;
            }
            let batch = file.open_batch.take().expect("checked above");
            let fd = file.descriptor.as_raw_fd();
            self.open_batches.swap_remove(index);
            let bytes = self.manager.buffer_mut(batch.buffer).as_ptr();
            return Some(CallerWork::Batch {
                slot,
                batch,
                fd,
                bytes,
            });
        }
        None
    }

    /// Accounts for work done by `take_caller_work`'s taker.
    pub fn finish_caller_work(&mut self, work: CallerWork, (written, errno): WorkOutcome) {
        let result = errno.map_or(0, |e| -i64::from(e));
        match work {
            CallerWork::Datasync { tokens, slot, .. } => {
                self.file_at(slot).operations -= tokens.len();
                self.outstanding -= tokens.len();
                self.datasyncs_in_caller += 1;
                self.datasyncs_joined += tokens.len() as u64 - 1;
                for token in tokens {
                    self.deliver(token, result, false);
                }
            }
            CallerWork::Batch { slot, batch, .. } => {
                self.manager.release_buffer(batch.buffer);
                self.deliver_records(&batch.members, result, written);
                self.outstanding -= batch.members.len();
                let file = self.file_at(slot);
                file.operations -= batch.members.len();
                if errno.is_none() && !batch.closed {
                    // A closed batch has its datasync right behind it; this one may not.
                    file.unflushed.add(batch.offset, batch.len as u64);
                    self.start_flush_if_due(slot);
                }
                self.writes_in_caller += 1;
                self.write_finished(slot, batch.seq);
            }
        }
    }
}

/// pwrite of all of `bytes` at `offset`, continuing short writes: the bytes written, and
/// the errno that stopped it before the end, if one did.
fn pwrite_all(fd: RawFd, bytes: &[u8], offset: u64) -> WorkOutcome {
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: the pointer and length describe `rest`, which outlives the call.
        let n = unsafe {
            libc::pwrite(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                (offset + done as u64) as i64,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return (done, Some(libc::EIO)),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return (done, Some(err.raw_os_error().unwrap_or(libc::EIO)));
                }
            }
        }
    }
    (done, None)
}
