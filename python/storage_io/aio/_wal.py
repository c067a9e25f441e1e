"""`AsyncWal`: the durable log of `storage_io.wal` for coroutines.

``await wal.append(payload)`` numbers the record at the call (its LSN is fixed then) and
returns the LSN once the record is durable; appends from many tasks share ``fdatasync``s
(group commit).

Everything the log does that may touch the disk happens on one worker thread of the log
(`LogWorker`), never on the loop: framing the records into the segment (and the 1 MiB
hand-offs of framed bytes to the io), rotating to the next segment (its ``fdatasync``,
the new file, the directory ``fsync``), committing and waiting for commits, trimming and
closing. The loop's part of an append is to copy the payload and put it on the worker's
queue, under a lock and in call order: the record is the log's from the call on, whatever
becomes of the loop afterwards. The worker takes the whole queue at once (one
`Wal.append_many`), asks for one commit for all of it when anyone waits, waits for it
without the GIL, and tells the loop how far the log is durable with one
``call_soon_threadsafe``: a thread hop per ``fdatasync``, not per record. Appends made
while a commit is in flight go together into the next one.

The worker numbers records exactly as the loop predicted (LSNs are consecutive, and only
this object appends to its `Wal`); it checks that it did.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import sys
import threading
import warnings
import weakref
from asyncio import Future, get_running_loop
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._native import ClosedError
from ..wal import DEFAULT_SEGMENT_BYTES, Wal, WalError, WalPoisonedError
from ._arguments import owned_bytes
from ._driver import running_loop
from ._offload import run_off_loop
from ._operation import Operation

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

    from typing_extensions import Buffer

    from ..interface import StorageIo

__all__ = ["AsyncWal", "LogWorker"]

_MAX_PAYLOAD = 2**32 - 1
_REPLAY_CHUNK = 1024  # records fetched per hop by replay_async
_IDLE_S = 0.5  # an idle worker thread ends after this long; the next request starts one


class LogWorker:
    """The thread that does the log's work for one `AsyncWal` (see the module docstring).
    Holds no reference to the `AsyncWal`, so that an unclosed one can be collected (its
    finalizer then asks this worker to close the log)."""

    def __init__(
        self,
        wal: Wal,
        loop: asyncio.AbstractEventLoop,
        report: weakref.WeakMethod[Callable[[int, BaseException | None], None]],
    ) -> None:
        self.wal = wal
        self._loop = loop
        # Called on the loop with (durable LSN, poison or None); weak, so that the
        # AsyncWal can be collected while this worker finishes its work.
        self._report = report
        self._changed = threading.Condition(threading.Lock())
        self._payloads: list[bytes] = []
        self._calls: list[tuple[Callable[[], Any], Future[Any] | None]] = []
        self._wanted = 0  # the highest LSN someone waits to see durable
        self._numbered = wal.last_lsn  # the LSN the loop gave the last record queued
        self._thread: threading.Thread | None = None
        self._sleeping = False  # the thread waits for work (else it will look again anyway)
        self.poison: BaseException | None = None
        self._durable_at_poison = 0

    # -- from the loop ----------------------------------------------------------------

    def append(self, payloads: list[bytes], durable: bool, last: int) -> None:
        with self._changed:
            self._payloads.extend(payloads)
            self._numbered = last
            if durable and last > self._wanted:
                self._wanted = last
            self._wake()

    def append_one(self, payload: bytes, lsn: int) -> None:
        """`append` of one record that someone waits to see durable."""
        with self._changed:
            self._payloads.append(payload)
            self._numbered = self._wanted = lsn
            if self._thread is None or self._sleeping:
                self._wake()

    def want_durable(self, lsn: int) -> None:
        with self._changed:
            if lsn > self._wanted:
                self._wanted = lsn
                self._wake()

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the worker, after everything queued before it."""
        future: Future[Any] = self._loop.create_future()
        with self._changed:
            self._calls.append((fn, future))
            self._wake()
        return future

    def close(self) -> Future[Any]:
        """Make everything appended durable, then close the log (idempotent)."""
        return self.call(self.wal.close)

    def close_abandoned(self) -> None:
        """Close the log after what is queued, with nobody waiting for it (its `AsyncWal`
        was collected unclosed). At interpreter exit no thread can start: close here."""
        with self._changed:
            self._calls.append((lambda: _close_abandoned(self.wal), None))
            if self._thread is not None or not sys.is_finalizing():
                self._wake()
                return
        self._work()

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="storage_io-wal")
            self._thread.start()
        else:
            self._changed.notify()

    # -- on the worker ----------------------------------------------------------------

    def _work(self) -> None:
        wal = self.wal
        while True:
            with self._changed:
                if not self._has_work():
                    self._sleeping = True
                    self._changed.wait(_IDLE_S)
                    self._sleeping = False
                if not self._has_work():
                    self._thread = None
                    return
                payloads, self._payloads = self._payloads, []
                calls, self._calls = self._calls, []
                wanted, numbered = self._wanted, self._numbered
            before = self.durable()
            try:
                if payloads and self.poison is None and wal.append_many(payloads) != numbered:
                    raise WalError(
                        f"the log numbered its last record {wal.last_lsn}, not {numbered} as "
                        "this AsyncWal told its caller: something else appended to the Wal "
                        "underneath it"
                    )
                if wanted > before and self.poison is None:
                    wal.commit()
                    wal.wait_durable(min(wanted, wal.last_lsn))
            except (WalError, ClosedError) as exc:
                # Poisoned, or closed under it (its io closed): nothing more becomes
                # durable, whatever the log's counter says about the commit that failed.
                self.poison = exc
                self._durable_at_poison = before
            self._tell_loop(_report_to, self._report, self.durable(), self.poison)
            for fn, future in calls:
                try:
                    result: Any = fn()
                except BaseException as exc:  # handed to the awaiting task
                    if future is not None:
                        self._tell_loop(_settle, future, False, exc)
                else:
                    if future is not None:
                        self._tell_loop(_settle, future, True, result)

    def _has_work(self) -> bool:
        if self._payloads or self._calls:
            return True
        return self.poison is None and self._wanted > self.durable()

    def durable(self) -> int:
        durable = self.wal.durable_lsn
        return durable if self.poison is None else min(durable, self._durable_at_poison)

    def _tell_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more


