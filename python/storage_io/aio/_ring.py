"""Driving an io_uring `StorageIo` from the event loop, with no thread.

The ring signals an eventfd (plain ``IORING_REGISTER_EVENTFD``) for every completion it
posts; the loop watches the eventfd with ``add_reader``. Each wake-up reads the eventfd
first and then polls until nothing is left, so a completion posted after the read signals
again and none is missed; draining fully also moves completions out of the kernel's overflow
list (``poll_completions`` enters the kernel when there are any). Each token's completion
resolves one future.

Submissions go to the `StorageIo` at the call (it copies the bytes), and one ``flush()``
per loop tick hands them to the kernel together: a STANDARD ring only hands work over at a
flush, poll or wait, and appends made in one tick are combined into few kernel writes.

What must not happen on the loop is a call that sleeps in the kernel. `submit_*` sleeps
when the registered buffers a write needs are all in flight, so this driver counts the
buffers its writes hold (an upper bound: appends combined into one buffer are counted once
each) and holds a write back, with everything after it, until completions make room.
`deregister_fd` and `close` sleep until the file's work (a background flush included) is
done: they run on a helper thread, while the loop leaves the instance alone (submissions are
held back, wake-ups remembered) until the helper returns.
"""

from __future__ import annotations

import asyncio
import os
from asyncio import Future
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from .._native import BufferExhaustedError, IoFd, QueueFullError
from ._arguments import checked_length, checked_offset, owned_bytes
from ._eventfd import open_eventfd, read_eventfd

if TYPE_CHECKING:
    from .._native import IoCompletion

__all__ = ["RingDriver"]

WRITE, APPEND, SYNC, READ, BLOCKING = 0, 1, 2, 3, 4


class _HeldBack:
    """A submission waiting for room, with its own copy of the bytes."""

    __slots__ = ("kind", "fd", "payload", "offset", "future", "buffers")

    def __init__(
        self, kind: int, fd: IoFd, payload: Any, offset: int, future: Any, buffers: int
    ) -> None:
        self.kind = kind
        self.fd = fd
        self.payload = payload
        self.offset = offset
        self.future = future
        self.buffers = buffers


