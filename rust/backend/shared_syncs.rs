//! Datasyncs that share one fdatasync. When many callers each append and then datasync the
//! same file (a group of tasks committing, a WAL's writers), their datasyncs are released
//! together, once the appends' combined write completes. Sent one SQE each, they become as
//! many fdatasync calls on io-wq workers, each asking the device for a cache flush: 64
//! tasks on a 2-core machine had about 16 fdatasyncs in flight for every kernel write
//! (20,900 fdatasync SQEs for 1,300 writes), whose workers, flush completions and
//! interrupts took the CPU from everything else (the event loop's p99 lag went past 5 ms).
//!
//! A datasync may instead complete with an fdatasync of its file that the kernel has not
//! taken from the submission queue yet. That one starts after this datasync was submitted,
//! so it makes durable every write to the file that had completed by then, however it was
//! made: through this instance (the datasync is only issued once its writes are done),
//! another registration or instance, or a plain pwrite. Joining an fdatasync that the kernel
//! had already taken would not be safe even when none of this instance's writes completed
//! since: a write made some other way may have, and that fdatasync may have started before
//! it. The joined datasyncs complete with its result, an error included: the error was met
//! flushing their data too.
//!
//! While the file's fdatasync is in the kernel's hands, a new datasync waits for it to
//! finish and then goes as the next one, with every datasync that came meanwhile: one
//! fdatasync of a file in flight at a time, the next covering all that gathered (in SQPOLL
//! mode the kernel's thread takes an SQE as soon as it lands, so without this the
//! datasyncs of one tick would mostly go one by one).
//!
//! Only fdatasyncs sent to the ring are shared. A caller that runs released datasyncs in
//! its own thread runs one fdatasync, started after all of them were submitted, for all
//! those of the file (`take_caller_work`).

use super::UringBackend;

/// The fdatasync in the ring that later datasyncs of a file may share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SharedSync {
    /// The token of the datasync whose SQE it is.
    pub(super) lead: u64,
    /// Its place in the order the kernel takes SQEs (`RingManager::kernel_has_taken`).
    pub(super) place: u64,
}

impl UringBackend {
    /// Sends the datasync `token` of the file in `slot` (whose earlier writes are all
    /// complete) to the ring; or lets it complete with the file's fdatasync that the kernel
    /// has not taken yet; or, when the kernel has taken that one, keeps it for the next
    /// (see the module's comment).
    pub(super) fn issue_datasync(&mut self, token: u64, slot: u32) {
        if let Some(shared) = self.file_at(slot).shared_sync {
            if self.manager.kernel_has_taken(shared.place) {
                self.file_at(slot).next_syncs.push(token);
            } else {
                self.sync_joiners
                    .entry(shared.lead)
                    .or_default()
                    .push(token);
            }
            return;
        }
        let place = self.manager.push_datasync(token, slot, 0);
        self.file_at(slot).shared_sync = Some(SharedSync { lead: token, place });
    }

    /// The fdatasync of `lead` in `slot` finished with `result`: its own datasync and every
    /// one that joined it complete, and those that waited for it go as the next one.
    /// Returns how many tokens that completes.
    pub(super) fn finish_datasync(&mut self, lead: u64, slot: u32, result: i64) -> usize {
        self.deliver(lead, result, false);
        let joiners = self.sync_joiners.remove(&lead).unwrap_or_default();
        self.datasyncs_joined += joiners.len() as u64;
        for &token in &joiners {
            self.deliver(token, result, false);
        }
        let file = self.file_at(slot);
        if file.shared_sync.is_some_and(|s| s.lead == lead) {
            file.shared_sync = None;
            let mut next = std::mem::take(&mut file.next_syncs).into_iter();
            if let Some(first) = next.next() {
                // All were submitted before this fdatasync is placed, so it covers them.
                let place = self.manager.push_datasync(first, slot, 0);
                self.file_at(slot).shared_sync = Some(SharedSync { lead: first, place });
                let rest: Vec<u64> = next.collect();
                if !rest.is_empty() {
                    self.sync_joiners.insert(first, rest);
                }
            }
        }
        1 + joiners.len()
    }
}
