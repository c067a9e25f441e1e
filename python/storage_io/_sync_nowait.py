"""The sync backend's submissions that never wait (``submit_*_nowait``), for an event loop.

`SyncStorageIo` does a regular file's I/O inside ``submit_*``, in the caller's thread; an
event loop's thread must not wait for a ``pwrite`` into a full page cache, let alone an
``fdatasync``. So a ``submit_*_nowait`` call only checks its arguments, copies the bytes,
takes its token, reserves an append's range and queues the operation; one worker thread
performs the queued operations in call order and hands their completions back through
``take_nowait_completions()``, signalling the registered eventfd as a ring would.

From the call on, the operation is the instance's: it counts as in flight, so
``deregister_fd()`` of its file and ``close()`` wait for it, whatever became of the caller
(its event loop may be gone). A plain ``submit_datasync``/``submit_read`` waits for the
queue first, so that it covers or sees every write called before it, as on io_uring.

One thread, started when work arrives and ending after a short idle spell: not a daemon,
so an interpreter that exits with operations queued performs them first. One thread, not a
pool: the order of the calls is the order of the I/O, and datasyncs of one file queued
together with no write between them share one ``fdatasync`` (each was called after every
write the shared one covers).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from ._native import IoCompletion, QueueFullError
from ._sync_arguments import _as_buffers, _as_bytes_like, _as_offset, _as_position
from ._sync_file_io import _datasync, _finish_short_write, _pwrite, _read_file

if TYPE_CHECKING:
    from collections.abc import Iterable

    from typing_extensions import Buffer

    from ._native import IoFd
    from .interface import HasFileno
    from .sync_backend import SyncStorageIo, _RegisteredFile

__all__ = ["NowaitQueue", "QUEUE_BOUND", "submit_write_nowait", "take_nowait_completions"]

WRITE, SYNC, READ, STREAM = range(4)

# Bytes the queue may hold, counting PER_OPERATION for each operation besides its data: past
# this a submit_*_nowait call raises QueueFullError and accepts nothing (as on io_uring).
QUEUE_BOUND = 256 << 20
PER_OPERATION = 64

# A worker with nothing to do waits this long for more before its thread ends.
_IDLE_S = 0.5

_ONE = (1).to_bytes(8, sys.byteorder)


class NowaitQueue:
    """The queue of one `SyncStorageIo`'s ``submit_*_nowait`` operations and the worker
    thread that performs them. Its state is guarded by the instance's lock."""

    __slots__ = ("_io", "_queue", "_cost", "_in_progress", "_ready", "_eventfd", "_worker")

    def __init__(self, io: SyncStorageIo) -> None:
        self._io = io
        # (kind, token, record, payload, offset): payload is the bytes of a write, the
        # length of a read, or for a stream the plain submit to make.
        self._queue: list[tuple[int, int, Any, Any, int]] = []
        self._cost = 0  # what the queued operations count against QUEUE_BOUND
        self._in_progress = 0  # operations the worker has taken and not finished
        self._ready: list[IoCompletion] = []
        self._eventfd: int | None = None
        self._worker: threading.Thread | None = None

    # -- at the call, under the instance's lock, the handle looked up ---------------------

    def write(self, fd: IoFd, record: _RegisteredFile, data: Any, offset: Any, vector: bool) -> int:
        if vector:
            views, size = _as_buffers(data)
            payload = b"".join(views)
        elif type(data) is bytes:
            payload, size = data, len(data)
        else:
            view, size = _as_bytes_like(data)
            payload = bytes(view)  # type: ignore[arg-type]
        at = None if offset is None else _as_offset(offset)
        if record.stream is not None:
            plain = self._io.submit_append if at is None else self._io.submit_write
            args = (fd, payload) if at is None else (fd, payload, at)
            return self._queue_stream(record, functools.partial(plain, *args))  # type: ignore[arg-type]
        if at is None:  # an append's range is reserved at the call, in call order
            at = record.end.position
            record.end.position = at + size
        return self._queue_file(WRITE, record, payload, at)

    def datasync(self, fd: IoFd, record: _RegisteredFile) -> int:
        if record.stream is not None:
            return self._queue_stream(record, functools.partial(self._io.submit_datasync, fd))
        return self._queue_file(SYNC, record, None, 0)

    def read(self, fd: IoFd, record: _RegisteredFile, length: Any, offset: Any) -> int:
        length = _as_position("length", length)
        offset = _as_offset(offset)
        if record.stream is not None:
            plain = functools.partial(self._io.submit_read, fd, length, offset)
            return self._queue_stream(record, plain)
        return self._queue_file(READ, record, length, offset)

    def _queue_file(self, kind: int, record: _RegisteredFile, payload: Any, offset: int) -> int:
        cost = PER_OPERATION + (len(payload) if kind == WRITE else 0)
        if self._queue and self._cost + cost > QUEUE_BOUND:
            raise QueueFullError(
                f"{len(self._queue)} operations ({self._cost} bytes) already wait for room, "
                f"the most a submit that never waits may queue is {QUEUE_BOUND} bytes: await "
                "earlier operations before submitting more"
            )
        self._cost += cost
        io = self._io
        token = io._next_token
        io._next_token = token + 1
        self.enqueue(kind, token, record, payload, offset)
        return token

    def _queue_stream(self, record: _RegisteredFile, plain: Any) -> int:
        """A stream's operation: the plain call, which the worker makes and whose stream
        worker keeps the order."""
        return self._queue_file(STREAM, record, plain, 0)

    def enqueue(
        self, kind: int, token: int, record: _RegisteredFile, payload: Any, offset: int
    ) -> None:
        io = self._io
        io._in_flight.add(token)
        record.syncing += 1  # its descriptor stays open until this is done
        self._queue.append((kind, token, record, payload, offset))
        if len(self._queue) == 1:
            io._cond.notify_all()  # a worker waiting for work
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="storage_io-nowait", daemon=False
                )
                self._worker.start()

    def take_ready(self) -> list[IoCompletion]:
        ready, self._ready = self._ready, []
        return ready

    def register_eventfd(self, fd: int) -> None:
        if self._eventfd is not None:
            raise OSError(errno.EBUSY, "an eventfd is registered already")
        self._eventfd = fd

    def unregister_eventfd(self) -> None:
        if self._eventfd is None:
            raise OSError(errno.ENXIO, "no eventfd is registered")
        self._eventfd = None

    def wait_until_empty(self) -> None:
        """Blocks (lock released) until every queued operation is done; the worker thread
        itself never waits here."""
        if self._worker is threading.current_thread():
            return
        while self._queue or self._in_progress:
            self._io._cond.wait()

    def busy(self) -> bool:
        return bool(self._queue or self._in_progress)

    # -- on the worker ------------------------------------------------------------------

    def _work(self) -> None:
        io = self._io
        while True:
            with io._lock:
                if not self._queue:
                    io._cond.wait(_IDLE_S)
                if not self._queue:
                    self._worker = None
                    return
                batch, self._queue = self._queue, []
                self._cost = 0
                self._in_progress = len(batch)
            finished = self._perform(batch)
            with io._lock:
                for (_, token, record, _, _), completion in zip(batch, finished, strict=True):
                    record.syncing -= 1
                    io._in_flight.discard(token)
                    if completion.result < 0:
                        io._failed += 1
                    self._ready.append(completion)
                self._in_progress = 0
                io._cond.notify_all()  # close(), deregister_fd(), plain submits waiting
                eventfd = self._eventfd
            if eventfd is not None:
                try:
                    os.write(eventfd, _ONE)
                except OSError:
                    pass  # closed by the loop while it let go of it: nobody listens

    def _perform(self, batch: list[tuple[int, int, Any, Any, int]]) -> list[IoCompletion]:
        out: list[IoCompletion] = []
        synced: dict[int, int] = {}  # descriptor -> result of a datasync no write followed
        for kind, token, record, payload, offset in batch:
            descriptor = record.descriptor
            if kind == WRITE:
                synced.pop(descriptor, None)
                out.append(IoCompletion(token, self._write(descriptor, payload, offset)))
            elif kind == SYNC:
                if descriptor not in synced:
                    synced[descriptor] = self._datasync(descriptor)
                out.append(IoCompletion(token, synced[descriptor]))
            elif kind == READ:
                result, data = _read_file(descriptor, payload, offset)
                if result >= 0:
                    with self._io._lock:
                        self._io._bytes_read += result
                out.append(IoCompletion(token, result, data))
            else:
                out.append(self._on_stream(token, payload))
        return out

    def _write(self, descriptor: int, data: bytes, offset: int) -> int:
        size = len(data)
        try:
            result = _pwrite(descriptor, data, offset)
            if result != size:
                result = _finish_short_write(descriptor, data, size, result, offset)
        except OSError as err:
            return -(err.errno or errno.EIO)
        with self._io._lock:
            self._io._bytes_written += result
        return result

    @staticmethod
    def _datasync(descriptor: int) -> int:
        try:
            _datasync(descriptor)
        except OSError as err:
            return -(err.errno or errno.EIO)
        return 0

    def _on_stream(self, token: int, submit: Any) -> IoCompletion:
        """A stream's operation: the plain submission (which its own worker runs in order),
        then its completion under this operation's token."""
        try:
            (done,) = self._io.wait_for([submit()])
        except OSError as err:
            return IoCompletion(token, -(err.errno or errno.EIO))
        except Exception:  # the instance closed under it
            return IoCompletion(token, -errno.ECANCELED)
        data = done.data
        return (
            IoCompletion(token, done.result)
            if data is None
            else IoCompletion(token, done.result, data)
        )