def _report_to(
    report: weakref.WeakMethod[Callable[[int, BaseException | None], None]],
    durable: int,
    poison: BaseException | None,
) -> None:
    """On the loop: tell the AsyncWal, if it still exists (a callback waiting in the loop's
    queue must not keep it alive)."""
    advance = report()
    if advance is not None:
        advance(durable, poison)


def _settle(future: Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class AsyncWal:
    """A write-ahead log for coroutines; open it with ``await AsyncWal.open(directory)``.

    Same keyword arguments and files as `Wal.open`; bound to the loop it was opened in.
    ``await append(payload)`` returns the record's LSN once it is durable; `append_nowait`,
    `commit`, `durable_lsn`, `last_lsn` and `replay` are as on `Wal`; ``await
    wait_durable(lsn)`` (True) and ``await sync()`` wait without blocking the loop.
    Cancelling an awaiting task stops the waiting only: the record stays appended and
    becomes durable with the others.
    """

    def __init__(self) -> None:
        raise TypeError("use await AsyncWal.open(directory, ...) to open or create a log")

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        io: StorageIo | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        create: bool = True,
    ) -> AsyncWal:
        """Open (recovering it) or create the log in `directory`, as `Wal.open`, on a thread
        of its own: the recovery reads every segment. If it fails, or the caller stops
        waiting, nothing is left open, locked or registered."""
        loop = running_loop()

        def opened() -> Wal:
            return Wal.open(directory, io=io, segment_bytes=segment_bytes, create=create)

        wal = await run_off_loop(loop, opened, "storage_io-wal-open", _close_abandoned)
        self = cls.__new__(cls)
        self._setup(loop, wal)
        return self

    def _setup(self, loop: asyncio.AbstractEventLoop, wal: Wal) -> None:
        self._loop = loop
        self._wal = wal
        self._worker = LogWorker(wal, loop, weakref.WeakMethod(self._advance))
        self._next_lsn = wal.last_lsn + 1
        self._durable_seen = wal.durable_lsn
        self._waiters: list[tuple[int, int, Future[int]]] = []  # heap by LSN
        self._order = itertools.count()
        self._closed = False
        self._closer: asyncio.Task[None] | None = None
        self.commits_observed = 0  # durable_lsn advances seen: one per fdatasync at most

    # -- state ------------------------------------------------------------------------

    @property
    def wal(self) -> Wal:
        """The `Wal` underneath: read from it, never append to it (this object numbers
        records itself) and never wait on it from the loop."""
        return self._wal

    @property
    def durable_lsn(self) -> int:
        """Every record up to this LSN is durable (as the loop last heard it)."""
        return self._durable_seen

    @property
    def last_lsn(self) -> int:
        return self._next_lsn - 1

    @property
    def first_lsn(self) -> int:
        return self._wal.first_lsn

    @property
    def backend(self) -> str:
        return self._wal.backend

    @property
    def recovery(self) -> Any:
        return self._wal.recovery

    @property
    def closed(self) -> bool:
        return self._closed

    def replay(self, from_lsn: int | None = None) -> Iterator[tuple[int, bytes]]:
        """As `Wal.replay`: a plain iterator over the durable records (it reads files in
        the calling thread; `replay_async` does not)."""
        return self._wal.replay(from_lsn)

    async def replay_async(self, from_lsn: int | None = None) -> AsyncIterator[tuple[int, bytes]]:
        """``async for lsn, payload in wal.replay_async():`` the durable records, as
        `replay`, read off the loop a batch at a time."""
        self._check_usable()
        records = await self._worker.call(lambda: self._wal.replay(from_lsn))
        while True:
            batch = await run_off_loop(
                self._loop,
                lambda: list(itertools.islice(records, _REPLAY_CHUNK)),
                "storage_io-replay",
            )
            if not batch:
                return
            for record in batch:
                yield record

    # -- appending and committing -------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError("this AsyncWal is closed")
        if running_loop() is not self._loop:
            raise RuntimeError("this AsyncWal belongs to another event loop")
        poison = self._worker.poison
        if poison is not None:
            raise _failure(poison)

    def _take(self, payloads: Iterable[Buffer], durable: bool) -> int:
        copies = [owned_bytes(p) for p in payloads]
        for copy in copies:
            if len(copy) > _MAX_PAYLOAD:
                raise ValueError(
                    f"a payload of {len(copy)} bytes is over the 4 GiB - 1 a record holds"
                )
        if not copies:
            return self.last_lsn
        last = self._next_lsn + len(copies) - 1
        self._next_lsn = last + 1
        self._worker.append(copies, durable, last)
        return last

    def append_nowait(self, payload: Buffer) -> int:
        """Append one record and return its LSN at once; durable after a later commit."""
        self._check_usable()
        return self._take((payload,), False)

    def append(self, payload: Buffer) -> Operation[int]:
        """Append one record (its LSN fixed at the call); awaited, its LSN once durable."""
        # The hot path: `_check_usable`, `_take` and `_waiter` spelled out for one record.
        worker = self._worker
        if self._closed or get_running_loop() is not self._loop or worker.poison is not None:
            self._check_usable()
        copy = payload if type(payload) is bytes else owned_bytes(payload)
        if len(copy) > _MAX_PAYLOAD:
            raise ValueError(f"a payload of {len(copy)} bytes is over the 4 GiB - 1 a record holds")
        lsn = self._next_lsn
        self._next_lsn = lsn + 1
        worker.append_one(copy, lsn)
        future: Future[int] = self._loop.create_future()
        heapq.heappush(self._waiters, (lsn, next(self._order), future))
        return Operation(future)

    def append_many(self, payloads: Iterable[Buffer]) -> Operation[int]:
        """Append the records (consecutive LSNs); awaited, the last LSN once they are all
        durable (`last_lsn` for none). A payload that is not bytes-like raises at the call
        and appends nothing."""
        self._check_usable()
        return Operation(self._waiter(self._take(payloads, True)))

    def commit(self) -> int:
        """Ask for everything appended so far to be made durable; return the LSN this
        covers. Does not wait."""
        self._check_usable()
        covered = self.last_lsn
        self._worker.want_durable(covered)
        return covered

    def wait_durable(self, lsn: int) -> Operation[bool]:
        """Awaited: True once `durable_lsn >= lsn`, asking for a covering commit itself.
        `ValueError` for an LSN above `last_lsn`; `WalPoisonedError` if it can no longer
        become durable."""
        self._check_usable()
        if not isinstance(lsn, int) or lsn < 0:
            raise ValueError(f"lsn must be an int >= 0, got {lsn!r}")
        if lsn > self.last_lsn:
            raise ValueError(f"lsn {lsn} has not been handed out: the last LSN is {self.last_lsn}")
        self._worker.want_durable(lsn)
        future: Future[bool] = self._loop.create_future()
        self._waiter(lsn).add_done_callback(lambda done: _as_true(done, future))
        return Operation(future)

    def sync(self) -> Operation[int]:
        """`commit()`, then wait until it is durable; awaited, the LSN now durable."""
        lsn = self.commit()
        return Operation(self._waiter(lsn))

    async def truncate_before(self, lsn: int) -> None:
        """As `Wal.truncate_before` (deleting whole segments below `lsn`), on the worker."""
        self._check_usable()
        await self._worker.call(lambda: self._wal.truncate_before(lsn))

    def _waiter(self, lsn: int) -> Future[int]:
        future: Future[int] = self._loop.create_future()
        if lsn <= self._durable_seen:
            future.set_result(lsn)
        else:
            heapq.heappush(self._waiters, (lsn, next(self._order), future))
        return future

    def _advance(self, durable: int, poison: BaseException | None) -> None:
        """On the loop: the worker says how far the log is durable (and whether it broke)."""
        if durable > self._durable_seen:
            self._durable_seen = durable
            self.commits_observed += 1
        waiters = self._waiters
        while waiters and waiters[0][0] <= durable:
            lsn, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(lsn)
        if poison is not None and waiters:
            self._waiters = []
            for _, _, future in waiters:
                if not future.done():
                    future.set_exception(_failure(poison))

    # -- lifetime -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Make everything appended durable, then close the log (and the `StorageIo` if it
        opened it). Cancelled or timed out, the closing goes on; call it again to wait for
        it. Raises `WalPoisonedError` as `Wal.close` does."""
        closer = self._closer
        if closer is not None and closer.done() and not closer.cancelled():
            return  # closed already (its outcome went to the call that waited for it)
        if closer is None or closer.done():
            self._closed = True
            closer = self._closer = self._loop.create_task(self._close_steps())
        await asyncio.shield(closer)

    async def _close_steps(self) -> None:
        await self._worker.close()
        durable = self._worker.durable()
        self._advance(durable, ClosedError("this AsyncWal is closed"))
        poison = self._worker.poison
        if poison is not None and self.last_lsn > durable:
            # As Wal.close: the records after durable_lsn are not on disk.
            raise _failure(poison)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.aclose()
            return
        try:
            await self.aclose()
        except Exception:
            pass  # the body's exception, already on its way, says more

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        warnings.warn(
            f"unclosed {self!r}: await aclose() (or use async with); its records are made "
            "durable and the log closed on its worker thread",
            ResourceWarning,
            source=self,
            stacklevel=2,
        )
        self._worker.close_abandoned()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncWal {state} last_lsn={self.last_lsn} durable_lsn={self._durable_seen}>"


def _failure(poison: BaseException) -> BaseException:
    if isinstance(poison, WalError):
        error: BaseException = type(poison)(str(poison))
    else:
        error = ClosedError(f"the log was closed before this record was durable ({poison})")
    error.__cause__ = poison
    return error


def _as_true(done: Future[int], future: Future[bool]) -> None:
    if future.done():
        return
    if done.cancelled():
        future.cancel()
    elif done.exception() is not None:
        future.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        future.set_result(True)


def _close_abandoned(wal: Wal) -> None:
    try:
        wal.close()
    except WalPoisonedError:
        pass
