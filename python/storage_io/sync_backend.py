"""`SyncStorageIo`: the portable backend, in pure Python.

On a regular file it does each operation inline at submission (``os.pwrite``,
``os.pread``, ``os.fdatasync``) and queues its completion for the next
`poll_completions()`/`wait()`/`wait_for()`. Doing the I/O inline makes the ordering
guarantees hold by construction: a datasync runs after every earlier write to the file
because those writes have already returned.

A stream (a pipe, a socket, a terminal: anything ``lseek`` refuses) cannot be written inline:
a write into a full pipe would block the submitting thread until someone reads it. Its
operations go to a worker thread of that registration instead, which performs them one at a
time, in submission order, each whole, and completes them when done; `wait()` and
`wait_for()` sleep on a condition variable, holding neither the GIL nor the instance lock,
so the other threads' calls go on meanwhile.

The submit path for regular files is measured against a plain ``os.pwrite`` loop, so it
avoids work the answer does not need: bytes take a fast path, the handle is looked up with
one dict access, the ``submitted``/``completed`` counters and the count `flush()` returns are
derived from the token counter instead of being counted per call, and an instance inherited
across ``fork()`` is caught by the ``closed`` check every call makes anyway (a fork handler
marks it), not by a per-call pid check.

One idea per module: argument checks and messages (`_sync_arguments`), regular-file I/O
(`_sync_file_io`), stream workers (`_sync_streams`), the completion queue (`_sync_completions`),
submissions that never wait (`_sync_nowait`). This one keeps the class, its registrations
and its submit path (submit_write/submit_append spell theirs out, helpers as globals)."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
import weakref
from typing import TYPE_CHECKING

from . import _sync_nowait as _nowait
from ._native import (
    BadFdError,
    ClosedError,
    IoCompletion,
    IoFd,
    descriptor_for_writes,
    new_instance_id,
)
from ._sync_arguments import (
    _CLOSED,
    _INHERITED,
    _MAX_OFFSET,
    _as_buffers,
    _as_bytes_like,
    _as_offset,
    _as_position,
    _deadline,
)
from ._sync_completions import _CompletionHandBack
from ._sync_file_io import _datasync, _finish_short_write, _pwrite, _read_file, _write_vector
from ._sync_streams import (
    _READ,
    _SYNC,
    _WRITE,
    _Canceller,
    _is_stream,
    _Stream,
    _stream_socket,
    _StreamWorkers,
)
from .interface import StorageIo

if TYPE_CHECKING:
    from collections.abc import Iterable

    from typing_extensions import Buffer

    from .interface import HasFileno

__all__ = ["SyncStorageIo"]


# How long close() waits for the operations on pipes and sockets when it has no timeout
# before cancelling them (the io_uring backend waits as long).
STREAM_GRACE_S = 2.0


class _AppendEnd:
    """Where the next append to a file goes, shared by every registration of the file on
    one instance (the same descriptor registered twice, or two descriptors of one inode),
    so that appends through either land after each other, never over each other."""

    __slots__ = ("position", "registrations")

    def __init__(self) -> None:
        self.position = 0
        self.registrations = 0


class _RegisteredFile:
    """The backend's side of one registration: its own descriptor and the file's append
    end, for a stream the queue its worker runs, and how many datasyncs are running on it
    outside the lock (its descriptor stays open until they are done)."""

    __slots__ = ("descriptor", "end", "inode", "slot", "stream", "syncing")

    def __init__(
        self,
        descriptor: int,
        end: _AppendEnd,
        inode: tuple[int, int] | None,
        slot: int,
        stream: _Stream | None,
    ) -> None:
        self.descriptor = descriptor
        self.end = end
        self.inode = inode
        self.slot = slot
        self.stream = stream
        self.syncing = 0


# -- fork ------------------------------------------------------------------------------------

_live_instances: weakref.WeakSet[SyncStorageIo] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_live_instances):
        instance._inherited_by_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SyncStorageIo(_CompletionHandBack, _StreamWorkers, StorageIo):
    """The portable backend: performs each operation on a regular file inline at
    submission, and each operation on a pipe or socket in a worker thread of its own, and
    returns the completions from `poll_completions()`, `wait()` and `wait_for()`.

    Works wherever Python has ``os.pwrite``. See `StorageIo` for the methods; they behave
    (and fail, with the same messages) as on `UringStorageIo`.
    """

    __slots__ = (
        "fallback_reason",
        "_lock",
        "_cond",
        "_closed",
        "_inherited",
        "_instance_id",
        "_next_token",
        "_flushed_upto",
        "_ready",
        "_ready_by_token",
        "_in_flight",
        "_claimed",
        "_waiters",
        "_files",
        "_streams",
        "_generations",
        "_free_slots",
        "_failed",
        "_bytes_written",
        "_bytes_read",
        "_append_ends",
        "_canceller",
        "_released",
        "_nowait",
        "__weakref__",
    )

    fallback_reason: str | None

    def __init__(self) -> None:
        self.fallback_reason = None
        self._lock = threading.Lock()
        # Waiters (wait, wait_for, deregister_fd and close of a stream) sleep on this: it
        # releases the lock, so the other threads' calls go on meanwhile.
        self._cond = threading.Condition(self._lock)
        self._closed = False
        self._inherited = False
        self._instance_id = new_instance_id()
        self._next_token = 1
        self._flushed_upto = 1  # the token counter at the last flush/poll/wait/wait_for
        # Completed and not handed back, in completion order: the newest in a list (an
        # append is what the hot path can afford), the older ones indexed by token once a
        # wait_for() needs to find them (`_index_ready`).
        self._ready: list[IoCompletion] = []
        self._ready_by_token: dict[int, IoCompletion] = {}
        self._in_flight: set[int] = set()  # stream operations not completed yet
        self._claimed: set[int] = set()  # tokens some wait_for() is waiting for
        self._waiters = 0  # threads in wait(): inline completions wake them
        # Keyed by the IoFd itself: one hash and compare (owner, slot, generation) both
        # finds the file and rejects handles of other instances or earlier registrations.
        # Streams apart, so that the submit path of a regular file never asks which it is.
        self._files: dict[IoFd, _RegisteredFile] = {}
        self._streams: dict[IoFd, _RegisteredFile] = {}
        self._generations: list[int] = []  # per slot; bumped when the slot is freed
        self._free_slots: list[int] = []
        self._failed = 0
        self._bytes_written = 0
        self._bytes_read = 0
        # The append end of each file (device, inode) registered here, shared by its
        # registrations.
        self._append_ends: dict[tuple[int, int], _AppendEnd] = {}
        self._canceller: _Canceller | None = None  # made with the first stream worker
        self._released = False  # close() has closed the descriptors
        self._nowait: _nowait.NowaitQueue | None = None  # made by the first *_nowait call
        _live_instances.add(self)

    # -- identity ---------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """``"sync"``."""
        return "sync"

    @property
    def closed(self) -> bool:
        """True once `close()` has been called, or in a child process that inherited this
        instance across ``fork()``. Never waits for another thread's call."""
        return self._closed

    def __repr__(self) -> str:
        return f"SyncStorageIo(backend='sync', closed={self._closed})"

    def _closed_error(self) -> ClosedError:
        return ClosedError(_INHERITED if self._inherited else _CLOSED)

    def _inherited_by_child(self) -> None:
        """In a child after fork(): refuse every call, and let go of the descriptors this
        process got copies of (they stay open in the parent)."""
        # The parent's lock may have been held by a thread that does not exist here.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = True
        self._inherited = True
        self._ready = []
        self._ready_by_token = {}
        self._in_flight = set()
        self._nowait = None  # its worker thread was the parent's
        if not self._released:
            self._released = True
            try:
                self._close_descriptors()
            except OSError:
                pass

    # -- files ------------------------------------------------------------------------

    def register_fd(self, file: int | HasFileno) -> IoFd:
        with self._lock:
            if self._closed:
                raise self._closed_error()
        # A duplicate, or for an O_APPEND descriptor (whose writes would ignore their
        # offsets) a reopening without O_APPEND: made without the lock, since reopening
        # through /proc/self/fd can wait on NFS or FUSE. TypeError for something that is not
        # a descriptor, OSError(EBADF) for one not open.
        descriptor = descriptor_for_writes(file)
        try:
            status = os.fstat(descriptor)
            if stat.S_ISDIR(status.st_mode):
                number = file if isinstance(file, int) else file.fileno()
                raise ValueError(
                    f"file descriptor {number} is a directory: register a file, a pipe or a socket"
                )
            is_stream = _is_stream(descriptor, status.st_mode)
            stream = _Stream(_stream_socket(descriptor, status.st_mode)) if is_stream else None
        except BaseException:
            os.close(descriptor)
            raise
        with self._lock:
            if self._closed:
                if stream is not None:
                    stream.release()
                os.close(descriptor)
                raise self._closed_error()
            return self._add_registration(descriptor, status, stream)

    def _add_registration(
        self, descriptor: int, status: os.stat_result, stream: _Stream | None
    ) -> IoFd:
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = len(self._generations)
            self._generations.append(0)
        handle = IoFd(self._instance_id, slot, self._generations[slot])
        inode = None if stream is not None else (status.st_dev, status.st_ino)
        end = _AppendEnd() if inode is None else self._append_ends.setdefault(inode, _AppendEnd())
        # Appends go after what the file holds now and after every append reserved through
        # another registration of it, whichever is further.
        end.position = max(end.position, status.st_size if stream is None else 0)
        end.registrations += 1
        registered = self._files if stream is None else self._streams
        registered[handle] = _RegisteredFile(descriptor, end, inode, slot, stream)
        return handle

    def deregister_fd(self, fd: IoFd) -> None:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            record = self._lookup(fd)
            del (self._files if record.stream is None else self._streams)[fd]
            self._generations[record.slot] += 1
            self._free_slots.append(record.slot)
            record.end.registrations -= 1
            if record.inode is not None and not record.end.registrations:
                del self._append_ends[record.inode]
            # A regular file's writes finished when they were submitted, but a datasync may
            # still run; a stream's worker may still be busy: wait for them, lock released.
            stream = record.stream
            while record.syncing or (stream is not None and stream.running):
                self._cond.wait()
        # Closed without the lock: a close can wait for the file system (NFS writes back).
        if stream is not None:
            stream.release()
        os.close(record.descriptor)

    def _bad_fd_error(self, fd: object) -> BadFdError:
        if not isinstance(fd, IoFd):
            return BadFdError(f"expected an IoFd from register_fd(), got {type(fd).__name__}")
        if fd.owner != self._instance_id:
            return BadFdError(f"{fd!r} belongs to another StorageIo instance")
        return BadFdError(f"{fd!r} is not registered (deregistered or never issued)")

    def _lookup(self, fd: object) -> _RegisteredFile:
        """The registration of `fd`, a regular file or a stream; BadFdError otherwise."""
        try:
            record: _RegisteredFile | None = self._files.get(fd)  # type: ignore[call-overload]
            if record is None:
                record = self._streams.get(fd)  # type: ignore[call-overload]
        except TypeError:  # unhashable
            record = None
        if record is None:
            raise self._bad_fd_error(fd)
        return record

    # -- submissions ------------------------------------------------------------------

    # submit_write and submit_append spell out the same steps instead of sharing helpers:
    # each Python call costs about as much as the rest of the bookkeeping, and these two
    # are what the benchmark against a bare os.pwrite loop measures.

    def submit_write(self, fd: IoFd, data: Buffer, offset: int) -> int:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            try:
                record = self._files.get(fd)
            except TypeError:  # unhashable, so not an IoFd
                record = None
            if record is None:
                return self._write_to_stream(fd, data, offset)
            if type(data) is bytes:
                size = len(data)
            else:
                data, size = _as_bytes_like(data)
            if type(offset) is not int or offset < 0 or offset > _MAX_OFFSET:
                offset = _as_offset(offset)
            try:
                result = _pwrite(record.descriptor, data, offset)
                if result != size:
                    result = _finish_short_write(record.descriptor, data, size, result, offset)
            except OSError as err:
                result = -(err.errno or errno.EIO)
            token = self._next_token
            self._next_token = token + 1
            if result >= 0:
                self._bytes_written += result
            else:
                self._failed += 1
            self._ready.append(IoCompletion(token, result))
            if self._waiters:
                self._cond.notify_all()
            return token

    def submit_append(self, fd: IoFd, data: Buffer) -> int:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            try:
                record = self._files.get(fd)
            except TypeError:  # unhashable, so not an IoFd
                record = None
            if record is None:
                return self._write_to_stream(fd, data, None)
            if type(data) is bytes:
                size = len(data)
            else:
                data, size = _as_bytes_like(data)
            # The range is reserved now, whatever the write's outcome, as the io_uring
            # backend must do before the kernel runs it: both backends leave the same bytes.
            end = record.end
            offset = end.position
            end.position = offset + size
            try:
                result = _pwrite(record.descriptor, data, offset)
                if result != size:
                    result = _finish_short_write(record.descriptor, data, size, result, offset)
            except OSError as err:
                result = -(err.errno or errno.EIO)
            token = self._next_token
            self._next_token = token + 1
            if result >= 0:
                self._bytes_written += result
            else:
                self._failed += 1
            self._ready.append(IoCompletion(token, result))
            if self._waiters:
                self._cond.notify_all()
            return token

    def _write_to_stream(self, fd: object, data: object, offset: object) -> int:
        """submit_write/submit_append for a handle that is not a regular file's: queue it
        for the stream's worker, or raise what the regular path would (same order)."""
        record = self._lookup(fd)
        data, size = _as_bytes_like(data)
        if offset is not None:
            _as_offset(offset)  # checked, then ignored: a stream has no offsets
        return self._queue_on_stream(record, _WRITE, bytes(data), size)

    def submit_writev(self, fd: IoFd, buffers: Iterable[Buffer], offset: int) -> int:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            record = self._lookup(fd)
            views, size = _as_buffers(buffers)
            offset = _as_offset(offset)
            return self._finish_vector(record, views, size, offset)

    def submit_appendv(self, fd: IoFd, buffers: Iterable[Buffer]) -> int:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            record = self._lookup(fd)
            views, size = _as_buffers(buffers)
            offset = record.end.position
            if record.stream is None:
                record.end.position = offset + size
            return self._finish_vector(record, views, size, offset)

    def _finish_vector(
        self, record: _RegisteredFile, views: list[Buffer], size: int, offset: int
    ) -> int:
        if record.stream is not None:
            return self._queue_on_stream(record, _WRITE, b"".join(views), size)
        result = _write_vector(record.descriptor, views, size, offset)
        if result >= 0:
            self._bytes_written += result
        else:
            self._failed += 1
        return self._complete_inline(result, None)

    def submit_read(self, fd: IoFd, length: int, offset: int) -> int:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            record = self._lookup(fd)
            _nowait.wait_behind(self)  # sees every write called before it
            length = _as_position("length", length)
            offset = _as_offset(offset)
            if record.stream is not None:
                return self._queue_on_stream(record, _READ, length, 0)
            result, data = _read_file(record.descriptor, length, offset)
            if result >= 0:
                self._bytes_read += result
            else:
                self._failed += 1
            return self._complete_inline(result, data)

    def submit_datasync(self, fd: IoFd) -> int:
        # The fdatasync runs in the caller, like a write, but without the lock: it may take
        # a long time (seconds on a busy disk), and every write it must cover has already
        # returned. Meanwhile its token is in flight, and the descriptor stays open.
        with self._lock:
            if self._closed:
                raise self._closed_error()
            record = self._lookup(fd)
            _nowait.wait_behind(self)  # covers every write called before it
            if record.stream is not None:
                return self._queue_on_stream(record, _SYNC, None, 0)
            token = self._next_token
            self._next_token = token + 1
            self._in_flight.add(token)
            record.syncing += 1
        result = -errno.EINTR  # if a signal handler raises out of the call
        try:
            _datasync(record.descriptor)
            result = 0
        except OSError as err:
            result = -(err.errno or errno.EIO)
        finally:
            with self._lock:
                record.syncing -= 1
                self._in_flight.discard(token)
                if result < 0:
                    self._failed += 1
                self._ready.append(IoCompletion(token, result))
                self._cond.notify_all()
        return token

    # -- submissions that never wait (for an event loop): the functions of _sync_nowait ----
    supports_nowait = True
    submit_write_nowait = _nowait.submit_write_nowait
    submit_append_nowait = _nowait.submit_append_nowait
    submit_writev_nowait = _nowait.submit_writev_nowait
    submit_appendv_nowait = _nowait.submit_appendv_nowait
    submit_datasync_nowait = _nowait.submit_datasync_nowait
    submit_read_nowait = _nowait.submit_read_nowait
    take_nowait_completions = _nowait.take_nowait_completions
    register_eventfd = _nowait.register_eventfd
    unregister_eventfd = _nowait.unregister_eventfd

    # -- counts -------------------------------------------------------------------------

    def metrics(self) -> dict[str, int]:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            submitted = self._next_token - 1
            return {
                "submitted": submitted,
                "completed": submitted - len(self._in_flight),
                "failed": self._failed,
                "bytes_written": self._bytes_written,
                "bytes_read": self._bytes_read,
                "pending": len(self._ready) + len(self._ready_by_token) + len(self._in_flight),
                "registered_files": len(self._files) + len(self._streams),
            }

    # -- lifetime ---------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        deadline = _deadline(timeout)
        with self._lock:
            if self._inherited:
                raise self._closed_error()
            if self._released:
                return
            self._closed = True
            self._cond.notify_all()  # waiters in wait()/wait_for() give up: closed
            # Operations on pipes and sockets get STREAM_GRACE_S (or the timeout), then are
            # cancelled; a datasync of a regular file running in another thread cannot be
            # stopped, and is waited for. The lock is released while waiting; Ctrl-C
            # interrupts it, and close() called again goes on.
            streams_until = time.monotonic() + STREAM_GRACE_S if deadline is None else deadline
            while self._in_flight or any(
                r.stream is not None and r.stream.running for r in self._streams.values()
            ):
                canceller = self._canceller
                if canceller is not None and not canceller.cancelled:
                    left = streams_until - time.monotonic()
                    if left <= 0:
                        canceller.cancel()
                        continue
                    self._cond.wait(left)
                else:
                    self._cond.wait()
            self._ready = []
            self._ready_by_token = {}
            self._in_flight = set()
            self._released = True
            self._close_descriptors()

    def _close_descriptors(self) -> None:
        records = [*self._files.values(), *self._streams.values()]
        self._files.clear()
        self._streams.clear()
        self._append_ends.clear()
        if self._canceller is not None:
            self._canceller.close()
            self._canceller = None
        first_error: OSError | None = None
        for record in records:
            if record.stream is not None:
                record.stream.release()
            try:
                os.close(record.descriptor)
            except OSError as err:  # e.g. EIO from NFS: still close the others
                if first_error is None:
                    first_error = err
        if first_error is not None:
            raise first_error

    def __del__(self) -> None:
        # A forgotten close() must not leak the duplicated descriptors. Never blocks: a
        # stream worker holds a reference to the instance, so by now none is running. No
        # lock: nothing else can reach an object being finalized.
        if not getattr(self, "_released", True):
            self._closed = True
            self._released = True
            try:
                self._close_descriptors()
            except OSError:
                pass
