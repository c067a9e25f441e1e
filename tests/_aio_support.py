"""Helpers for the storage_io.aio tests: running a coroutine on each event loop, a ticker
that measures how long the loop stalls, and records whose wholeness can be checked.

Decorate a test taking `loop_kind` with `on_each_loop` to run it on the default asyncio
loop and on uvloop (which the `test` extra installs).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

uvloop: Any
try:
    import uvloop
except ImportError:  # pragma: no cover - the test extra installs it
    uvloop = None

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")

# Generous: a lost wake-up must fail the test, not hang the suite.
DEADLINE_S = 60.0


# Runs a test on the default asyncio loop and on uvloop (where uvloop is installed).
on_each_loop = pytest.mark.parametrize("loop_kind", LOOPS)


def new_loop(loop_kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of `loop_kind` ("asyncio" or "uvloop")."""
    if loop_kind == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed (pip install -e '.[test]' installs it)")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def run(main: Callable[[], Awaitable[T]], loop_kind: str, deadline_s: float = DEADLINE_S) -> T:
    """Run `main()` on a new loop of `loop_kind`; a run that outlasts `deadline_s` fails."""

    async def bounded() -> T:
        # Not wait_for: cancelling a hung run could hang too (its cleanup awaits the I/O).
        task = asyncio.ensure_future(main())
        done, _ = await asyncio.wait({task}, timeout=deadline_s)
        if not done:
            pytest.fail(f"did not finish within {deadline_s} s: a lost wake-up or a hang")
        return task.result()

    loop = new_loop(loop_kind)
    try:
        return loop.run_until_complete(bounded())
    finally:
        loop.close()


# A stall the code causes shows in every attempt; a burst of other jobs on a shared machine
# seldom lasts through five. Five, not three: a CI run on 2 cores saw three SQPOLL runs in a
# row at p99 5.6-9 ms (its kernel thread takes one of the two cores) and the same test pass
# at once right after; a loop that waits for the disk misses in every run.
LAG_ATTEMPTS = 5


def assert_lag_within(measure: Callable[[], Ticker], limit_s: float) -> None:
    """Run `measure()` (which returns the Ticker of one run) until its p99 is under
    `limit_s`, at most LAG_ATTEMPTS times; fail with every attempt's figures."""
    reports = []
    for _ in range(LAG_ATTEMPTS):
        ticker = measure()
        if ticker.p99() < limit_s:
            return
        reports.append(ticker.report())
    figures = f"loop lag over {limit_s * 1e3:.0f} ms in every attempt: " + "; ".join(reports)
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 2 * cpus:
        # More runnable threads than twice the CPUs: a thread holding the GIL (the sync
        # backend's worker) waits for a CPU while the loop waits for it, which the ticker
        # cannot tell from a stall of the code's own. Say so rather than pass or fail.
        pytest.skip(f"machine overloaded (load {load:.1f} on {cpus} CPUs), {figures}")
    pytest.fail(figures)


def open_path(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    return os.open(path, flags, 0o644)


def register(aio: Any, path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> Any:
    """Register `path` and close our descriptor at once (the io keeps its own)."""
    fd = open_path(path, flags)
    try:
        return aio.register_fd(fd)
    finally:
        os.close(fd)


def record(task: int, seq: int, size: int = 100) -> bytes:
    """A record naming its task and sequence number, `size` bytes long, ending in a newline;
    its body is one byte repeated, so a torn or interleaved record shows."""
    head = b"%03d:%07d:" % (task, seq)
    return head + bytes([65 + task % 26]) * (size - len(head) - 1) + b"\n"


def parse_records(data: bytes, size: int = 100) -> list[tuple[int, int]]:
    """(task, seq) of each record of `data`, checking every record is whole."""
    assert len(data) % size == 0, f"file length {len(data)} is not a multiple of {size}"
    out = []
    for at in range(0, len(data), size):
        chunk = data[at : at + size]
        task, seq = int(chunk[:3]), int(chunk[4:11])
        assert chunk == record(task, seq, size), f"torn or mixed record at offset {at}"
        out.append((task, seq))
    return out


def _runqueue_wait_s() -> float:
    """Seconds this thread has spent runnable but not running (waiting for a CPU), from
    /proc schedstat; 0.0 where the kernel does not say."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Ticker:
    """A task on the loop that asks to wake every `period_s` and records how late it woke.

    Two figures per tick: `lags`, the plain lateness, and `own_lags`, the lateness less the
    time the loop's thread waited for a CPU meanwhile. The second is the loop's own doing
    (work on the loop, a blocking call, a wait for the GIL) and what the tests bound: on a
    shared machine the scheduler alone makes an idle loop's ticker several milliseconds late
    at p99 (2 cores and other jobs: 3-10 ms measured), which says nothing about this code.
    """

    def __init__(self, period_s: float = 0.001) -> None:
        self.period_s = period_s
        self.lags: list[float] = []
        self.own_lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start, waited = time.perf_counter(), _runqueue_wait_s()
            await asyncio.sleep(self.period_s)
            lag = time.perf_counter() - start - self.period_s
            self.lags.append(lag)
            self.own_lags.append(max(0.0, lag - (_runqueue_wait_s() - waited)))

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def p99(self, lags: list[float] | None = None) -> float:
        lags = self.own_lags if lags is None else lags
        assert len(lags) >= 50, f"the ticker ran only {len(lags)} times"
        ordered = sorted(lags)
        return ordered[int(len(ordered) * 0.99)]

    def report(self) -> str:
        return (
            f"p99 {self.p99() * 1e3:.1f} ms less CPU waits "
            f"({self.p99(self.lags) * 1e3:.1f} ms plain) over {len(self.lags)} ticks"
        )
