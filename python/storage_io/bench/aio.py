"""The asyncio workloads (ASYNC.md, "Performance"), against what asyncio programs use today.

Registered when the bench package is imported; ``python -m storage_io bench --workload
aio_append_4k,aio_wal_commit`` runs them (not in the default run). Each run has an event
loop of its own (the default asyncio loop), made and closed untimed around the timed work.

- ``aio_append_4k`` (A1): 64 tasks, 100,000 awaited appends of 4 KiB in all, one datasync
  at the end. Rows: ``aio-uring`` / ``aio-sync`` (`storage_io.aio.AsyncStorageIo` over
  `UringStorageIo` STANDARD / `SyncStorageIo`), ``aiofile`` (aiofile's ``AIOFile``, caio
  underneath: 64 tasks writing at offsets they reserve), ``aiofiles`` (64 tasks writing
  through ``aiofiles.open``, then flush and ``os.fdatasync`` on the executor) and the
  built-in ``pwrite`` row (a plain synchronous ``os.pwrite`` loop, no tasks). aiofile and
  aiofiles are optional (``pip install 'storage_io[bench]'``); missing, they are reported as
  skipped with the reason.
- ``aio_wal_commit`` (A2): 64 tasks each awaiting 1,000 durable ``AsyncWal.append``s of
  256 B. Rows: ``asyncwal-uring`` / ``asyncwal-sync``, and ``to-thread``: 64 tasks each
  doing ``await asyncio.to_thread(pwrite + fdatasync)`` per record. The log's segments are
  4 MiB, so that a run goes through rotations. Records per fdatasync and the lag of a
  ticker task (waking every millisecond on the same loop: p99, and p99 and max less the
  time the loop's thread waited for a CPU) beside each.

The checks, after the timing: an appended file must be exactly as long as the records
written and made of exactly those records, each whole (the tasks interleave, so the order
across tasks is free: the records are compared as a multiset); a log must replay exactly
the records the tasks appended.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .. import SyncStorageIo
from ..aio import AsyncStorageIo, AsyncWal
from ..wal import Wal
from .implementations import (
    Implementation,
    ImplementationUnavailable,
    PwriteBaseline,
    Target,
    _standard_ring,
    register_implementation,
)
from .model import KIB, Workload, register_workload
from .run import PreparedRun

__all__ = ["A1", "A2", "TASKS"]

TASKS = 64  # the tasks of both workloads (ASYNC.md)
TICK_S = 0.001  # the lag ticker's period
SEGMENT_BYTES = 4 << 20  # A2's log segments: a full run goes through four rotations
READ_CHUNK = 1024 * KIB


def _shares(total: int) -> list[range]:
    """The global record indices each of the TASKS tasks writes: `total` split evenly."""
    out, start = [], 0
    for t in range(TASKS):
        n = total // TASKS + (1 if t < total % TASKS else 0)
        out.append(range(start, start + n))
        start += n
    return out


# -- the event loop of a run: made in setup, closed in teardown (untimed) ----------------


def _new_loop(run: PreparedRun) -> asyncio.AbstractEventLoop:
    run.state["loop"] = loop = asyncio.new_event_loop()
    return loop


def _run_in_loop(run: PreparedRun, work: Coroutine[Any, Any, None]) -> None:
    run.state["loop"].run_until_complete(work)


def _close_loop(run: PreparedRun, closing: Callable[[], Awaitable[None]] | None) -> None:
    loop: asyncio.AbstractEventLoop | None = run.state.pop("loop", None)
    if loop is None:
        return
    try:
        if closing is not None:
            loop.run_until_complete(closing())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _runqueue_wait_s() -> float:
    """Seconds this thread has spent runnable but not running (waiting for a CPU), from
    /proc schedstat; 0.0 where the kernel does not say."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class LagTicker:
    """A task waking every TICK_S; how late it wakes is the loop's lag. Two figures per tick:
    the plain lateness, and the lateness less the time the loop's thread waited for a CPU
    meanwhile: the loop's own doing (work on the loop, a blocking call, a wait for the GIL),
    which is what the contract bounds. On a shared machine the scheduler alone makes an idle
    loop's ticker late by milliseconds, which says nothing about this code."""

    def __init__(self) -> None:
        self.lags_s: list[float] = []
        self.own_lags_s: list[float] = []

    async def run(self) -> None:
        clock, sleep, lags, own = time.perf_counter, asyncio.sleep, self.lags_s, self.own_lags_s
        while True:
            start, waited = clock(), _runqueue_wait_s()
            await sleep(TICK_S)
            lag = clock() - start - TICK_S
            lags.append(lag)
            own.append(max(0.0, lag - (_runqueue_wait_s() - waited)))

    @staticmethod
    def p99_us(lags: list[float]) -> float:
        """Nearest-rank p99 of `lags`, in µs (0 when it never woke)."""
        if not lags:
            return 0.0
        ordered = sorted(lags)
        return max(0.0, ordered[max(0, -(-99 * len(ordered) // 100) - 1)]) * 1e6


async def _with_ticker(run: PreparedRun, work: Awaitable[Any]) -> None:
    ticker = LagTicker()
    task = asyncio.ensure_future(ticker.run())
    try:
        await work
    finally:
        task.cancel()
    run.extra_figures["loop_lag_p99_us"] = ticker.p99_us(ticker.lags_s)
    run.extra_figures["own_lag_p99_us"] = ticker.p99_us(ticker.own_lags_s)
    run.extra_figures["own_lag_max_us"] = max(ticker.own_lags_s, default=0.0) * 1e6


# -- the check of an appended file: exactly the records written, each whole ------------------


def _records_problem(
    path: str, pool: tuple[bytes, ...], want: collections.Counter[int]
) -> str | None:
    """None if `path` holds exactly the records of `pool` that `want` counts (pool index ->
    how many), in any order, each whole; else what is wrong."""
    size = len(pool[0])
    expected = sum(want.values()) * size
    actual = os.stat(path).st_size
    if actual != expected:
        return f"file is {actual} bytes, expected {expected}"
    which = {record: n for n, record in enumerate(pool)}
    got: collections.Counter[int] = collections.Counter()
    offset = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK - READ_CHUNK % size):
            for at in range(0, len(chunk), size):
                n = which.get(chunk[at : at + size])
                if n is None:
                    return f"the record at offset {offset + at} is none of the records written"
                got[n] += 1
            offset += len(chunk)
    return None if got == want else "not the records written (some missing, some twice)"


# -- aio_append_4k -----------------------------------------------------------------------


def _append_setup(run: PreparedRun) -> None:
    _new_loop(run)
    if not isinstance(run.target, PwriteBaseline):
        run.state["aio"] = AsyncStorageIo(run.target)  # type: ignore[arg-type]


def _append_aio(run: PreparedRun) -> None:
    aio: AsyncStorageIo = run.state["aio"]
    fd, pool = run.handle, run.pool
    n = len(pool)

    async def appender(indices: range) -> None:
        append = aio.append
        for i in indices:
            await append(fd, pool[i % n])  # type: ignore[arg-type]

    async def work() -> None:
        await asyncio.gather(*(appender(share) for share in _shares(run.records)))
        await aio.datasync(fd)  # type: ignore[arg-type]

    _run_in_loop(run, work())


def _append_aiofile(run: PreparedRun) -> None:
    aiofile: Any = importlib.import_module("aiofile")
    pool, size = run.pool, run.workload.record_size
    n = len(pool)

    async def work() -> None:
        async with aiofile.AIOFile(run.path, "wb") as afp:
            position = 0

            async def appender(indices: range) -> None:
                nonlocal position
                write = afp.write
                for i in indices:
                    offset = position  # reserved before the await: no two tasks share it
                    position += size
                    await write(pool[i % n], offset=offset)

            await asyncio.gather(*(appender(share) for share in _shares(run.records)))
            await afp.fdsync()

    _run_in_loop(run, work())


def _append_aiofiles(run: PreparedRun) -> None:
    aiofiles: Any = importlib.import_module("aiofiles")
    pool = run.pool
    n = len(pool)

    async def work() -> None:
        async with aiofiles.open(run.path, "wb") as afp:

            async def appender(indices: range) -> None:
                write = afp.write
                for i in indices:
                    await write(pool[i % n])

            await asyncio.gather(*(appender(share) for share in _shares(run.records)))
            await afp.flush()
            await asyncio.get_running_loop().run_in_executor(None, os.fdatasync, afp.fileno())

    _run_in_loop(run, work())


def _append_pwrite(run: PreparedRun) -> None:
    """The plain synchronous loop: what the records cost without asyncio."""
    fd, pool, size, pwrite = run.raw_fd, run.pool, run.workload.record_size, os.pwrite
    n = len(pool)
    for i in range(run.records):
        pwrite(fd, pool[i % n], i * size)
    os.fdatasync(fd)


def _append_teardown(run: PreparedRun) -> None:
    aio: AsyncStorageIo | None = run.state.pop("aio", None)
    _close_loop(run, None if aio is None else aio.aclose)


def _append_check(run: PreparedRun) -> str | None:
    n = len(run.pool)
    return _records_problem(
        run.path, run.pool, collections.Counter(i % n for i in range(run.records))
    )


A1 = register_workload(
    Workload(
        "A1",
        "aio_append_4k",
        "64 tasks, 100,000 awaited appends of 4 KiB in all, one datasync at the end",
        full_count=100_000,
        record_size=4 * KIB,
        bodies={
            "pwrite": _append_pwrite,
            "aio": _append_aio,
            "aiofile": _append_aiofile,
            "aiofiles": _append_aiofiles,
        },
        headline="records_per_s",
        shown=("records_per_s", "mib_per_s"),
        in_default_run=False,
        quick_scale=0.02,
        setup=_append_setup,
        teardown=_append_teardown,
        check=_append_check,
        note="aio_append_4k (A1, ASYNC.md): 64 tasks awaiting storage_io.aio appends, against "
        "aiofile (caio) and aiofiles doing the same and the plain os.pwrite loop (no tasks); "
        "targets >= 2x aiofile, >= 10x aiofiles, >= 1x pwrite.",
    )
)


# -- aio_wal_commit ------------------------------------------------------------------------


def _commit_setup(run: PreparedRun) -> None:
    loop = _new_loop(run)
    if isinstance(run.target, PwriteBaseline):
        return
    run.state["log_dir"] = log_dir = tempfile.mkdtemp(prefix="asyncwal-", dir=run.directory)
    # Small segments, so that the run goes through rotations (each one an fdatasync, a new
    # file and a directory fsync), which must not hold the loop up either.
    opening = AsyncWal.open(log_dir, io=run.target, segment_bytes=SEGMENT_BYTES)  # type: ignore[arg-type]
    run.state["wal"] = loop.run_until_complete(opening)


def _commit_payload(run: PreparedRun, task: int) -> bytes:
    return run.pool[task % len(run.pool)]


def _commit_asyncwal(run: PreparedRun) -> None:
    wal: AsyncWal = run.state["wal"]
    commits_before = wal.commits_observed

    async def durable_appender(payload: bytes) -> None:
        append = wal.append
        for _ in range(run.count):
            lsn = await append(payload)
            if wal.durable_lsn < lsn:
                raise AssertionError(f"append returned {lsn} before it was durable")

    async def work() -> None:
        appenders = (durable_appender(_commit_payload(run, t)) for t in range(TASKS))
        await _with_ticker(run, asyncio.gather(*appenders))

    _run_in_loop(run, work())
    commits = wal.commits_observed - commits_before
    run.extra_figures["records_per_fdatasync"] = run.records / max(1, commits)


def _pwrite_and_sync(fd: int, data: bytes, offset: int) -> None:
    os.pwrite(fd, data, offset)
    os.fdatasync(fd)


def _commit_to_thread(run: PreparedRun) -> None:
    """What a careful asyncio program does today: each durable write on a thread."""
    fd, size = run.raw_fd, run.workload.record_size
    position = 0

    async def durable_appender(payload: bytes) -> None:
        nonlocal position
        for _ in range(run.count):
            offset = position  # reserved before the await: no two tasks share it
            position += size
            await asyncio.to_thread(_pwrite_and_sync, fd, payload, offset)

    async def work() -> None:
        appenders = (durable_appender(_commit_payload(run, t)) for t in range(TASKS))
        await _with_ticker(run, asyncio.gather(*appenders))

    _run_in_loop(run, work())
    run.extra_figures["records_per_fdatasync"] = 1.0


def _commit_teardown(run: PreparedRun) -> None:
    wal: AsyncWal | None = run.state.pop("wal", None)
    log_dir: str | None = run.state.pop("log_dir", None)
    try:
        _close_loop(run, None if wal is None else wal.aclose)
        if log_dir is not None and run.problem is None:
            run.state["wrong"] = _log_problem(run, log_dir)
    finally:
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)


def _log_problem(run: PreparedRun, log_dir: str) -> str | None:
    want = collections.Counter(_commit_payload(run, t) for t in range(TASKS))
    want = collections.Counter({payload: n * run.count for payload, n in want.items()})
    got: collections.Counter[bytes] = collections.Counter()
    with Wal.open(log_dir, io=SyncStorageIo(), create=False) as wal:
        for _lsn, payload in wal.replay():
            got[payload] += 1
    if got == want:
        return None
    return f"{sum(got.values())} records replayed, {run.records} appended, or not those"


def _commit_check(run: PreparedRun) -> str | None:
    if isinstance(run.target, PwriteBaseline):
        # to-thread: task t wrote _commit_payload(run, t), run.count times.
        want: collections.Counter[int] = collections.Counter()
        for t in range(TASKS):
            want[t % len(run.pool)] += run.count
        return _records_problem(run.path, run.pool, want)
    return run.state.get("wrong")


A2 = register_workload(
    Workload(
        "A2",
        "aio_wal_commit",
        "64 tasks, each awaiting 1,000 durable AsyncWal.appends of 256 B",
        full_count=1_000,
        record_size=256,
        records_per_unit=TASKS,
        bodies={"asyncwal": _commit_asyncwal, "to-thread": _commit_to_thread},
        headline="records_per_s",
        shown=(
            "records_per_s",
            "records_per_fdatasync",
            "loop_lag_p99_us",
            "own_lag_p99_us",
            "own_lag_max_us",
        ),
        labels={
            "records_per_fdatasync": "records/fdatasync",
            "loop_lag_p99_us": "lag-p99 µs",
            "own_lag_p99_us": "own-lag-p99 µs",
            "own_lag_max_us": "own-lag-max µs",
        },
        in_default_run=False,
        quick_scale=0.01,
        setup=_commit_setup,
        teardown=_commit_teardown,
        check=_commit_check,
        note="aio_wal_commit (A2, ASYNC.md): 64 tasks awaiting durable AsyncWal.appends, "
        "against 64 tasks each awaiting asyncio.to_thread(pwrite + fdatasync) per record; "
        "targets >= 10x to-thread and >= 32 records/fdatasync; the log rotates 4 MiB "
        "segments. lag-p99: how late a task waking every millisecond on the same loop woke "
        "(p99); own-lag: the same less the time the loop's thread waited for a CPU "
        "(target p99 <= 1 ms, max <= 5 ms).",
    )
)


# -- implementations ------------------------------------------------------------------------


def _optional(module: str) -> Callable[[], Target]:
    """A baseline that needs an optional package: unavailable, saying how to get it, when
    the package is not installed."""

    def create() -> Target:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImplementationUnavailable(
                f"{module} is not installed ({exc}): pip install 'storage_io[bench]'"
            ) from None
        return PwriteBaseline()

    return create


def _register_implementations() -> None:
    on_uring: Callable[[], Target] = _standard_ring
    on_sync: Callable[[], Target] = SyncStorageIo
    for name, create in (("aio-uring", on_uring), ("aio-sync", on_sync)):
        compared = ("pwrite", "aiofile", "aiofiles")
        register_implementation(
            Implementation(name, create, "aio", compared_with=compared, follows_pattern=False)
        )
    for name in ("aiofile", "aiofiles"):
        register_implementation(Implementation(name, _optional(name), name, follows_pattern=False))
    for name, create in (("asyncwal-uring", on_uring), ("asyncwal-sync", on_sync)):
        register_implementation(
            Implementation(
                name, create, "asyncwal", compared_with=("to-thread",), follows_pattern=False
            )
        )
    register_implementation(
        Implementation(
            "to-thread",
            PwriteBaseline,
            "to-thread",
            compared_with=("to-thread",),
            follows_pattern=False,
        )
    )


_register_implementations()
