"""Driving a `StorageIo` that does its I/O at submission (the sync backend) from one
worker thread, so that the event loop never waits for the disk.

Operations go to the worker through one queue, in call order, with their bytes already
copied; the worker submits each on the `StorageIo`, collects the completions, and hands the
outcomes of a whole batch back to the loop with a single ``call_soon_threadsafe``. One
thread, not a pool: the order of the calls is the order of the I/O (appends land in call
order, a datasync covers every write called before it), and a batch costs one thread hop
however many operations it holds.

A datasync that follows another datasync of the same file in one batch, with no write to
that file between them, shares its ``fdatasync``: that one ran after both were called and
after every write called before either, so it covers the second as well (group commit,
which the sync backend does not do by itself).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["ThreadDriver"]

WRITE, APPEND, SYNC, READ, DEREGISTER, STOP = range(6)


class ThreadDriver:
    """One `StorageIo` driven by a worker thread for one event loop."""

    def __init__(self, io: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._io = io
        self._wakeup = threading.Condition(threading.Lock())
        self._queue: list[tuple[int, Any, Any, int, asyncio.Future[Any]]] = []
        self._outstanding = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._thread = threading.Thread(target=self._work, name="storage_io.aio", daemon=True)
        self._thread.start()

    # -- on the loop ------------------------------------------------------------------

    def _enqueue(self, kind: int, fd: Any, payload: Any, offset: int) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        with self._wakeup:
            self._queue.append((kind, fd, payload, offset, future))
            if len(self._queue) == 1:
                self._wakeup.notify()
        self._outstanding += 1
        return future

    def write(self, fd: Any, payload: bytes, offset: int) -> asyncio.Future[int]:
        return self._enqueue(WRITE, fd, payload, offset)

    def append(self, fd: Any, payload: bytes) -> asyncio.Future[int]:
        return self._enqueue(APPEND, fd, payload, 0)

    def datasync(self, fd: Any) -> asyncio.Future[None]:
        return self._enqueue(SYNC, fd, None, 0)

    def read(self, fd: Any, length: int, offset: int) -> asyncio.Future[bytes]:
        return self._enqueue(READ, fd, length, offset)

    def deregister(self, fd: Any) -> asyncio.Future[None]:
        return self._enqueue(DEREGISTER, fd, None, 0)

    def stop(self) -> asyncio.Future[None]:
        """Ends the worker after everything queued before; resolves when it has."""
        return self._enqueue(STOP, None, None, 0)

    def _deliver(self, outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
        self._outstanding -= len(outcomes)
        for future, failed, value in outcomes:
            if future.done():
                continue  # its waiter was cancelled; the I/O is done all the same
            if failed:
                future.set_exception(value)
            else:
                future.set_result(value)
        if self._idle_waiters and not self._outstanding:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def outstanding(self) -> int:
        return self._outstanding

    def idle(self) -> asyncio.Future[None]:
        future = self.loop.create_future()
        if self._outstanding:
            self._idle_waiters.append(future)
        else:
            future.set_result(None)
        return future

    # -- on the worker ----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue:
                    self._wakeup.wait()
                batch, self._queue = self._queue, []
            outcomes, stop = self._perform(batch)
            try:
                self.loop.call_soon_threadsafe(self._deliver, outcomes)
            except RuntimeError:
                return  # the loop is closed: nobody is left to tell
            if stop:
                return

    def _perform(self, batch: list[Any]) -> tuple[list[Any], bool]:
        """Submit the batch in order, then collect its completions; one outcome per
        operation, in order: (future, failed, result or exception)."""
        io = self._io
        submitted: list[Any] = []  # (future, kind, token) or (future, None, outcome)
        clean_sync: dict[Any, int] = {}  # file -> a datasync token no later write follows
        stop = False
        for kind, fd, payload, offset, future in batch:
            try:
                if kind == APPEND:
                    token = io.submit_append(fd, payload)
                    _forget(clean_sync, fd)
                elif kind == WRITE:
                    token = io.submit_write(fd, payload, offset)
                    _forget(clean_sync, fd)
                elif kind == SYNC:
                    token = _lookup(clean_sync, fd)
                    if token is None:
                        token = io.submit_datasync(fd)
                        clean_sync[fd] = token
                elif kind == READ:
                    token = io.submit_read(fd, payload, offset)
                elif kind == DEREGISTER:
                    io.deregister_fd(fd)
                    _forget(clean_sync, fd)
                    submitted.append((future, None, (False, None)))
                    continue
                else:
                    stop = True
                    submitted.append((future, None, (False, None)))
                    continue
            except Exception as exc:
                submitted.append((future, None, (True, exc)))
                continue
            submitted.append((future, kind, token))
        return self._collect(submitted), stop

    def _collect(self, submitted: list[Any]) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        io = self._io
        tokens = {entry[2] for entry in submitted if entry[1] is not None}
        completions: dict[int, Any] = {}
        lost: Exception | None = None
        try:
            while tokens.difference(completions):
                ready = io.poll_completions() if not completions else []
                if not ready:
                    ready = io.wait(min_complete=len(tokens) - len(completions))
                for completion in ready:
                    completions[completion.token] = completion
        except Exception as exc:  # the io was closed under us, say: tell every waiter
            lost = exc
        outcomes = []
        for future, kind, token in submitted:
            if kind is None:
                failed, value = token
                outcomes.append((future, failed, value))
                continue
            completion = completions.get(token)
            if completion is None:
                outcomes.append((future, True, lost))
                continue
            if completion.result < 0:
                outcomes.append((future, True, completion.error))
            elif kind == SYNC:
                outcomes.append((future, False, None))
            elif kind == READ:
                outcomes.append((future, False, completion.data))
            else:
                outcomes.append((future, False, completion.result))
        return outcomes


def _lookup(table: dict[Any, int], fd: Any) -> int | None:
    try:
        return table.get(fd)
    except TypeError:  # unhashable, so not an IoFd: the submission says so
        return None


def _forget(table: dict[Any, int], fd: Any) -> None:
    try:
        table.pop(fd, None)
    except TypeError:
        pass
