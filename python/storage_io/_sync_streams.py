"""Pipes, sockets and terminals under `SyncStorageIo`: one worker thread per registration.

A stream (anything ``lseek`` refuses) cannot be written inline like a regular file: a write
into a full pipe would block the submitting thread until someone reads it. Its operations
go to a queue of that registration instead, and a worker thread performs them one at a time,
in submission order, each whole, with neither the instance lock nor the GIL held, and then
completes them. The worker exists only while its queue is not empty, so an idle stream costs
no thread. The queue is bounded (API.md "Bounded memory"): past the bounds submit_* raises
`QueueFullError` instead of buffering without limit.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from collections import deque
from typing import Any

from ._sync_file_io import _READ_CHUNK, _datasync

# Bounds of one stream registration's queue (API.md "Bounded memory"): past them submit_*
# raises QueueFullError. One operation of any size is accepted when nothing is queued.
STREAM_MAX_OPERATIONS = 1024
STREAM_MAX_BYTES = 64 * 1024 * 1024

_WRITE, _READ, _SYNC = 0, 1, 2


class _Stream:
    """The queue of a stream registration's operations and the state of its worker."""

    __slots__ = ("operations", "queued_bytes", "running")

    def __init__(self) -> None:
        # (token, kind, payload): the bytes of a write, the length of a read, None for a
        # datasync. The operation being performed stays at the head until it completes.
        self.operations: deque[tuple[int, int, Any]] = deque()
        self.queued_bytes = 0
        self.running = False


def _until_ready(descriptor: int, events: int) -> None:
    """Sleep until a non-blocking stream descriptor is ready for `events`."""
    poller = select.poll()
    poller.register(descriptor, events)
    poller.poll()


def _write_stream(descriptor: int, data: bytes) -> int:
    """Write all of `data` to a stream; return its size or the negative errno."""
    view = memoryview(data)
    written = 0
    try:
        while written < len(view):
            try:
                step = os.write(descriptor, view[written:])
            except BlockingIOError:  # an O_NONBLOCK descriptor that is full
                _until_ready(descriptor, select.POLLOUT)
                continue
            if step == 0:
                return -errno.EIO
            written += step
    except OSError as err:
        return -(err.errno or errno.EIO)
    return written


def _read_stream(descriptor: int, length: int) -> tuple[int, bytes | None]:
    """Read `length` bytes from a stream, or fewer at end of stream."""
    parts: list[bytes] = []
    done = 0
    try:
        while done < length:
            try:
                part = os.read(descriptor, min(length - done, _READ_CHUNK))
            except BlockingIOError:  # an O_NONBLOCK descriptor with nothing to read yet
                _until_ready(descriptor, select.POLLIN)
                continue
            if not part:
                break  # the writer closed: end of stream
            parts.append(part)
            done += len(part)
    except OSError as err:
        return -(err.errno or errno.EIO), None
    return done, parts[0] if len(parts) == 1 else b"".join(parts)


def _perform_stream_operation(descriptor: int, kind: int, payload: Any) -> tuple[int, Any]:
    """Run one queued stream operation; return (result, data of a read)."""
    if kind == _WRITE:
        return (_write_stream(descriptor, payload) if payload else 0), None
    if kind == _READ:
        return _read_stream(descriptor, payload) if payload else (0, b"")
    try:
        _datasync(descriptor)
    except OSError as err:  # EINVAL on a pipe or socket, as io_uring reports it
        return -(err.errno or errno.EIO), None
    return 0, None


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
