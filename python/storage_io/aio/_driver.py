"""`LoopDriver`: one `StorageIo` driven from one event loop, for every async user of it.

The io (one with ``supports_nowait``: io_uring, or the sync backend whose worker thread does
the I/O) takes each operation at the call with a ``submit_*_nowait`` call: it copies the
bytes, checks the arguments and queues what has no room yet, in call order, never waiting.
From then on the operation is the io's, whatever becomes of the loop: a loop that ends
first leaves nothing half-submitted here, and the io's ``close()`` makes every queued write.

The io signals an eventfd for every completion; the loop watches it (``add_reader``). Each
wake-up reads the eventfd first and then takes completions until there are none, so a
completion posted after the read signals again and none is missed. The eventfd is one per
io, shared by every `AsyncStorageIo` on it (a ring takes only one); each user's futures are
found by token, and ``take_nowait_completions`` hands back the ``*_nowait`` operations' only,
so a thread that waits for its own tokens on the same io (``wait_for``), or a log writing
through it, loses nothing to the loop. The last user to let go closes the eventfd.

A STANDARD ring starts I/O only when asked, so one drain per loop tick hands the tick's
submissions over together: appends made in one tick are combined into few kernel writes.

Each step of delivering a completion is safe to repeat: an exception raised in the middle
(a ``KeyboardInterrupt`` from a signal handler) keeps the completion and the rest for the
next drain, scheduled before the exception goes on.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from asyncio import Future
from typing import TYPE_CHECKING, Any, ClassVar

from .._native import ClosedError
from ._eventfd import open_eventfd, read_eventfd

if TYPE_CHECKING:
    from .._native import IoCompletion

__all__ = ["LoopDriver", "Account", "running_loop", "WRITE", "SYNC", "READ"]

WRITE, SYNC, READ = range(3)


def running_loop() -> asyncio.AbstractEventLoop:
    """The running asyncio loop; outside one, a `RuntimeError` saying what is needed (and,
    under trio, that trio is not supported)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    under_trio = False
    if trio is not None:
        try:
            trio.lowlevel.current_task()
            under_trio = True
        except RuntimeError:
            pass
    if under_trio:
        raise RuntimeError(
            "storage_io.aio runs on asyncio event loops (asyncio, uvloop, or anyio on its "
            "asyncio backend), not on trio: run this code under asyncio, or call the "
            "StorageIo itself from trio.to_thread.run_sync"
        )
    raise RuntimeError(
        "storage_io.aio needs a running asyncio event loop (asyncio, uvloop, or anyio on its "
        "asyncio backend); none is running in this thread"
    )


class Account:
    """One async user's operations in flight (their tokens), so that it can wait for its
    own and nobody else's."""

    __slots__ = ("tokens", "idle_waiters")

    def __init__(self) -> None:
        self.tokens: set[int] = set()
        self.idle_waiters: list[Future[None]] = []

    def finished(self, token: int) -> None:
        self.tokens.discard(token)
        if not self.tokens:
            self.now_idle()

    def now_idle(self) -> None:
        if self.idle_waiters:
            waiters, self.idle_waiters = self.idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def idle(self, loop: asyncio.AbstractEventLoop) -> Future[None]:
        """Resolved once none of this user's operations is in flight."""
        future: Future[None] = loop.create_future()
        if self.tokens:
            self.idle_waiters.append(future)
        else:
            future.set_result(None)
        return future


