//! The file table: registering a descriptor (our own duplicate, in a fixed-file slot),
//! the handles that name it and the slot's generation that makes a stale handle
//! recognisable, and deregistering.
//!
//! Registering is two steps: `prepare_registration` makes our descriptors (a duplicate, or
//! a reopening through /proc/self/fd, which can wait on NFS or FUSE) without the instance's
//! lock, and `register_prepared` puts them in a slot under it. Deregistering hands the
//! descriptors back (`Retired`) to be closed after the lock is released: a close can wait
//! for the file system too.
//!
//! Two registrations of one file (the same descriptor registered twice, or two descriptors
//! of one inode) share one append end (`AppendEnd`): an append through either goes after
//! every earlier append through both. And they order their datasyncs and reads together
//! (`siblings`): a datasync through one waits for the writes through the other too, as it
//! would on the sync backend, where every write has returned before the next call.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::background_flush::Unflushed;
use super::batches::Batch;
use super::errors::{bad_fd, BackendError};
use super::ordering::Held;
use super::shared_syncs::SharedSync;
use super::UringBackend;
use crate::descriptor::{descriptor_for_flushes, descriptor_for_writes};

/// What `register_fd` hands out: the instance, the slot in the fixed-file table, and the
/// slot's generation, so a handle kept after `deregister_fd` is recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    pub owner: u64,
    pub slot: u32,
    pub generation: u32,
}

impl std::fmt::Display for Handle {
    /// As Python shows the handle (`IoFd`), since that is where the message is read.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IoFd(owner={}, slot={}, generation={})",
            self.owner, self.slot, self.generation
        )
    }
}

/// Where the next append to a file goes: shared by every registration of the file on this
/// instance, so that appends through two handles of one file land one after the other.
/// Only read and moved under the instance's lock (the atomic is for `Send`, not for races).
#[derive(Clone, Debug, Default)]
pub(super) struct AppendEnd(Arc<AtomicU64>);

