//! Datasyncs that share one fdatasync. When many callers each append and then datasync the
//! same file (a group of tasks committing, a WAL's writers), their datasyncs are released
//! together, once the appends' combined write completes. Sent one SQE each, they become as
//! many fdatasync calls on io-wq workers, each asking the device for a cache flush: 64
//! tasks on a 2-core machine had about 16 fdatasyncs in flight for every kernel write
//! (20,900 fdatasync SQEs for 1,300 writes), whose workers, flush completions and
//! interrupts took the CPU from everything else (the event loop's p99 lag went past 5 ms).
//!
//! A datasync may instead complete with an fdatasync issued before it, when that one is
//! still to complete and no write of the file has completed since it was issued: then every
//! write the datasync covers (all completed, or it would be held) had completed before that
//! fdatasync was issued, so before the kernel started it, and fdatasync makes durable what
//! was written before it started. The joined datasyncs complete with its result, an error
//! included: the error was met flushing their data too.
//!
//! Only fdatasyncs sent to the ring are shared. A caller that runs released datasyncs in its
//! own thread runs one fdatasync for all those of the file (`take_caller_work`).

use super::UringBackend;

/// The fdatasync in the ring that later datasyncs of a file may share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SharedSync {
    /// The token of the datasync whose SQE it is.
    pub(super) lead: u64,
    /// The file's `writes_completed` when it was issued.
    pub(super) writes_completed: u64,
}

impl UringBackend {
    /// Sends the datasync `token` of the file in `slot` (whose earlier writes are all
    /// complete) to the ring, or lets it complete with the file's fdatasync in the ring if
    /// that one may cover it (see the module's comment).
    pub(super) fn issue_datasync(&mut self, token: u64, slot: u32) {
        let file = self.file_at(slot);
        match file.shared_sync {
            Some(shared) if shared.writes_completed == file.writes_completed => {
                self.sync_joiners
                    .entry(shared.lead)
                    .or_default()
                    .push(token);
                self.datasyncs_joined += 1;
            }
            _ => {
                file.shared_sync = Some(SharedSync {
                    lead: token,
                    writes_completed: file.writes_completed,
                });
                self.manager.push_datasync(token, slot, 0);
            }
        }
    }

    /// The fdatasync of `lead` in `slot` finished with `result`: its own datasync and every
    /// one that joined it complete. Returns how many tokens that completes.
    pub(super) fn finish_datasync(&mut self, lead: u64, slot: u32, result: i64) -> usize {
        let file = self.file_at(slot);
        if file.shared_sync.is_some_and(|s| s.lead == lead) {
            file.shared_sync = None;
        }
        self.deliver(lead, result, false);
        let joiners = self.sync_joiners.remove(&lead).unwrap_or_default();
        for &token in &joiners {
            self.deliver(token, result, false);
        }
        1 + joiners.len()
    }
}
