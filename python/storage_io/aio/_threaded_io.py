"""`ThreadedStorageIo`: a `StorageIo` that does the work of a blocking one (the sync backend,
whose `submit_*` run the I/O inline) on one worker thread, and signals an eventfd as its
completions arrive, the way a ring does.

What it is for: `AsyncWal` on the sync backend. The log submits its writes and datasyncs
while holding its lock; on the sync backend each submission would be the ``pwrite`` or
``fdatasync`` itself, so every append from the event loop could wait behind a commit's
``fdatasync``. Through this adapter a submission only queues the operation, the worker does
it, and the loop drives the log exactly as on io_uring (eventfd, then ``Wal.poll()``).

Only the calls the log makes are offered at full strength; `wait_for` follows API.md's
second round.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from .._native import ClosedError, IoCompletion, IoFd
from ..interface import StorageIo
from ._arguments import checked_length, checked_offset, owned_bytes

__all__ = ["ThreadedStorageIo"]

_ONE = (1).to_bytes(8, sys.byteorder)


class ThreadedStorageIo(StorageIo):
    """Wraps `inner`; the operations run on one worker thread, in submission order."""

    def __init__(self, inner: Any, owns_inner: bool) -> None:
        self._inner = inner
        self._owns_inner = owns_inner
        self._changed = threading.Condition()
        self._queue: list[tuple[int, str, tuple[Any, ...]]] = []
        self._done: dict[int, IoCompletion] = {}
        self._outstanding = 0
        self._next_token = 1
        self._eventfd: int | None = None
        self._closed = False
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="storage_io.aio.wal", daemon=True)
        self._thread.start()

    # -- identity ---------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._inner.backend  # type: ignore[no-any-return]

    @property
    def fallback_reason(self) -> str | None:
        return self._inner.fallback_reason  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return self._closed

    def register_eventfd(self, fd: int) -> None:
        with self._changed:
            self._eventfd = fd

    def unregister_eventfd(self) -> None:
        with self._changed:
            self._eventfd = None

    # -- files ------------------------------------------------------------------------

    def register_fd(self, file: Any) -> IoFd:
        self._check_open()
        return self._inner.register_fd(file)  # type: ignore[no-any-return]

    def deregister_fd(self, fd: IoFd) -> None:
        (completion,) = self.wait_for([self._enqueue("deregister_fd", (fd,))], None)
        if not completion.ok:
            assert completion.error is not None
            raise completion.error

    # -- submissions ------------------------------------------------------------------

    def submit_write(self, fd: IoFd, data: Any, offset: int) -> int:
        return self._enqueue("submit_write", (fd, owned_bytes(data), checked_offset(offset)))

    def submit_append(self, fd: IoFd, data: Any) -> int:
        return self._enqueue("submit_append", (fd, owned_bytes(data)))

    def submit_writev(self, fd: IoFd, buffers: Iterable[Any], offset: int) -> int:
        joined = b"".join(owned_bytes(b) for b in buffers)
        return self.submit_write(fd, joined, offset)

    def submit_appendv(self, fd: IoFd, buffers: Iterable[Any]) -> int:
        return self.submit_append(fd, b"".join(owned_bytes(b) for b in buffers))

    def submit_datasync(self, fd: IoFd) -> int:
        return self._enqueue("submit_datasync", (fd,))

    def submit_read(self, fd: IoFd, length: int, offset: int) -> int:
        return self._enqueue("submit_read", (fd, checked_length(length), checked_offset(offset)))

    def flush(self) -> int:
        self._check_open()
        return 0  # the worker starts on each operation as it is queued

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this StorageIo instance is closed")

    def _enqueue(self, method: str, args: tuple[Any, ...]) -> int:
        with self._changed:
            self._check_open()
            token = self._next_token
            self._next_token += 1
            self._queue.append((token, method, args))
            self._outstanding += 1
            self._changed.notify_all()
            return token

    # -- completions ------------------------------------------------------------------

    def poll_completions(self) -> list[IoCompletion]:
        with self._changed:
            self._check_open()
            return self._take_all()

    def wait(self, min_complete: int = 1, timeout: float | None = None) -> list[IoCompletion]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._check_open()
            target = min(min_complete, len(self._done) + self._outstanding)
            while len(self._done) < target and self._sleep(deadline):
                pass
            return self._take_all()

    def wait_for(self, tokens: Iterable[int], timeout: float | None = None) -> list[IoCompletion]:
        """Block until every token in `tokens` has completed; return their completions in
        that order. Raises `TimeoutError` (handing back nothing) when `timeout` passes."""
        tokens = list(tokens)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            for token in tokens:
                if not 0 < token < self._next_token:
                    raise ValueError(f"token {token} was never handed out by this instance")
            while not all(token in self._done for token in tokens):
                if not self._sleep(deadline):
                    raise TimeoutError("the operations did not complete in time")
            return [self._done.pop(token) for token in tokens]

    def _sleep(self, deadline: float | None) -> bool:
        """Wait for a change; False once `deadline` has passed."""
        if deadline is None:
            self._changed.wait()
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._changed.wait(remaining)
        return True

    def _take_all(self) -> list[IoCompletion]:
        ready = list(self._done.values())
        self._done.clear()
        return ready

    def pending_count(self) -> int:
        with self._changed:
            return self._outstanding + len(self._done)

    def metrics(self) -> dict[str, int]:
        return self._inner.metrics()  # type: ignore[no-any-return]

    # -- the worker -------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._stopping:
                    self._changed.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            finished = [self._perform(method, args, token) for token, method, args in batch]
            with self._changed:
                for completion in finished:
                    self._done[completion.token] = completion
                self._outstanding -= len(finished)
                self._changed.notify_all()
                eventfd = self._eventfd
            if eventfd is not None:
                try:
                    os.write(eventfd, _ONE)
                except OSError:
                    pass  # closed by the loop while detaching: nobody is listening

    def _perform(self, method: str, args: tuple[Any, ...], token: int) -> IoCompletion:
        inner = self._inner
        try:
            if method == "deregister_fd":
                inner.deregister_fd(*args)
                return IoCompletion(token, 0)
            inner_token = getattr(inner, method)(*args)
            (completion,) = _wait_for(inner, inner_token)
            return IoCompletion(token, completion.result, getattr(completion, "data", None))
        except OSError as exc:
            return IoCompletion(token, -(exc.errno or errno.EIO))
        except Exception:
            return IoCompletion(token, -errno.EINVAL)

    # -- lifetime ---------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            self._changed.notify_all()
        self._thread.join()
        if self._owns_inner:
            self._inner.close(timeout)


def _wait_for(inner: Any, token: int) -> list[IoCompletion]:
    """The completion of `token` on `inner` (only this worker collects from it)."""
    if hasattr(inner, "wait_for"):
        return inner.wait_for([token])  # type: ignore[no-any-return]
    while True:
        for completion in inner.wait(min_complete=1):
            if completion.token == token:
                return [completion]