impl AppendEnd {
    pub(super) fn position(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Reserves `len` bytes at the end; returns where they start.
    pub(super) fn reserve(&self, len: u64) -> u64 {
        let start = self.position();
        self.0.store(start + len, Ordering::Relaxed);
        start
    }

    fn at_least(&self, size: u64) {
        self.0.fetch_max(size, Ordering::Relaxed);
    }
}

/// A descriptor made ready to register, without the instance's lock (the syscalls that may
/// wait are done).
pub struct PreparedFile {
    descriptor: OwnedFd,
    flush_descriptor: Option<OwnedFd>,
    size: u64,
    regular: bool,
    stream: bool,
    /// (device, inode) of a file with positions; `None` for a stream.
    inode: Option<(u64, u64)>,
}

/// The descriptors of a deregistered file, to be dropped (closed) without the lock.
pub struct Retired {
    _descriptors: Vec<OwnedFd>,
}

pub(super) struct OpenFile {
    // Our duplicate: closing it is what deregistering means; the ring refers to it by slot,
    // and a datasync run in the caller's thread uses it directly.
    pub(super) descriptor: OwnedFd,
    pub(super) append_end: AppendEnd,
    /// (device, inode) of a file with positions, to find other registrations of it.
    pub(super) inode: Option<(u64, u64)>,
    /// The other slots registered for the same inode.
    pub(super) siblings: Vec<u32>,
    pub(super) next_write_seq: u64,
    /// Sequence numbers of this file's writes not yet completed (open batch included).
    pub(super) writes_in_flight: BTreeSet<u64>,
    /// The fdatasync of this file in the ring, which a datasync issued now may share
    /// (`shared_syncs`), and the datasyncs waiting for it to finish, to go as the next one.
    pub(super) shared_sync: Option<SharedSync>,
    pub(super) next_syncs: Vec<u64>,
    /// Datasyncs and reads waiting for earlier writes: (token, last write sequence they
    /// cover, what they are).
    pub(super) held: VecDeque<HeldOperation>,
    /// A pipe, socket or other descriptor without a file position to write at: its
    /// operations go one at a time, in submission order (see `streams`).
    pub(super) stream: Option<crate::backend::streams::StreamQueue>,
    /// Tokens on this file not yet completed.
    pub(super) operations: usize,
    pub(super) open_batch: Option<Batch>,
    /// Written and completed since the last datasync or background flush, not yet flushed:
    /// the range it spans and how many bytes went into it.
    pub(super) unflushed: Unflushed,
    /// A background flush of this file is in flight (at most one: while it runs, completed
    /// bytes gather for the next, which then covers them all).
    pub(super) flush_in_flight: bool,
    /// The descriptor background flushes go through, on an open file description of its own
    /// (`descriptor_for_flushes`); `None`: this file is not flushed in the background.
    pub(super) flush_descriptor: Option<OwnedFd>,
    /// A regular file: a pwrite in the caller's thread cannot block on it indefinitely, as
    /// on a full pipe, and honours the offset (a pipe or socket would refuse it: ESPIPE).
    pub(super) regular: bool,
}

pub(super) struct FileSlot {
    pub(super) generation: u32,
    pub(super) file: Option<OpenFile>,
}

/// A datasync or read held back until the writes submitted before it are done.
pub(super) struct HeldOperation {
    pub(super) token: u64,
    pub(super) what: Held,
    /// The last write sequence of its own file it waits for.
    pub(super) covers: u64,
    /// The same, for each other registration of the file: (slot, last write sequence).
    pub(super) covers_siblings: Vec<(u32, u64)>,
}

/// Makes the descriptors a registration of `fd` needs: a directory is refused; an O_APPEND
/// descriptor is reopened without it (see `crate::descriptor`); with `flushes`, a regular
/// file gets a descriptor of its own for background flushes. May wait on the file system:
/// call it without the instance's lock.
pub fn prepare_registration(fd: RawFd, flushes: bool) -> Result<PreparedFile, BackendError> {
    if file_type(fd)? == libc::S_IFDIR {
        return Err(BackendError::Invalid(format!(
            "file descriptor {fd} is a directory: register a file, a pipe or a socket"
        )));
    }
    let descriptor = descriptor_for_writes(fd)?;
    let stat = fstat(&descriptor)?;
    let regular = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
    let stream = is_stream(&descriptor);
    let flush_descriptor = if flushes && regular {
        descriptor_for_flushes(descriptor.as_raw_fd())
    } else {
        None
    };
    Ok(PreparedFile {
        descriptor,
        flush_descriptor,
        size: u64::try_from(stat.st_size).unwrap_or(0),
        regular,
        stream,
        inode: (!stream).then_some((stat.st_dev, stat.st_ino)),
    })
}

impl UringBackend {
    /// Registers `fd` in one go: `prepare_registration` and `register_prepared` under the
    /// caller's hold on the backend (for callers without a lock to spare it).
    pub fn register_fd(&mut self, fd: RawFd) -> Result<Handle, BackendError> {
        let prepared = prepare_registration(fd, self.flushes_in_background())?;
        self.register_prepared(prepared)
    }

    /// Whether registrations need a descriptor for background flushes.
    pub fn flushes_in_background(&self) -> bool {
        self.background_flush_bytes > 0
    }

    /// Puts a prepared descriptor in a free slot. On error the descriptors are closed.
    pub fn register_prepared(&mut self, prepared: PreparedFile) -> Result<Handle, BackendError> {
        let Some(slot) = self.free_slots.pop() else {
            return Err(BackendError::TooManyFiles(format!(
                "all {} file slots are in use: deregister a file or raise IoUringConfig.max_files",
                self.slots.len()
            )));
        };
        if let Err(e) = self.manager.set_file(slot, prepared.descriptor.as_raw_fd()) {
            self.free_slots.push(slot);
            return Err(e.into());
        }
        let siblings = self.slots_of_inode(prepared.inode);
        let append_end = match siblings.first() {
            Some(&other) => self.file_at(other).append_end.clone(),
            None => AppendEnd::default(),
        };
        // Appends go after what the file holds now and after every append reserved through
        // another registration of it, whichever is further.
        append_end.at_least(prepared.size);
        for &other in &siblings {
            self.file_at(other).siblings.push(slot);
        }
        crate::fork::track(self.owner, prepared.descriptor.as_raw_fd());
        if let Some(fd) = &prepared.flush_descriptor {
            crate::fork::track(self.owner, fd.as_raw_fd());
        }
        let entry = &mut self.slots[slot as usize];
        entry.file = Some(OpenFile {
            descriptor: prepared.descriptor,
            append_end,
            inode: prepared.inode,
            siblings,
            next_write_seq: 0,
            writes_in_flight: BTreeSet::new(),
            shared_sync: None,
            next_syncs: Vec::new(),
            held: VecDeque::new(),
            stream: prepared
                .stream
                .then(crate::backend::streams::StreamQueue::default),
            operations: 0,
            open_batch: None,
            unflushed: Unflushed::default(),
            flush_in_flight: false,
            flush_descriptor: prepared.flush_descriptor,
            regular: prepared.regular,
        });
        Ok(Handle {
            owner: self.owner,
            slot,
            generation: entry.generation,
        })
    }

