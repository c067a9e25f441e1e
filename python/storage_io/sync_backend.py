"""`SyncStorageIo`: the portable backend, in pure Python.

It does each operation inline at submission (``os.pwrite``, ``os.fdatasync``) and queues
its completion for the next `poll_completions()`/`wait()`. Doing the I/O inline makes the
ordering guarantees hold by construction: a datasync runs after every earlier write to the
file because those writes have already returned.

The submit path is measured against a plain ``os.pwrite`` loop, so it avoids work the
answer does not need: bytes take a fast path, the handle is looked up with one dict access,
and the ``submitted``/``completed`` counters are derived from the token counter instead of
being counted per call.
"""

from __future__ import annotations

import errno
import operator
import os
import threading
from typing import TYPE_CHECKING

from ._native import (
    BadFdError,
    ClosedError,
    IoCompletion,
    IoFd,
    descriptor_for_writes,
    new_instance_id,
)
from .interface import StorageIo

if TYPE_CHECKING:
    from collections.abc import Iterable

    from typing_extensions import Buffer

    from .interface import HasFileno

__all__ = ["SyncStorageIo"]

_pwrite = os.pwrite
# fdatasync skips the metadata a log does not need (mtime); platforms without it (macOS)
# get fsync, which is durable too, only slower.
_datasync = getattr(os, "fdatasync", os.fsync)
_MAX_OFFSET = 2**63 - 1  # off_t
_INFINITY = float("inf")


class _RegisteredFile:
    """The backend's side of one registration: its own descriptor and append position."""

    __slots__ = ("descriptor", "append_position", "slot")

    def __init__(self, descriptor: int, append_position: int, slot: int) -> None:
        self.descriptor = descriptor
        self.append_position = append_position
        self.slot = slot


def _closed_error() -> ClosedError:
    return ClosedError("this SyncStorageIo is closed")


def _bad_fd_error(fd: object) -> BadFdError:
    return BadFdError(
        f"{fd!r} is not a registered IoFd of this instance: pass the handle register_fd() "
        "returned, before deregister_fd()"
    )


