//! Submissions that never wait (`*_nowait`), for an event loop, whose thread must not sleep
//! until the kernel gives buffers back: an operation with room goes to the ring as any
//! other; one without room (or behind one without room) waits here, in call order, with its
//! own copy of the bytes and the token its caller was given, and goes to the ring as
//! completions make room (`send_released`, which every poll, wait and close runs). So
//! whatever happens to the caller afterwards (its event loop stops, its tasks are
//! cancelled), what the call accepted is in the backend's hands and is written, in order,
//! by the next poll or wait, or at the latest by `close()`.
//!
//! The queue is bounded (`QUEUE_BOUND`): past it a `*_nowait` call raises `QueueFull` and
//! accepts nothing. While anything waits here, the other submit calls wait for room
//! (`wait_behind_queue`), so that an operation called later never overtakes one called
//! earlier, whoever called it.
//!
//! Their completions are handed back by `take_nowait_completions` only (see `handback`).
//!
//! Rejected: holding the operations in the caller's language (the Python event loop),
//! which only the loop's own callbacks would ever hand on: a loop that stopped first left
//! them unwritten, silently.

use std::collections::VecDeque;

use super::batches::check_write_range;
use super::errors::BackendError;
use super::files::Handle;
use super::reads::check_read_range;
use super::UringBackend;
use crate::handback::Completion;

/// Bytes the queue may hold, counting `PER_OPERATION` for each operation besides its
/// data: past this, a `*_nowait` call raises `QueueFull`.
pub const QUEUE_BOUND: usize = 256 << 20;

/// What an operation costs the queue beyond its data (its entry and bookkeeping).
const PER_OPERATION: usize = 64;

/// An operation a `*_nowait` call makes.
pub enum Request<'a> {
    /// A write of the concatenation of the parts at an offset (`None`: an append).
    Write {
        parts: &'a [&'a [u8]],
        offset: Option<u64>,
    },
    Datasync,
    Read {
        len: usize,
        offset: u64,
    },
}

/// The same, owned, waiting in the queue.
enum Waiting {
    Write {
        data: Box<[u8]>,
        offset: Option<u64>,
    },
    Datasync,
    Read {
        len: usize,
        offset: u64,
    },
}

struct Queued {
    token: u64,
    handle: Handle,
    what: Waiting,
    /// What it counts against `QUEUE_BOUND`.
    cost: usize,
}

/// Operations accepted without room, in call order.
#[derive(Default)]
pub struct SubmitQueue {
    operations: VecDeque<Queued>,
    cost: usize,
}

impl SubmitQueue {
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Whether an operation of the file in `slot` waits here.
    pub fn has_file(&self, slot: u32) -> bool {
        self.operations.iter().any(|q| q.handle.slot == slot)
    }
}

impl Request<'_> {
    fn len(&self) -> usize {
        match self {
            Request::Write { parts, .. } => parts.iter().map(|p| p.len()).sum(),
            _ => 0,
        }
    }

    fn check_range(&self) -> Result<(), BackendError> {
        match *self {
            Request::Write { offset, .. } => check_write_range(self.len(), offset.unwrap_or(0)),
            Request::Datasync => Ok(()),
            Request::Read { len, offset } => check_read_range(len, offset),
        }
    }

    fn to_waiting(&self) -> Waiting {
        match *self {
            Request::Write { parts, offset } => Waiting::Write {
                data: parts.concat().into(),
                offset,
            },
            Request::Datasync => Waiting::Datasync,
            Request::Read { len, offset } => Waiting::Read { len, offset },
        }
    }
}