    /// The slots registered for `inode`.
    fn slots_of_inode(&self, inode: Option<(u64, u64)>) -> Vec<u32> {
        let Some(inode) = inode else {
            return Vec::new();
        };
        (0..self.slots.len() as u32)
            .filter(|&slot| {
                self.slots[slot as usize]
                    .file
                    .as_ref()
                    .is_some_and(|f| f.inode == Some(inode))
            })
            .collect()
    }

    pub(super) fn file_mut(&mut self, handle: Handle) -> Result<&mut OpenFile, BackendError> {
        let owner = self.owner;
        self.slots
            .get_mut(handle.slot as usize)
            .filter(|s| handle.owner == owner && s.generation == handle.generation)
            .and_then(|s| s.file.as_mut())
            .ok_or_else(|| bad_fd(handle, owner))
    }

    pub(super) fn file_at(&mut self, slot: u32) -> &mut OpenFile {
        self.slots[slot as usize]
            .file
            .as_mut()
            .expect("a file stays registered while it has work in the backend")
    }

    pub fn check_handle(&mut self, handle: Handle) -> Result<(), BackendError> {
        self.file_mut(handle).map(|_| ())
    }

    /// Whether `handle`'s file has nothing in flight (a deregistration may proceed).
    pub fn file_idle(&mut self, handle: Handle) -> Result<bool, BackendError> {
        let queued = self.queue.has_file(handle.slot);
        let file = self.file_mut(handle)?;
        Ok(file.operations == 0 && !file.flush_in_flight && !queued)
    }

    /// Frees the slot of an idle file (see `file_idle`); its descriptors come back to be
    /// closed without the lock.
    pub fn finish_deregister(&mut self, handle: Handle) -> Result<Retired, BackendError> {
        self.file_mut(handle)?;
        self.manager.set_file(handle.slot, -1)?;
        let slot = &mut self.slots[handle.slot as usize];
        let file = slot.file.take().expect("checked above");
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(handle.slot);
        for &other in &file.siblings {
            self.file_at(other).siblings.retain(|&s| s != handle.slot);
        }
        let mut descriptors = vec![file.descriptor];
        descriptors.extend(file.flush_descriptor);
        for fd in &descriptors {
            crate::fork::untrack(self.owner, fd.as_raw_fd());
        }
        Ok(Retired {
            _descriptors: descriptors,
        })
    }

    /// Releases the files once `drained`. The ring and buffers go when the backend is
    /// dropped.
    pub fn release_files(&mut self) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(file) = slot.file.take() {
                let _ = self.manager.set_file(index as u32, -1);
                crate::fork::untrack(self.owner, file.descriptor.as_raw_fd());
                if let Some(fd) = &file.flush_descriptor {
                    crate::fork::untrack(self.owner, fd.as_raw_fd());
                }
            }
        }
    }
}

/// The S_IFMT bits of the file behind `fd`.
fn file_type(fd: RawFd) -> io::Result<libc::mode_t> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success, which is checked before reading it.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so the struct is initialised.
    Ok(unsafe { stat.assume_init() }.st_mode & libc::S_IFMT)
}

/// A descriptor without a file position (pipe, socket, terminal): lseek refuses it.
/// The sync backend draws the same line.
fn is_stream(fd: &OwnedFd) -> bool {
    // SAFETY: lseek to the current position changes nothing; a bad descriptor fails.
    let at = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) };
    at < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESPIPE)
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success, which is checked before reading it.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so the struct is initialised.
    Ok(unsafe { stat.assume_init() })
}