def _as_bytes_like(data: object) -> tuple[Buffer, int]:
    """Return `data` in a form ``os.pwrite`` takes, and its size in bytes."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data must be a bytes-like object (bytes, bytearray, memoryview, array...), "
            f"not {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        # os.pwrite needs one contiguous run of memory; only this case pays for a copy.
        return view.tobytes(), view.nbytes
    return view, view.nbytes


def _as_offset(offset: object) -> int:
    if type(offset) is int:
        value = offset
    else:
        try:
            value = operator.index(offset)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"offset must be an int, not {type(offset).__name__}") from None
    if not 0 <= value <= _MAX_OFFSET:
        raise ValueError(f"offset must be in 0..{_MAX_OFFSET}, got {value}")
    return value


def _finish_short_write(descriptor: int, data: Buffer, size: int, written: int, offset: int) -> int:
    """Write the rest of `data` after a short write of `written` bytes; return `size`, or the
    negative errno that stopped it.

    A regular file rarely writes short (a signal, a nearly full disk, RLIMIT_FSIZE), but when
    it does the rest is written here, so a completion is never short (API guarantee 4).
    """
    remaining = memoryview(data).cast("B")
    try:
        while written < size:
            step = _pwrite(descriptor, remaining[written:], offset + written)
            if step == 0:
                # No progress and no errno: report it instead of spinning forever.
                return -errno.EIO
            written += step
    except OSError as err:
        return -(err.errno or errno.EIO)
    return size


# pwritev takes at most IOV_MAX buffers; more are joined into one.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _as_buffers(buffers: object) -> tuple[list[Buffer], int]:
    """Return the bytes-like items of `buffers` and their total size in bytes."""
    try:
        memoryview(buffers)  # type: ignore[arg-type]
    except TypeError:
        pass
    else:
        raise TypeError(
            "buffers must be a sequence of bytes-like objects, not one bytes-like object "
            "(use submit_write/submit_append for that)"
        )
    try:
        items = list(buffers)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"buffers must be a sequence of bytes-like objects, not {type(buffers).__name__}"
        ) from None
    views: list[Buffer] = []
    total = 0
    for item in items:
        if type(item) is bytes:
            views.append(item)
            total += len(item)
        else:
            view, size = _as_bytes_like(item)
            views.append(view)
            total += size
    return views, total


def _write_vector(descriptor: int, views: list[Buffer], total: int, offset: int) -> int:
    """Write `views` back to back at `offset`; return `total` or the negative errno."""
    try:
        if len(views) <= _IOV_MAX and hasattr(os, "pwritev"):
            written = os.pwritev(descriptor, views, offset)
            if written == total:
                return total
            joined = b"".join(views)
        else:
            joined = b"".join(views)
            written = 0
        return _finish_short_write(descriptor, joined, total, written, offset)
    except OSError as err:
        return -(err.errno or errno.EIO)


class SyncStorageIo(StorageIo):
    """The portable backend: performs each operation inline at submission and returns its
    completion on the next `poll_completions()` or `wait()`.

    Works wherever Python has ``os.pwrite``; it never blocks in `wait()`, because everything
    submitted has already completed. See `StorageIo` for the methods.
    """

    __slots__ = (
        "fallback_reason",
        "_lock",
        "_closed",
        "_instance_id",
        "_next_token",
        "_ready",
        "_files",
        "_generations",
        "_free_slots",
        "_failed",
        "_bytes_written",
        "__weakref__",
    )

    fallback_reason: str | None

    def __init__(self) -> None:
        self.fallback_reason = None
        self._lock = threading.Lock()
        self._closed = False
        self._instance_id = new_instance_id()
        self._next_token = 1
        self._ready: list[IoCompletion] = []
        # Keyed by the IoFd itself: one hash and compare (owner, slot, generation) both
        # finds the file and rejects handles of other instances or earlier registrations.
        self._files: dict[IoFd, _RegisteredFile] = {}
        self._generations: list[int] = []  # per slot; bumped when the slot is freed
        self._free_slots: list[int] = []
        self._failed = 0
        self._bytes_written = 0

    # -- identity ---------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return "sync"

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"files={len(self._files)}"
        return f"<SyncStorageIo {state} pending={len(self._ready)}>"

    # -- files ------------------------------------------------------------------------

    def register_fd(self, file: int | HasFileno) -> IoFd:
        with self._lock:
            if self._closed:
                raise _closed_error()
            if isinstance(file, int):
                source = file
            elif hasattr(file, "fileno"):
                source = file.fileno()
            else:
                raise TypeError(
                    f"file must be an int descriptor or have a fileno() method, "
                    f"not {type(file).__name__}"
                )
            # A duplicate, or for an O_APPEND descriptor (whose writes would ignore their
            # offsets) a reopening without O_APPEND; OSError(EBADF) for one not open.
            descriptor = descriptor_for_writes(source)
            try:
                size = os.fstat(descriptor).st_size
            except BaseException:
                os.close(descriptor)
                raise
            if self._free_slots:
                slot = self._free_slots.pop()
            else:
                slot = len(self._generations)
                self._generations.append(0)
            handle = IoFd(self._instance_id, slot, self._generations[slot])
            self._files[handle] = _RegisteredFile(descriptor, size, slot)
            return handle

    def deregister_fd(self, fd: IoFd) -> None:
        with self._lock:
            if self._closed:
                raise _closed_error()
            record = self._lookup(fd)
            del self._files[fd]
            self._generations[record.slot] += 1
            self._free_slots.append(record.slot)
            # Nothing is in flight: every operation finished when it was submitted.
            os.close(record.descriptor)

    def _lookup(self, fd: object) -> _RegisteredFile:
        try:
            record: _RegisteredFile | None = self._files.get(fd)  # type: ignore[call-overload]
        except TypeError:  # unhashable
            record = None
        if record is None:
            raise _bad_fd_error(fd)
        return record

    # -- submissions ------------------------------------------------------------------

    # submit_write and submit_append spell out the same steps instead of sharing helpers:
    # each Python call costs about as much as the rest of the bookkeeping, and these two
    # are what the benchmark against a bare os.pwrite loop measures.

    def submit_write(self, fd: IoFd, data: Buffer, offset: int) -> int:
        with self._lock:
            if self._closed:
                raise _closed_error()
            try:
                record = self._files.get(fd)
            except TypeError:  # unhashable, so not an IoFd
                record = None
            if record is None:
                raise _bad_fd_error(fd)
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
            return token

    def submit_append(self, fd: IoFd, data: Buffer) -> int:
        with self._lock:
            if self._closed:
                raise _closed_error()
            try:
                record = self._files.get(fd)
            except TypeError:  # unhashable, so not an IoFd
                record = None
            if record is None:
                raise _bad_fd_error(fd)
            if type(data) is bytes:
                size = len(data)
            else:
                data, size = _as_bytes_like(data)
            # The range is reserved now, whatever the write's outcome, as the io_uring
            # backend must do before the kernel runs it: both backends leave the same bytes.
            offset = record.append_position
            record.append_position = offset + size
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
            return token

    def submit_writev(self, fd: IoFd, buffers: Iterable[Buffer], offset: int) -> int:
        with self._lock:
            if self._closed:
                raise _closed_error()
            record = self._lookup(fd)
            views, size = _as_buffers(buffers)
            offset = _as_offset(offset)
            return self._finish_vector(record, views, size, offset)

    def submit_appendv(self, fd: IoFd, buffers: Iterable[Buffer]) -> int:
        with self._lock:
            if self._closed:
                raise _closed_error()
            record = self._lookup(fd)
            views, size = _as_buffers(buffers)
            offset = record.append_position
            record.append_position = offset + size
            return self._finish_vector(record, views, size, offset)

    def _finish_vector(
        self, record: _RegisteredFile, views: list[Buffer], size: int, offset: int
    ) -> int:
        result = _write_vector(record.descriptor, views, size, offset)
        token = self._next_token
        self._next_token = token + 1
        if result >= 0:
            self._bytes_written += result
        else:
            self._failed += 1
        self._ready.append(IoCompletion(token, result))
        return token

    def submit_datasync(self, fd: IoFd) -> int:
        with self._lock:
            if self._closed:
                raise _closed_error()
            record = self._lookup(fd)
            try:
                _datasync(record.descriptor)
                result = 0
            except OSError as err:
                result = -(err.errno or errno.EIO)
                self._failed += 1
            token = self._next_token
            self._next_token = token + 1
            self._ready.append(IoCompletion(token, result))
            return token

    def flush(self) -> int:
        with self._lock:
            if self._closed:
                raise _closed_error()
            return 0  # nothing is ever queued: submissions run inline

    # -- completions ------------------------------------------------------------------

    def poll_completions(self) -> list[IoCompletion]:
        with self._lock:
            if self._closed:
                raise _closed_error()
            ready = self._ready
            self._ready = []
            return ready

    def wait(self, min_complete: int = 1, timeout: float | None = None) -> list[IoCompletion]:
        with self._lock:
            if self._closed:
                raise _closed_error()
            if operator.index(min_complete) < 0:
                raise ValueError(f"min_complete must be >= 0, got {min_complete}")
            # Same rule as the io_uring backend: a finite number of seconds (NaN and inf
            # are refused; None is the way to say "no limit").
            if timeout is not None and not 0 <= timeout < _INFINITY:
                raise ValueError(
                    f"timeout must be None or a finite number of seconds >= 0, got {timeout}"
                )
            # Every submitted operation has already completed, so whatever is outstanding is
            # ready: returning it all satisfies min_complete (or is all there is) at once.
            ready = self._ready
            self._ready = []
            return ready

    def pending_count(self) -> int:
        with self._lock:
            if self._closed:
                raise _closed_error()
            return len(self._ready)

    def metrics(self) -> dict[str, int]:
        with self._lock:
            if self._closed:
                raise _closed_error()
            submitted = self._next_token - 1
            return {
                "submitted": submitted,
                "completed": submitted,  # each operation completes inside its submit call
                "failed": self._failed,
                "bytes_written": self._bytes_written,
                "pending": len(self._ready),
                "registered_files": len(self._files),
            }

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._ready = []
            self._close_descriptors()

    def _close_descriptors(self) -> None:
        records = list(self._files.values())
        self._files.clear()
        first_error: OSError | None = None
        for record in records:
            try:
                os.close(record.descriptor)
            except OSError as err:  # e.g. EIO from NFS: still close the others
                if first_error is None:
                    first_error = err
        if first_error is not None:
            raise first_error

    def __del__(self) -> None:
        # A forgotten close() must not leak the duplicated descriptors. No lock: nothing
        # else can reach an object being finalized.
        if not getattr(self, "_closed", True):
            self._closed = True
            try:
                self._close_descriptors()
            except OSError:
                pass
