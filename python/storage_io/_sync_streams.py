"""Pipes, sockets and terminals under `SyncStorageIo`: one worker thread per registration.

A stream (anything ``lseek`` refuses) cannot be written inline like a regular file: a write
into a full pipe would block the submitting thread until someone reads it. Its operations
go to a queue of that registration instead, and a worker thread performs them one at a time,
in submission order, each whole, with neither the instance lock nor the GIL held, and then
completes them. The worker exists only while its queue is not empty, so an idle stream costs
no thread. The queue is bounded (API.md "Bounded memory"): past the bounds submit_* raises
`QueueFullError` instead of buffering without limit.

A worker never sleeps in a read or write that could wait for the other side forever: it
sleeps in ``poll()`` on the stream and on the instance's cancel pipe (`_Canceller`), and
then moves only what cannot block: a read takes what is there, a write to a pipe at most
``PIPE_BUF`` bytes (a pipe that polls writable has a free page), a socket is sent to with
``MSG_DONTWAIT``. So `close()` can stop an operation nobody will ever complete (a write to
a pipe nobody reads): it writes to the cancel pipe, and every worker completes what it was
doing and what is queued with ``-ECANCELED``, as io_uring's cancellation does.

`_StreamWorkers` is a part of `SyncStorageIo`, not a class of its own: its methods use the
instance's lock, token counter and completion queue directly, as the rest of the backend
does, so a stream's completions are handed back by the same code as a file's.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from ._native import IoCompletion, QueueFullError
from ._sync_file_io import _READ_CHUNK, _datasync

if TYPE_CHECKING:
    from .sync_backend import _RegisteredFile

# Bounds of one stream registration's queue (API.md "Bounded memory"): past them submit_*
# raises QueueFullError. One operation of any size is accepted when nothing is queued.
STREAM_MAX_OPERATIONS = 1024
STREAM_MAX_BYTES = 64 * 1024 * 1024

_WRITE, _READ, _SYNC = 0, 1, 2


class _Stream:
    """The queue of a stream registration's operations and the state of its worker."""

    __slots__ = ("operations", "queued_bytes", "running", "socket")

    def __init__(self, sock: socket.socket | None) -> None:
        # (token, kind, payload): the bytes of a write, the length of a read, None for a
        # datasync. The operation being performed stays at the head until it completes.
        self.operations: deque[tuple[int, int, Any]] = deque()
        self.queued_bytes = 0
        self.running = False
        # A socket's own object, on a duplicate of the backend's descriptor: it can be sent
        # to and received from without blocking (MSG_DONTWAIT), whatever the descriptor's
        # flags, which belong to the caller's open file description too.
        self.socket = sock

    def release(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


class _Canceller:
    """The cancel pipe every stream worker of an instance polls besides its stream: once
    written to, it stays readable, and each worker's operation in progress and everything
    queued behind it complete with -ECANCELED."""

    __slots__ = ("read_end", "write_end", "cancelled")

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            os.write(self.write_end, b"x")

    def close(self) -> None:
        for descriptor in (self.read_end, self.write_end):
            try:
                os.close(descriptor)
            except OSError:
                pass


class _Cancelled(Exception):
    """The cancel pipe became readable while an operation waited."""


def _until_ready(descriptor: int, events: int, cancel_fd: int) -> None:
    """Sleep until `descriptor` is ready for `events` (or in error: the next call reports
    it); raise `_Cancelled` when the cancel pipe is readable first."""
    poller = select.poll()
    poller.register(descriptor, events)
    poller.register(cancel_fd, select.POLLIN)
    while True:
        ready = dict(poller.poll())
        if cancel_fd in ready:
            raise _Cancelled
        if descriptor in ready:
            return


def _write_stream(descriptor: int, data: bytes, sock: socket.socket | None, cancel_fd: int) -> int:
    """Write all of `data` to a stream; return its size or the negative errno."""
    view = memoryview(data)
    written = 0
    try:
        while written < len(view):
            _until_ready(descriptor, select.POLLOUT, cancel_fd)
            try:
                if sock is not None:
                    step = sock.send(view[written:], socket.MSG_DONTWAIT)
                else:
                    # A pipe that polls writable has a free page: this much never blocks.
                    step = os.write(descriptor, view[written : written + select.PIPE_BUF])
            except BlockingIOError:  # raced by another writer, or a non-blocking descriptor
                continue
            if step == 0:
                return -errno.EIO
            written += step
    except _Cancelled:
        return -errno.ECANCELED
    except OSError as err:
        return -(err.errno or errno.EIO)
    return written


def _read_stream(
    descriptor: int, length: int, sock: socket.socket | None, cancel_fd: int
) -> tuple[int, bytes | None]:
    """Read `length` bytes from a stream, or fewer at end of stream."""
    parts: list[bytes] = []
    done = 0
    try:
        while done < length:
            _until_ready(descriptor, select.POLLIN, cancel_fd)
            want = min(length - done, _READ_CHUNK)
            try:
                # Readable: what is there comes back at once, never a wait for more.
                if sock is not None:
                    part = sock.recv(want, socket.MSG_DONTWAIT)
                else:
                    part = os.read(descriptor, want)
            except BlockingIOError:  # raced by another reader
                continue
            if not part:
                break  # the writer closed: end of stream
            parts.append(part)
            done += len(part)
    except _Cancelled:
        return -errno.ECANCELED, None
    except OSError as err:
        return -(err.errno or errno.EIO), None
    return done, parts[0] if len(parts) == 1 else b"".join(parts)


def _perform_stream_operation(
    descriptor: int, kind: int, payload: Any, sock: socket.socket | None, cancel_fd: int
) -> tuple[int, Any]:
    """Run one queued stream operation; return (result, data of a read)."""
    if kind == _WRITE:
        return (_write_stream(descriptor, payload, sock, cancel_fd) if payload else 0), None
    if kind == _READ:
        return _read_stream(descriptor, payload, sock, cancel_fd) if payload else (0, b"")
    try:
        _datasync(descriptor)
    except OSError as err:  # EINVAL on a pipe or socket, as io_uring reports it
        return -(err.errno or errno.EIO), None
    return 0, None


def _stream_socket(descriptor: int, mode: int) -> socket.socket | None:
    """A socket object of its own for a socket descriptor (see `_Stream.socket`)."""
    if not stat.S_ISSOCK(mode):
        return None
    duplicate = os.dup(descriptor)
    try:
        return socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return None


def _is_stream(descriptor: int, mode: int) -> bool:
    """Whether writes to `descriptor` ignore offsets (lseek refuses it: ESPIPE)."""
    if stat.S_ISREG(mode):
        return False
    try:
        os.lseek(descriptor, 0, os.SEEK_CUR)
    except OSError as err:
        if err.errno == errno.ESPIPE:
            return True
        raise
    return False


class _StreamWorkers:
    """The stream operations of `SyncStorageIo`: queueing them, and the worker that runs
    them (mixed into the backend class; the state is the instance's)."""

    if TYPE_CHECKING:
        # The instance state these methods use: it lives in SyncStorageIo's __slots__.
        _lock: threading.Lock
        _cond: threading.Condition
        _canceller: _Canceller | None
        _next_token: int
        _in_flight: set[int]
        _ready: list[IoCompletion]
        _failed: int
        _bytes_written: int
        _bytes_read: int
    else:
        # No slots of its own, so that a SyncStorageIo still has no __dict__. Hidden from
        # the type checker, which would otherwise hold the assignments below to this
        # class's (empty) slots rather than to those of SyncStorageIo.
        __slots__ = ()

    def _queue_on_stream(self, record: _RegisteredFile, kind: int, payload: Any, size: int) -> int:
        """Queue an operation for a stream's worker (started if idle); return its token."""
        stream = record.stream
        assert stream is not None
        queued = stream.operations
        if queued and (
            len(queued) >= STREAM_MAX_OPERATIONS or stream.queued_bytes + size > STREAM_MAX_BYTES
        ):
            raise QueueFullError(
                f"stream queue full: {len(queued)} operations ({stream.queued_bytes} bytes) "
                "waiting for this descriptor; wait for completions and retry"
            )
        if not stream.running:
            if self._canceller is None:
                self._canceller = _Canceller()
            # Started first (it waits for the lock we hold), so that a thread that cannot
            # be started (at interpreter shutdown) leaves nothing half-submitted. The worker
            # holds this instance until its queue is empty, so a dropped instance is
            # finalized only once its streams are done: never waited for.
            threading.Thread(
                target=self._run_stream,
                args=(stream, record.descriptor),
                name="storage_io-stream",
                daemon=True,
            ).start()
            stream.running = True
        token = self._next_token
        self._next_token = token + 1
        queued.append((token, kind, payload))
        stream.queued_bytes += size
        self._in_flight.add(token)
        return token

    def _run_stream(self, stream: _Stream, descriptor: int) -> None:
        """The worker of one stream: its operations one at a time, in submission order,
        the I/O with neither the lock nor the GIL held. The descriptor stays open while it
        runs: deregister_fd() and close() wait for `stream.running` to drop."""
        canceller = self._canceller
        assert canceller is not None
        while True:
            with self._lock:
                if not stream.operations:
                    stream.running = False
                    self._cond.notify_all()  # a deregister_fd/close may wait for this
                    return
                token, kind, payload = stream.operations[0]
                sock = stream.socket
            try:
                if canceller.cancelled:
                    result, data = -errno.ECANCELED, None
                else:
                    result, data = _perform_stream_operation(
                        descriptor, kind, payload, sock, canceller.read_end
                    )
            except BaseException:  # e.g. MemoryError: the token must still complete
                result, data = -errno.EIO, None
            with self._lock:
                stream.operations.popleft()
                if kind == _WRITE:
                    stream.queued_bytes -= len(payload)
                self._in_flight.discard(token)
                self._ready.append(self._stream_completion(token, kind, result, data))
                self._cond.notify_all()

    def _stream_completion(self, token: int, kind: int, result: int, data: Any) -> IoCompletion:
        if result < 0:
            self._failed += 1
        elif kind == _WRITE:
            self._bytes_written += result
        elif kind == _READ:
            self._bytes_read += result
        if data is None:
            return IoCompletion(token, result)
        return IoCompletion(token, result, data)
