//! The descriptor a backend keeps for a registered file.
//!
//! Our writes go to offsets reserved at submission, so the descriptor must not carry
//! O_APPEND: on Linux a write through an O_APPEND description ignores its offset (pwrite(2),
//! BUGS) and io_uring's writes do the same, so appends would land in completion order, and
//! a write the caller places in the middle would land at the end. dup() shares the open
//! file description, flags included, and clearing O_APPEND on it would change the caller's
//! descriptor too; so an O_APPEND descriptor is reopened through /proc/self/fd as a new
//! description of the same file, without O_APPEND.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A descriptor of our own for the file behind `fd`, without O_APPEND, close-on-exec.
pub fn descriptor_for_writes(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFL) on any integer is defined; a bad one gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_APPEND == 0 {
        // SAFETY: as above; on success the new descriptor is ours alone.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` was just created and nobody else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(dup) });
    }
    reopen_without_append(fd, flags)
}

/// Reopening an O_APPEND descriptor failed; says why that was needed. The errno stays
/// reachable as the error's `source`.
#[derive(Debug)]
pub struct ReopenFailed {
    fd: RawFd,
    pub source: io::Error,
}

impl std::fmt::Display for ReopenFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "descriptor {} was opened with O_APPEND, which would make writes ignore their \
             offsets; reopening it without O_APPEND through /proc/self/fd failed: {}. Open \
             the file without O_APPEND (storage_io places appends itself)",
            self.fd, self.source
        )
    }
}

impl std::error::Error for ReopenFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(target_os = "linux")]
fn reopen_without_append(fd: RawFd, flags: i32) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in it");
    // Keep only what matters to how writes behave: the access mode, O_DIRECT, O_DSYNC,
    // O_SYNC, O_NOATIME, O_NONBLOCK. F_GETFL also reports how the file was opened, and
    // some of that means something else on a reopen: O_TMPFILE includes O_DIRECTORY
    // (reopening the file with it fails with ENOTDIR), O_NOFOLLOW refuses the /proc link.
    let keep = flags
        & (libc::O_ACCMODE
            | libc::O_DIRECT
            | libc::O_DSYNC
            | libc::O_SYNC
            | libc::O_NOATIME
            | libc::O_NONBLOCK
            | libc::O_LARGEFILE);
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let reopened = unsafe { libc::open(path.as_ptr(), keep | libc::O_CLOEXEC) };
    if reopened < 0 {
        let source = io::Error::last_os_error();
        return Err(io::Error::new(source.kind(), ReopenFailed { fd, source }));
    }
    // SAFETY: `reopened` was just created and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(reopened) })
}

#[cfg(not(target_os = "linux"))]
fn reopen_without_append(fd: RawFd, _flags: i32) -> io::Result<OwnedFd> {
    // Elsewhere pwrite honours the offset of an O_APPEND descriptor (POSIX leaves it open,
    // the BSDs and macOS honour it): a plain duplicate does.
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on any integer is defined.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` was just created and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// A descriptor of the file behind `fd` on an open file description of its own, for the
/// backend's background flushes; `None` where they would serve no purpose or cannot have one.
///
/// An fdatasync reports a writeback error once per open file description: it advances that
/// description's error cursor. Run on a description the caller's own descriptors share, a
/// flush the caller never asked for would take an error their datasync (or an fsync of
/// their own) should have reported. On a description of its own it takes only its own copy.
///
/// `None` when the file is opened O_SYNC or O_DSYNC (every write is durable already: a
/// flush would only cost) and when reopening fails (a file the caller may write but not
/// open again, such as one created read-only): such a file is simply not flushed early.
#[cfg(target_os = "linux")]
pub fn descriptor_for_flushes(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: fcntl(F_GETFL) on any integer is defined; a bad one gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || flags & (libc::O_DSYNC | libc::O_SYNC) != 0 {
        return None;
    }
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in it");
    // The caller's access mode first (it opened the file so), else read-only: fdatasync
    // needs no write access.
    [flags & libc::O_ACCMODE, libc::O_RDONLY]
        .into_iter()
        .find_map(|mode| {
            // SAFETY: `path` is a NUL-terminated string that outlives the call.
            let reopened = unsafe { libc::open(path.as_ptr(), mode | libc::O_CLOEXEC) };
            // SAFETY: on success `reopened` was just created and nobody else owns it.
            (reopened >= 0).then(|| unsafe { OwnedFd::from_raw_fd(reopened) })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::fs::FileExt;

    #[test]
    fn an_o_append_descriptor_is_reopened_so_offsets_hold() {
        let path =
            std::env::temp_dir().join(format!("storage_io_rs_{}_append", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let appending = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let ours = std::fs::File::from(descriptor_for_writes(appending.as_raw_fd()).unwrap());
        ours.write_at(b"ab", 2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"01ab456789");
        // The caller's descriptor still appends.
        (&appending).write_all(b"!").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"01ab456789!");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn flushes_get_an_open_file_description_of_their_own() {
        let path =
            std::env::temp_dir().join(format!("storage_io_rs_{}_flushfd", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let ours = descriptor_for_writes(file.as_raw_fd()).unwrap();
        let flushes = descriptor_for_flushes(ours.as_raw_fd()).expect("a plain file reopens");
        // Status flags belong to the description: set on ours, they show on a duplicate of
        // it (the caller's) and not on the flush descriptor.
        // SAFETY: fcntl on descriptors owned above.
        unsafe {
            let set = libc::fcntl(ours.as_raw_fd(), libc::F_GETFL) | libc::O_NONBLOCK;
            assert_eq!(libc::fcntl(ours.as_raw_fd(), libc::F_SETFL, set), 0);
            assert_ne!(
                libc::fcntl(file.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK,
                0
            );
            assert_eq!(
                libc::fcntl(flushes.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK,
                0
            );
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_dsync_file_is_not_flushed_in_the_background() {
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("storage_io_rs_{}_dsync", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DSYNC)
            .open(&path)
            .unwrap();
        assert!(descriptor_for_flushes(file.as_raw_fd()).is_none());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_unnamed_temporary_file_opened_to_append_is_reopened() {
        let dir = std::ffi::CString::new(std::env::temp_dir().to_str().unwrap()).unwrap();
        // SAFETY: open with a NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                dir.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_APPEND | libc::O_CLOEXEC,
                0o600,
            )
        };
        assert!(fd >= 0, "O_TMPFILE: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just opened and is ours.
        let appending = unsafe { std::fs::File::from_raw_fd(fd) };
        (&appending).write_all(b"0123").unwrap();
        let ours = std::fs::File::from(descriptor_for_writes(fd).unwrap());
        ours.write_at(b"ab", 1).unwrap();
        let mut got = [0u8; 4];
        appending.read_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"0ab3");
    }

    #[test]
    fn a_bad_descriptor_is_ebadf() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.into_raw_fd();
        // SAFETY: closing a descriptor we own, to make its number dangling.
        unsafe { libc::close(fd) };
        let err = descriptor_for_writes(fd).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