class LoopDriver:
    """Drives one io with ``supports_nowait`` from one loop (see the module docstring).
    Made and shared through `attach`; every user calls `detach` once."""

    # Weak: a driver lives while a user or its loop's reader holds it, never for the registry.
    _by_io: ClassVar[weakref.WeakValueDictionary[int, LoopDriver]] = weakref.WeakValueDictionary()
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    __slots__ = (
        "io",
        "loop",
        "waiting",
        "_users",
        "_eventfd",
        "_undelivered",
        "drain_scheduled",
        "_pid",
        "__weakref__",
    )

    @classmethod
    def attach(cls, io: Any, loop: asyncio.AbstractEventLoop) -> LoopDriver:
        """The driver of `io` on `loop`, made by the first user."""
        with cls._registry_lock:
            driver = cls._by_io.get(id(io))
            if driver is not None and driver.io is io and driver._pid == os.getpid():
                if driver.loop is not loop:
                    driver._move_to(loop)
                driver._users += 1
                return driver
            driver = cls(io, loop)
            cls._by_io[id(io)] = driver
            return driver

    def __init__(self, io: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.io = io
        self.loop = loop
        # token -> (future, kind, account)
        self.waiting: dict[int, tuple[Future[Any], int, Account]] = {}
        self._users = 1
        self._undelivered: list[IoCompletion] = []
        self.drain_scheduled = False
        self._pid = os.getpid()
        self._eventfd = open_eventfd()
        try:
            io.register_eventfd(self._eventfd)
            loop.add_reader(self._eventfd, self._wake)
        except BaseException:
            self._let_go_of_eventfd()
            raise

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        """Go on in `loop`: allowed once the loop of the io's other users has stopped with
        nothing of theirs in flight (one loop after another, as successive `asyncio.run`s
        do); two loops at once cannot share the io's one eventfd."""
        if (self.loop.is_running() and not self.loop.is_closed()) or self.waiting:
            raise RuntimeError(
                "this StorageIo is driven by another event loop, which still runs or has "
                "operations in flight; give each loop a StorageIo of its own"
            )
        if not self.loop.is_closed():
            self.loop.remove_reader(self._eventfd)
        loop.add_reader(self._eventfd, self._wake)
        self.loop = loop
        self.drain_scheduled = False
        if self._undelivered:
            self.drain_scheduled = True
            loop.call_soon(self.drain)

    def detach(self) -> None:
        """One user lets go; the last one stops watching and closes the eventfd."""
        with self._registry_lock:
            self._users -= 1
            if self._users:
                return
            if self._by_io.get(id(self.io)) is self:
                del self._by_io[id(self.io)]
        try:
            if not self.loop.is_closed():
                self.loop.remove_reader(self._eventfd)
        finally:
            self._let_go_of_eventfd()

    def _let_go_of_eventfd(self) -> None:
        try:
            if not self.io.closed:  # closed: the ring, and its hold on the eventfd, are gone
                self.io.unregister_eventfd()
        except OSError:
            pass  # never registered (the registration itself failed)
        finally:
            os.close(self._eventfd)

    # -- operations -------------------------------------------------------------------

    def track(self, token: int, kind: int, account: Account) -> Future[Any]:
        """The future of the operation the io accepted under `token`."""
        future: Future[Any] = Future(loop=self.loop)
        self.waiting[token] = (future, kind, account)
        account.tokens.add(token)
        if not self.drain_scheduled:
            self.drain_scheduled = True
            self.loop.call_soon(self.drain)
        return future

    # -- completions ------------------------------------------------------------------

    def _wake(self) -> None:
        read_eventfd(self._eventfd)
        self.drain()

    def drain(self) -> None:
        """Hand the io what this tick submitted, take every completion it has, and deliver
        them; an io closed under us fails whatever still waits."""
        self.drain_scheduled = False
        take = self.io.take_nowait_completions
        try:
            if self._undelivered:
                left, self._undelivered = self._undelivered, []
                self._deliver(left)
            while True:
                done = take()
                if not done:
                    break
                self._deliver(done)
        except ClosedError as exc:
            self.fail_all(exc)
        except OSError as exc:
            # A kernel error entering the ring (ENOMEM, say): nothing was taken; retry.
            self.loop.call_exception_handler(
                {"message": "storage_io.aio: taking completions failed; retrying", "exception": exc}
            )
            self.loop.call_later(0.001, self.drain)

    def _deliver(self, done: list[IoCompletion]) -> None:
        """Resolve the futures of `done`. Every step for one completion is safe to repeat,
        so an exception raised in the middle (a KeyboardInterrupt from a signal handler)
        keeps it and the rest for the next drain, scheduled before the exception goes on."""
        waiting = self.waiting
        delivered = 0
        try:
            for completion in done:
                token = completion.token
                entry = waiting.get(token)
                if entry is not None:
                    future, kind, account = entry
                    if not future.done():  # else its waiter was cancelled; the I/O is done
                        result = completion.result
                        if result < 0:
                            future.set_exception(completion.error)  # type: ignore[arg-type]
                        elif kind == WRITE:
                            future.set_result(result)
                        elif kind == SYNC:
                            future.set_result(None)
                        else:
                            future.set_result(completion.data)
                    tokens = account.tokens
                    tokens.discard(token)
                    if not tokens and account.idle_waiters:
                        account.now_idle()
                    del waiting[token]
                delivered += 1
        except BaseException:
            self._undelivered[:0] = done[delivered:]
            if not self.drain_scheduled:
                self.drain_scheduled = True
                self.loop.call_soon(self.drain)
            raise

    def fail_all(self, cause: BaseException) -> None:
        """The io was closed under its users (or inherited across fork()): every operation
        still waiting fails with `ClosedError`, none waits forever."""
        self._undelivered = []
        waiting, self.waiting = self.waiting, {}
        for token, (future, _, account) in waiting.items():
            if not future.done():
                error = ClosedError(
                    f"the StorageIo was closed before this operation's completion was "
                    f"handed back ({cause})"
                )
                error.__cause__ = cause
                future.set_exception(error)
            account.finished(token)
