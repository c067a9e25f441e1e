//! Reads, as the backend sees them: checked, held behind the earlier writes to their file
//! (`ordering`), and handed back with their bytes. How a read travels through the ring
//! (registered or private buffer, continued when short) is `manager::reads`.

use std::io;

use super::errors::BackendError;
use super::files::Handle;
use super::ordering::Held;
use super::UringBackend;
use crate::handback::Completion;

impl UringBackend {
    /// Reads up to `len` bytes at `offset` (ignored on a stream); the completion carries
    /// them. It sees every write to the file submitted before it: it is held back until
    /// they are done, as a datasync is.
    pub fn submit_read(
        &mut self,
        handle: Handle,
        len: usize,
        offset: u64,
    ) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        check_read_range(len, offset)?;
        self.wait_behind_queue()?;
        let token = self.place_read(handle, len, offset)?;
        Ok(self.issued(token))
    }

    /// The read (handle and range checked), its token not issued yet.
    pub(super) fn place_read(
        &mut self,
        handle: Handle,
        len: usize,
        offset: u64,
    ) -> Result<u64, BackendError> {
        let token = if len == 0 {
            // Nothing to read: complete at once, as the sync backend does.
            let token = self.manager.reserve_token();
            self.counts.submitted += 1;
            self.outstanding += 1;
            self.deliver_read(token, 0, Some(Vec::new()));
            self.outstanding -= 1;
            token
        } else if self.file_at(handle.slot).stream.is_some() {
            self.submit_to_stream(handle.slot, 0, |token| {
                crate::backend::streams::StreamOp::Read { token, len }
            })?
        } else {
            self.submit_held(handle.slot, Held::Read { len, offset })?
        };
        Ok(token)
    }

    pub(super) fn deliver_read(&mut self, token: u64, result: i64, data: Option<Vec<u8>>) {
        self.count(result, false);
        if result > 0 {
            self.counts.bytes_read += result as u64;
        }
        self.handback.deliver(Completion {
            token,
            result,
            data: if result >= 0 { data } else { None },
        });
    }
}

/// A read must end within what a file offset can address.
pub(super) fn check_read_range(len: usize, offset: u64) -> Result<(), BackendError> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL).into());
    }
    Ok(())
}