class RingDriver:
    """One `UringStorageIo` driven from one event loop (see the module docstring)."""

    def __init__(self, io: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._io = io
        config = io.config
        self._buffer_size: int = config.buffer_size
        # The budget of registered buffers this driver lets its writes hold. A buffer's
        # worth of write is one SQE, so the budget also keeps the submission queue from
        # filling: with a full queue, flush() sleeps until the kernel takes entries (SQPOLL
        # mode: until its thread runs), which on the loop is a stall.
        self._buffer_count: int = max(1, min(config.buffer_count, config.ring_entries // 2))
        self._pool_bytes: int = config.buffer_size * config.buffer_count
        self._buffers_held = 0
        # token -> (future, kind, buffers it holds)
        self._waiting: dict[int, tuple[asyncio.Future[Any], int, int]] = {}
        self._held_back: deque[_HeldBack] = deque()
        self._flush_scheduled = False
        self._helpers = 0  # helper threads inside a blocking call on the io
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._eventfd = open_eventfd()
        try:
            io.register_eventfd(self._eventfd)
        except BaseException:
            os.close(self._eventfd)
            raise
        loop.add_reader(self._eventfd, self._wake)

    # -- submissions ------------------------------------------------------------------

    def _buffers_for(self, data: object) -> int:
        """Registered buffers a write of `data` may take (0: none, it travels from its own
        copy, or `data` is not bytes-like and the submission will say so)."""
        if type(data) is bytes:
            size = len(data)
        else:
            try:
                size = memoryview(data).nbytes  # type: ignore[arg-type]
            except TypeError:
                return 0
        if size > self._pool_bytes:
            return 0
        return max(1, -(-size // self._buffer_size))

    def _must_hold_back(self, buffers: int) -> bool:
        if self._held_back or self._helpers:
            return True
        held = self._buffers_held
        return held > 0 and held + buffers > self._buffer_count

    # write and append spell out the same steps (`_track` inlined): they are the hot path,
    # and a Python call costs about as much as the rest of the bookkeeping.

    def write(self, fd: IoFd, data: Any, offset: int) -> asyncio.Future[int]:
        if type(data) is bytes and len(data) <= self._buffer_size:
            buffers = 1
        else:
            buffers = self._buffers_for(data)
        held = self._buffers_held
        if self._held_back or self._helpers or (held and held + buffers > self._buffer_count):
            return self._hold_back(WRITE, fd, owned_bytes(data), checked_offset(offset), buffers)
        try:
            token = self._io.submit_write(fd, data, offset)
        except (QueueFullError, BufferExhaustedError):
            return self._hold_back(WRITE, fd, owned_bytes(data), checked_offset(offset), buffers)
        future: Future[Any] = Future(loop=self.loop)
        self._waiting[token] = (future, WRITE, buffers)
        self._buffers_held = held + buffers
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def append(self, fd: IoFd, data: Any) -> asyncio.Future[int]:
        if type(data) is bytes and len(data) <= self._buffer_size:
            buffers = 1
        else:
            buffers = self._buffers_for(data)
        held = self._buffers_held
        if self._held_back or self._helpers or (held and held + buffers > self._buffer_count):
            return self._hold_back(APPEND, fd, owned_bytes(data), 0, buffers)
        try:
            token = self._io.submit_append(fd, data)
        except (QueueFullError, BufferExhaustedError):
            return self._hold_back(APPEND, fd, owned_bytes(data), 0, buffers)
        future: Future[Any] = Future(loop=self.loop)
        self._waiting[token] = (future, APPEND, buffers)
        self._buffers_held = held + buffers
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def datasync(self, fd: IoFd) -> asyncio.Future[None]:
        if self._must_hold_back(0):
            return self._hold_back(SYNC, fd, None, 0, 0)
        try:
            token = self._io.submit_datasync(fd)
        except QueueFullError:
            return self._hold_back(SYNC, fd, None, 0, 0)
        return self._track(token, SYNC, 0)

    def read(self, fd: IoFd, length: int, offset: int) -> asyncio.Future[bytes]:
        if self._must_hold_back(0):
            return self._hold_back(READ, fd, checked_length(length), checked_offset(offset), 0)
        try:
            token = self._io.submit_read(fd, length, offset)
        except QueueFullError:
            return self._hold_back(READ, fd, checked_length(length), checked_offset(offset), 0)
        return self._track(token, READ, 0)

    def _submit(self, op: _HeldBack) -> int:
        io = self._io
        if op.kind == WRITE:
            return io.submit_write(op.fd, op.payload, op.offset)  # type: ignore[no-any-return]
        if op.kind == APPEND:
            return io.submit_append(op.fd, op.payload)  # type: ignore[no-any-return]
        if op.kind == SYNC:
            return io.submit_datasync(op.fd)  # type: ignore[no-any-return]
        return io.submit_read(op.fd, op.payload, op.offset)  # type: ignore[no-any-return]

    def _track(self, token: int, kind: int, buffers: int) -> asyncio.Future[Any]:
        future: Future[Any] = Future(loop=self.loop)
        self._waiting[token] = (future, kind, buffers)
        self._buffers_held += buffers
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def _hold_back(
        self, kind: int, fd: IoFd, payload: Any, offset: int, buffers: int
    ) -> asyncio.Future[Any]:
        future: Future[Any] = Future(loop=self.loop)
        self._held_back.append(_HeldBack(kind, fd, payload, offset, future, buffers))
        if not self._helpers and len(self._held_back) == 1:
            # Nothing may be in flight to wake us up (a full queue of foreign work, say).
            self.loop.call_soon(self._release_held_back)
        return future

    def _release_held_back(self) -> None:
        """Submit held-back operations, in order, while there is room."""
        held_back = self._held_back
        while held_back and not self._helpers:
            op = held_back[0]
            if op.kind == BLOCKING:
                held_back.popleft()
                self._start_helper(op)
                return
            held = self._buffers_held
            if held > 0 and held + op.buffers > self._buffer_count:
                return
            try:
                token = self._submit(op)
            except (QueueFullError, BufferExhaustedError) as exc:
                if self._waiting:
                    return  # completions will make room; retried after them
                held_back.popleft()
                _fail(op.future, exc)
                continue
            except Exception as exc:  # an argument error only the io could see (a bad fd)
                held_back.popleft()
                _fail(op.future, exc)
                continue
            held_back.popleft()
            self._waiting[token] = (op.future, op.kind, op.buffers)
            self._buffers_held += op.buffers
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)
        self._notify_if_idle()

    def _flush(self) -> None:
        """Once per tick with submissions: hand them to the kernel. Through a poll, not
        flush(): some operations complete without the kernel (a read of 0 bytes), so no
        completion event will ever announce them; the poll hands them back now."""
        self._flush_scheduled = False
        if self._helpers:
            return  # the helper's call hands the work over
        self._drain()

    # -- completions ------------------------------------------------------------------

    def _wake(self) -> None:
        read_eventfd(self._eventfd)
        if not self._helpers:
            self._drain()
        # With a helper inside the io, its return drains (see `_helper_done`).

    def _drain(self) -> None:
        poll = self._io.poll_completions
        try:
            while True:
                done = poll()
                if not done:
                    break
                self._deliver(done)
        except OSError as exc:
            self._report(exc, "poll_completions() failed; retrying")
            self.loop.call_later(0.001, self._drain)
        if self._held_back:
            self._release_held_back()
        else:
            self._notify_if_idle()

    def _deliver(self, completions: list[IoCompletion]) -> None:
        waiting = self._waiting
        for completion in completions:
            entry = waiting.pop(completion.token, None)
            if entry is None:
                continue  # not ours: someone else submits on this io too
            future, kind, buffers = entry
            self._buffers_held -= buffers
            if future.done():
                continue  # its waiter was cancelled; the I/O is done all the same
            result = completion.result
            if result < 0:
                future.set_exception(completion.error)  # type: ignore[arg-type]
            elif kind <= APPEND:
                future.set_result(result)
            elif kind == SYNC:
                future.set_result(None)
            else:
                future.set_result(completion.data)  # type: ignore[attr-defined]

    # -- blocking calls, on a helper thread ---------------------------------------------

    def blocking(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` (a call on the io that may sleep in the kernel) on a helper thread, after
        every operation called before it has been submitted; operations called after it
        are held back until it returns. Cancelling the waiter does not stop it."""
        return self._hold_back(BLOCKING, None, fn, 0, 0)  # type: ignore[arg-type]

    def _start_helper(self, op: _HeldBack) -> None:
        self._helpers += 1
        call = self.loop.run_in_executor(None, op.payload)
        call.add_done_callback(lambda done: self._helper_done(done, op.future))

    def _helper_done(self, call: asyncio.Future[Any], future: asyncio.Future[Any]) -> None:
        self._helpers -= 1
        if not future.done():
            if call.exception() is not None:
                future.set_exception(call.exception())  # type: ignore[arg-type]
            else:
                future.set_result(call.result())
        if not self._helpers:
            self._drain()  # what the helper reaped, and wake-ups that came meanwhile

    def outstanding(self) -> int:
        return len(self._waiting) + len(self._held_back) + self._helpers

    def idle(self) -> asyncio.Future[None]:
        """A future resolved once nothing this driver submitted is outstanding."""
        future = self.loop.create_future()
        self._idle_waiters.append(future)
        self._notify_if_idle()
        return future

    def _notify_if_idle(self) -> None:
        if self._idle_waiters and not self.outstanding():
            waiters, self._idle_waiters = self._idle_waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def detach(self) -> None:
        """Stop watching completions (nothing may be outstanding)."""
        self.loop.remove_reader(self._eventfd)
        try:
            if not self._io.closed:  # closed under us: the ring and its eventfd are gone
                self._io.unregister_eventfd()
        finally:
            os.close(self._eventfd)

    def _report(self, exc: BaseException, message: str) -> None:
        self.loop.call_exception_handler(
            {"message": f"storage_io.aio: {message}", "exception": exc}
        )


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
