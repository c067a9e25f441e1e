//! The file table: registering a descriptor (our own duplicate, in a fixed-file slot),
//! the handles that name it and the slot's generation that makes a stale handle
//! recognisable, and deregistering.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

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

pub(super) struct OpenFile {
    // Our duplicate: closing it is what deregistering means; the ring refers to it by slot,
    // and a datasync run in the caller's thread uses it directly.
    pub(super) descriptor: OwnedFd,
    pub(super) append_position: u64,
    pub(super) next_write_seq: u64,
    /// Sequence numbers of this file's writes not yet completed (open batch included).
    pub(super) writes_in_flight: BTreeSet<u64>,
    /// The fdatasync of this file in the ring, which a datasync issued now may share
    /// (`shared_syncs`), and the datasyncs waiting for it to finish, to go as the next one.
    pub(super) shared_sync: Option<SharedSync>,
    pub(super) next_syncs: Vec<u64>,
    /// Datasyncs and reads waiting for earlier writes: (token, last write sequence they
    /// cover, what they are).
    pub(super) held: VecDeque<(u64, u64, Held)>,
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

impl UringBackend {
    pub fn register_fd(&mut self, fd: RawFd) -> Result<Handle, BackendError> {
        if file_type(fd)? == libc::S_IFDIR {
            return Err(BackendError::Invalid(format!(
                "file descriptor {fd} is a directory: register a file, a pipe or a socket"
            )));
        }
        let owned = descriptor_for_writes(fd)?;
        let (size, regular) = size_and_regularity(&owned)?;
        let stream = is_stream(&owned);
        let flush_descriptor = if self.background_flush_bytes > 0 && regular {
            descriptor_for_flushes(owned.as_raw_fd())
        } else {
            None
        };
        let Some(slot) = self.free_slots.pop() else {
            return Err(BackendError::TooManyFiles(format!(
                "all {} file slots are in use: deregister a file or raise IoUringConfig.max_files",
                self.slots.len()
            )));
        };
        if let Err(e) = self.manager.set_file(slot, owned.as_raw_fd()) {
            self.free_slots.push(slot);
            return Err(e.into());
        }
        let entry = &mut self.slots[slot as usize];
        entry.file = Some(OpenFile {
            descriptor: owned,
            append_position: size,
            next_write_seq: 0,
            writes_in_flight: BTreeSet::new(),
            shared_sync: None,
            next_syncs: Vec::new(),
            held: VecDeque::new(),
            stream: stream.then(crate::backend::streams::StreamQueue::default),
            operations: 0,
            open_batch: None,
            unflushed: Unflushed::default(),
            flush_in_flight: false,
            flush_descriptor,
            regular,
        });
        Ok(Handle {
            owner: self.owner,
            slot,
            generation: entry.generation,
        })
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
        let file = self.file_mut(handle)?;
        Ok(file.operations == 0 && !file.flush_in_flight)
    }

    /// Closes the backend's descriptor of an idle file (see `file_idle`).
    pub fn finish_deregister(&mut self, handle: Handle) -> Result<(), BackendError> {
        self.file_mut(handle)?;
        self.manager.set_file(handle.slot, -1)?;
        let slot = &mut self.slots[handle.slot as usize];
        slot.file = None; // closes our duplicate
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(handle.slot);
        Ok(())
    }

    /// Releases the files once `drained`. The ring and buffers go when the backend is
    /// dropped.
    pub fn release_files(&mut self) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.file.take().is_some() {
                let _ = self.manager.set_file(index as u32, -1);
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

/// The file's size, and whether it is a regular file.
fn size_and_regularity(fd: &OwnedFd) -> io::Result<(u64, bool)> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success, which is checked before reading it.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    let regular = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
    Ok((u64::try_from(stat.st_size).unwrap_or(0), regular))
}