# -- the methods of SyncStorageIo that use the queue (assigned in its class body) --------------


def submit_write_nowait(io: SyncStorageIo, fd: IoFd, data: Buffer, offset: int) -> int:
    return _call(io, NowaitQueue.write, fd, data, offset, False)


def submit_append_nowait(io: SyncStorageIo, fd: IoFd, data: Buffer) -> int:
    return _call(io, NowaitQueue.write, fd, data, None, False)


def submit_writev_nowait(
    io: SyncStorageIo, fd: IoFd, buffers: Iterable[Buffer], offset: int
) -> int:
    return _call(io, NowaitQueue.write, fd, buffers, offset, True)


def submit_appendv_nowait(io: SyncStorageIo, fd: IoFd, buffers: Iterable[Buffer]) -> int:
    return _call(io, NowaitQueue.write, fd, buffers, None, True)


def submit_datasync_nowait(io: SyncStorageIo, fd: IoFd) -> int:
    return _call(io, NowaitQueue.datasync, fd)


def submit_read_nowait(io: SyncStorageIo, fd: IoFd, length: int, offset: int) -> int:
    return _call(io, NowaitQueue.read, fd, length, offset)


def _call(io: SyncStorageIo, method: Any, fd: IoFd, *args: Any) -> int:
    """Under the instance's lock, as every submission: closed first, then the handle."""
    with io._lock:
        if io._closed:
            raise io._closed_error()
        record = io._lookup(fd)
        return method(_queue_of(io), fd, record, *args)  # type: ignore[no-any-return]


def wait_behind(io: SyncStorageIo) -> None:
    """A plain datasync or read (lock held) waits until the queue is done, so that it covers
    or sees every write called before it."""
    if io._nowait is not None and io._nowait.busy():
        io._nowait.wait_until_empty()


def _queue_of(io: SyncStorageIo) -> NowaitQueue:
    if io._nowait is None:
        io._nowait = NowaitQueue(io)
    return io._nowait


def take_nowait_completions(io: SyncStorageIo) -> list[IoCompletion]:
    with io._lock:
        if io._closed:
            raise io._closed_error()
        return [] if io._nowait is None else io._nowait.take_ready()


def register_eventfd(io: SyncStorageIo, fd: int | HasFileno) -> None:
    with io._lock:
        if io._closed:
            raise io._closed_error()
        _queue_of(io).register_eventfd(fd if isinstance(fd, int) else fd.fileno())


def unregister_eventfd(io: SyncStorageIo) -> None:
    with io._lock:
        if io._closed:
            raise io._closed_error()
        if io._nowait is None:
            raise OSError(errno.ENXIO, "no eventfd is registered")
        io._nowait.unregister_eventfd()