impl UringBackend {
    /// Submits `request` without ever waiting: to the ring if it has room and nothing waits
    /// in the queue, else into the queue. Returns its token, whose completion only
    /// `take_nowait_completions` hands back. `QueueFull` past `QUEUE_BOUND`; a bad handle
    /// or range raises here as in `submit_*`.
    pub fn submit_nowait(
        &mut self,
        handle: Handle,
        request: &Request<'_>,
    ) -> Result<u64, BackendError> {
        self.file_mut(handle)?;
        request.check_range()?;
        let token = self.manager.reserve_token();
        if self.queue.is_empty() {
            self.manager.place_next_as(Some(token));
            self.handback.issued_nowait(token);
            match self.place_request(handle, request) {
                Ok(placed) => {
                    debug_assert_eq!(placed, token, "placed under the token reserved for it");
                    self.submits_since_flush += 1;
                    return Ok(token);
                }
                Err(BackendError::NoRoom) => self.manager.place_next_as(None),
                Err(e) => {
                    self.manager.place_next_as(None);
                    self.handback.forget(token);
                    return Err(e);
                }
            }
        } else {
            self.handback.issued_nowait(token);
        }
        let cost = request.len() + PER_OPERATION;
        if self.queue.cost + cost > QUEUE_BOUND && !self.queue.is_empty() {
            self.handback.forget(token);
            return Err(BackendError::QueueFull(format!(
                "{} operations ({} bytes) already wait for room, the most a submit that \
                 never waits may queue is {QUEUE_BOUND} bytes: await earlier operations \
                 before submitting more",
                self.queue.len(),
                self.queue.cost
            )));
        }
        self.queue.cost += cost;
        self.queue.operations.push_back(Queued {
            token,
            handle,
            what: request.to_waiting(),
            cost,
        });
        self.submits_since_flush += 1;
        Ok(token)
    }

    /// Places the operation of `request` (handle and range checked) in the ring, its token
    /// not issued here.
    fn place_request(
        &mut self,
        handle: Handle,
        request: &Request<'_>,
    ) -> Result<u64, BackendError> {
        match *request {
            Request::Write { parts, offset } => self.place(handle, parts, offset),
            Request::Datasync => self.place_datasync(handle),
            Request::Read { len, offset } => self.place_read(handle, len, offset),
        }
    }

    /// Places what waits in the queue, in order, while there is room. An operation that
    /// fails here (its file deregistered meanwhile cannot be: a deregistration waits for
    /// the queue) completes with the error.
    pub(super) fn send_queued(&mut self) {
        let mut sent = false;
        while let Some(next) = self.queue.operations.pop_front() {
            self.manager.place_next_as(Some(next.token));
            let placed = match &next.what {
                Waiting::Write { data, offset } => self.place(next.handle, &[data], *offset),
                Waiting::Datasync => self.place_datasync(next.handle),
                Waiting::Read { len, offset } => self.place_read(next.handle, *len, *offset),
            };
            match placed {
                Err(BackendError::NoRoom | BackendError::QueueFull(_)) => {
                    self.manager.place_next_as(None);
                    self.queue.operations.push_front(next);
                    break;
                }
                Ok(placed) => debug_assert_eq!(placed, next.token),
                Err(e) => {
                    self.manager.place_next_as(None);
                    self.counts.submitted += 1;
                    self.deliver(next.token, -errno_of(&e), false);
                }
            }
            self.queue.cost -= next.cost;
            sent = true;
        }
        if sent {
            // What was queued has waited long enough: to the kernel with the next flush,
            // not joined by later writes.
            self.seal_all();
        }
    }

    /// Completes with -ECANCELED what waits here for a file `picked` says (close cancelling).
    pub(super) fn cancel_queued(&mut self, picked: impl Fn(u32) -> bool) {
        let mut kept = VecDeque::new();
        for queued in std::mem::take(&mut self.queue.operations) {
            if picked(queued.handle.slot) {
                self.queue.cost -= queued.cost;
                self.counts.submitted += 1;
                self.deliver(queued.token, -i64::from(libc::ECANCELED), false);
            } else {
                kept.push_back(queued);
            }
        }
        self.queue.operations = kept;
    }

    /// A submit that may wait goes only when nothing waits in the queue, so that it never
    /// overtakes an operation called before it: `NoRoom` sends its caller to wait for room.
    pub(super) fn wait_behind_queue(&self) -> Result<(), BackendError> {
        if self.queue.is_empty() {
            Ok(())
        } else {
            Err(BackendError::NoRoom)
        }
    }

    /// Hands back the finished `*_nowait` operations.
    pub fn take_nowait_completions(&mut self, out: &mut Vec<Completion>) {
        self.handback.take_nowait(out);
    }

    /// Operations waiting in the queue.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }
}

fn errno_of(error: &BackendError) -> i64 {
    let errno = match error {
        BackendError::Os(e) => e.raw_os_error().unwrap_or(libc::EIO),
        BackendError::BadFd(_) => libc::EBADF,
        _ => libc::EINVAL,
    };
    i64::from(errno)
}
