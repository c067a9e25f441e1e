"""`AsyncWal`: the durable log of `storage_io.wal` for coroutines.

``await wal.append(payload)`` frames the record at the call (its LSN is fixed then) and
returns the LSN once the record is durable. Appends of one loop tick ask for one commit
together, and while a commit is in flight the log merges every commit asked for meanwhile
into the next: one ``fdatasync`` covers every append made in between (group commit).

The loop drives the log without a thread: an eventfd registered with the log's `StorageIo`
wakes it when I/O completes, and each wake-up calls ``Wal.poll()``, which collects the
finished commit, advances `durable_lsn`, and starts the next commit; every append whose
LSN is now durable gets its answer. On io_uring the ring signals the eventfd; on the sync
backend the log writes through a `ThreadedStorageIo`, whose worker thread does the I/O and
signals the same way (the sync backend would otherwise run each ``fdatasync`` inside the
log's lock, in whatever thread submitted it, the loop's included).

Known limit: when a record does not fit the current segment, `Wal.append` makes that
segment durable before starting the next, in the calling thread: once per segment
(64 MiB by default) an append waits for one ``fdatasync`` on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import os
from asyncio import Future, get_running_loop
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._native import ClosedError
from ..selection import open_storage_io
from ..wal import Wal, WalPoisonedError
from ._eventfd import open_eventfd, read_eventfd
from ._operation import Operation
from ._threaded_io import ThreadedStorageIo

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Buffer, Self

__all__ = ["AsyncWal"]


class AsyncWal:
    """A write-ahead log for coroutines; open it with ``await AsyncWal.open(directory)``.

    Same keyword arguments and files as `Wal.open`. Bound to the loop it was opened in.
    ``await append(payload)`` returns the record's LSN once it is durable;
    `append_nowait`, `commit`, `durable_lsn`, `last_lsn` and `replay` are as on `Wal`;
    ``await wait_durable(lsn)`` and ``await sync()`` wait without blocking the loop.
    Cancelling an awaiting task stops the waiting only: the record stays appended and is
    made durable with the others.
    """

    def __init__(self) -> None:
        raise TypeError("use await AsyncWal.open(directory, ...) to open or create a log")

    @classmethod
    async def open(cls, directory: str | os.PathLike[str], **kwargs: Any) -> AsyncWal:
        """Open (recovering it) or create the log in `directory`, on a helper thread: the
        recovery reads every segment."""
        loop = get_running_loop()
        io = kwargs.pop("io", None)
        owns_io = io is None
        if io is None:
            io = await loop.run_in_executor(None, open_storage_io)
        adapter = None
        if not hasattr(io, "register_eventfd"):
            io = adapter = ThreadedStorageIo(io, owns_inner=owns_io)
        try:
            wal = await loop.run_in_executor(
                None, functools.partial(Wal.open, directory, io=io, **kwargs)
            )
        except BaseException:
            if adapter is not None:
                adapter.close()
            elif owns_io:
                io.close()
            raise
        self = cls.__new__(cls)
        self._setup(loop, wal, io, owns_io)
        return self

    def _setup(self, loop: asyncio.AbstractEventLoop, wal: Wal, io: Any, owns_io: bool) -> None:
        self._loop = loop
        self._wal = wal
        self._io = io
        self._owns_io = owns_io
        self._waiters: list[tuple[int, int, Future[int]]] = []  # heap by LSN
        self._order = itertools.count()
        self._commit_scheduled = False
        self._closed = False
        self._poison: BaseException | None = None
        self.commits_observed = 0  # durable_lsn advances seen: one per fdatasync
        self._durable_seen = wal.durable_lsn
        self._eventfd = open_eventfd()
        try:
            io.register_eventfd(self._eventfd)
        except BaseException:
            os.close(self._eventfd)
            raise
        loop.add_reader(self._eventfd, self._wake)

    # -- state ------------------------------------------------------------------------

    @property
    def wal(self) -> Wal:
        """The `Wal` underneath (do not wait on it from the loop)."""
        return self._wal

    @property
    def durable_lsn(self) -> int:
        """Every record up to this LSN is durable: what the loop last collected from the
        log (`Wal.poll`), so reading it costs nothing and never overstates. (Reading
        `Wal.durable_lsn` would collect a finished commit on the spot: a system call per
        read, measured as half the time of aio_wal_commit.)"""
        return self._durable_seen

    @property
    def last_lsn(self) -> int:
        return self._wal.last_lsn

    @property
    def first_lsn(self) -> int:
        return self._wal.first_lsn

    @property
    def backend(self) -> str:
        return self._wal.backend

    @property
    def recovery(self) -> Any:
        return self._wal.recovery

    def replay(self, from_lsn: int | None = None) -> Iterator[tuple[int, bytes]]:
        """As `Wal.replay`: a plain iterator over the durable records."""
        return self._wal.replay(from_lsn)

    # -- appending and committing -------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError("this AsyncWal is closed")
        if get_running_loop() is not self._loop:
            raise RuntimeError("this AsyncWal belongs to another event loop")

    def append_nowait(self, payload: Buffer) -> int:
        """Append one record and return its LSN at once; durable after a later commit."""
        self._check_usable()
        return self._wal.append(payload)

    def append(self, payload: Buffer) -> Operation[int]:
        """Append one record (framed, and its LSN fixed, at the call); awaited, its LSN
        once it is durable."""
        self._check_usable()
        lsn = self._wal.append(payload)
        return Operation(self._waiter(lsn))

    def commit(self) -> int:
        """Ask for everything appended so far to be made durable; return the LSN this
        covers. Does not wait."""
        self._check_usable()
        covered = self._wal.commit()
        self._send_released()
        return covered

    def wait_durable(self, lsn: int) -> Operation[int]:
        """Awaited: returns `lsn` once `durable_lsn >= lsn`, asking for a covering commit
        itself. `ValueError` for an LSN above `last_lsn`; `WalPoisonedError` if it can no
        longer become durable."""
        self._check_usable()
        if not isinstance(lsn, int) or lsn < 0:
            raise ValueError(f"lsn must be an int >= 0, got {lsn!r}")
        if lsn > self._wal.last_lsn:
            raise ValueError(f"lsn {lsn} has not been handed out: the last LSN is {self.last_lsn}")
        return Operation(self._waiter(lsn))

    def sync(self) -> Operation[int]:
        """`commit()`, then `wait_durable()` for it; awaited, the LSN now durable."""
        return self.wait_durable(self.commit())

    def _waiter(self, lsn: int) -> Future[int]:
        future: Future[int] = Future(loop=self._loop)
        if lsn <= self.durable_lsn:
            future.set_result(lsn)
            return future
        if self._poison is not None:
            future.set_exception(self._poisoned())
            return future
        heapq.heappush(self._waiters, (lsn, next(self._order), future))
        if not self._commit_scheduled:
            self._commit_scheduled = True
            self._loop.call_soon(self._commit_for_waiters)
        return future

    def _commit_for_waiters(self) -> None:
        """One commit for every append of this loop tick (the Wal merges it into the next
        commit while one is in flight)."""
        self._commit_scheduled = False
        if self._closed or self._poison is not None:
            return
        try:
            self._wal.commit()
            self._send_released()
        except WalPoisonedError as exc:
            self._fail_waiters(exc)

    # -- completions --------------------------------------------------------------------

    def _wake(self) -> None:
        read_eventfd(self._eventfd)
        before = self._durable_seen
        try:
            durable = self._wal.poll()
            self._send_released()
        except WalPoisonedError as exc:
            self._release(self._wal.durable_lsn)
            self._fail_waiters(exc)
            return
        except ClosedError:
            return
        if durable > before:
            self.commits_observed += 1
            self._durable_seen = durable
        self._release(durable)

    def _send_released(self) -> None:
        """Hand to the kernel whatever this tick queued (a commit's write and datasync)."""
        self._io.flush()

    def _release(self, durable: int) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= durable:
            lsn, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(lsn)

    def _poisoned(self) -> WalPoisonedError:
        error = WalPoisonedError("the log is poisoned: see __cause__ for the first failure")
        error.__cause__ = self._poison
        return error

    def _fail_waiters(self, exc: WalPoisonedError) -> None:
        self._poison = exc.__cause__ or exc
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(exc)

    # -- lifetime -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Make everything appended durable, then release the log (and the `StorageIo` if
        it opened it). A second call does nothing."""
        if self._closed:
            return
        try:
            if self._poison is None and self._wal.last_lsn > self._wal.durable_lsn:
                await asyncio.shield(self._waiter(self._wal.commit()))
        except WalPoisonedError:
            pass  # Wal.close raises it below
        finally:
            self._closed = True
            self._loop.remove_reader(self._eventfd)
            if not self._io.closed:
                self._io.unregister_eventfd()
            os.close(self._eventfd)
        loop = self._loop
        try:
            await loop.run_in_executor(None, self._wal.close)
        finally:
            if isinstance(self._io, ThreadedStorageIo):
                await loop.run_in_executor(None, self._io.close)
            elif self._owns_io:
                await loop.run_in_executor(None, self._io.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
