"""The loop never waits for the disk, and no wake-up is lost.

Behaviour, not time (the loop's lag in milliseconds is measured by the benches: `python -m
storage_io bench --workload aio_wal_commit`, and benches/test_bench_aio.py): the calls that
wait for the disk (``pwrite``, ``fdatasync``, the log's rotation and commits, closing and
deregistering) never run in the loop's thread, a task of the loop keeps running while they
happen, and every completion wakes the loop by itself. The mixed run's length grows to
10^6 operations with STORAGE_IO_STRESS=1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from _aio_support import on_each_loop, parse_records, record, register, run
from _support import pattern, scaled
from conftest import build_backend
from storage_io import _sync_nowait
from storage_io.aio import AsyncStorageIo, AsyncWal
from storage_io.aio import _storage as storage_module
from storage_io.wal import Wal


class Threads:
    """Records which thread each patched call ran in."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {}

    def wrap(self, name: str, fn: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.seen.setdefault(name, set()).add(threading.get_ident())
            return fn(*args, **kwargs)

        return recorded


@on_each_loop
def test_durable_appends_never_wait_for_the_disk_in_the_loops_thread(
    io: Any, loop_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 tasks append and datasync while a ticker task runs: the ticker keeps ticking while
    they work, and no write or fdatasync ran in the loop's thread (the sync backend's are
    watched in Python; io_uring's counts the ones a caller ran itself)."""
    threads = Threads()
    for name in ("_pwrite", "_datasync"):
        monkeypatch.setattr(_sync_nowait, name, threads.wrap(name, getattr(_sync_nowait, name)))
    path = tmp_path / "f"
    ticks_during: list[int] = []
    loop_thread: list[int] = []

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            ticking = asyncio.ensure_future(ticker())
            await asyncio.sleep(0.01)

            async def durable_appender(task: int) -> None:
                for seq in range(20):
                    await aio.append(fd, record(task, seq))
                    before = ticks
                    await aio.datasync(fd)
                    ticks_during.append(ticks - before)

            await asyncio.gather(*(durable_appender(t) for t in range(64)))
            ticking.cancel()

    before = io.metrics()
    run(main, loop_kind)
    after = io.metrics()
    found = parse_records(path.read_bytes())
    assert sorted(found) == [(t, s) for t in range(64) for s in range(20)]
    assert sum(ticks_during) > 0, "the ticker never ran while a datasync was awaited"
    assert loop_thread[0] not in set().union(*threads.seen.values())
    if io.backend == "sync":
        assert threads.seen.get("_datasync"), "the watch saw the backend's fdatasyncs"
    else:
        for key in ("datasyncs_in_caller", "writes_in_caller"):
            assert after[key] == before[key], f"{key}: the loop's thread did the I/O"


@on_each_loop
def test_the_log_rotates_and_commits_off_the_loop(
    io: Any, loop_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = Threads()
    for name in ("append_many", "commit", "wait_durable", "close"):
        monkeypatch.setattr(Wal, name, threads.wrap(name, getattr(Wal, name)))
    loop_thread: list[int] = []

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        async with await AsyncWal.open(tmp_path, io=io, segment_bytes=1 << 20) as wal:
            payload = b"r" * 2000

            async def appender() -> None:
                for _ in range(100):
                    await wal.append(payload)

            await asyncio.gather(*(appender() for _ in range(16)))

    run(main, loop_kind)
    segments = list(tmp_path.glob("*.wal")) or [p for p in tmp_path.iterdir() if p.is_file()]
    assert len(segments) > 2, "the run crossed segments"
    assert threads.seen.get("append_many") and threads.seen.get("wait_durable")
    assert loop_thread[0] not in set().union(*threads.seen.values())


@on_each_loop
def test_deregister_and_open_use_neither_the_loop_nor_its_default_executor(
    io: Any, loop_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = Threads()
    monkeypatch.setattr(
        storage_module, "open_storage_io", threads.wrap("open", storage_module.open_storage_io)
    )

    class Refusing(concurrent.futures.ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the loop's default executor was used")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(Refusing())
        owned = await AsyncStorageIo.open()
        await owned.aclose()
        assert threading.get_ident() not in threads.seen["open"]
        async with AsyncStorageIo(io) as aio:
            big, small = register(aio, tmp_path / "big"), register(aio, tmp_path / "small")
            writing = aio.append(big, pattern(64 << 20))
            deregistering = asyncio.ensure_future(aio.deregister_fd(big))
            # Another file's operations called after the deregistration go on meanwhile.
            assert await aio.append(small, b"x") == 1
            small_done_first = not deregistering.done()
            assert await writing == 64 << 20
            await deregistering
            if io.backend != "sync":  # the sync backend's worker takes them in call order
                assert small_done_first, "the other file waited for the deregistration"

    run(main, loop_kind)


@on_each_loop
def test_a_lone_task_awaiting_one_operation_at_a_time_is_woken_each_time(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    """Nothing else runs on the loop: every completion must wake it by itself."""
    path = tmp_path / "f"

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            for seq in range(300):
                await aio.append(fd, record(0, seq))
                if seq % 10 == 0:
                    await aio.datasync(fd)

    run(main, loop_kind, deadline_s=30)
    assert parse_records(path.read_bytes()) == [(0, s) for s in range(300)]


@on_each_loop
def test_no_lost_wakeup_over_a_long_mixed_run(io: Any, loop_kind: str, tmp_path: Path) -> None:
    """Appends, writes, reads and datasyncs from 16 tasks on two files of the real disk;
    every operation finishes (the run's deadline fails a hang) with the right result."""
    total = scaled(8_000, 1_000_000)
    tasks = 16
    per_task = total // tasks
    log_path, blocks_path = tmp_path / "log", tmp_path / "blocks"

    async def main() -> int:
        async with AsyncStorageIo(io) as aio:
            log, blocks = register(aio, log_path), register(aio, blocks_path)
            appended = 0

            async def worker(task: int) -> None:
                nonlocal appended
                rng = random.Random(task)
                for op in range(per_task):
                    choice = rng.random()
                    if choice < 0.5:
                        assert await aio.append(log, record(task, op)) == 100
                        appended += 1
                    elif choice < 0.75:
                        block = pattern(512, seed=op)
                        offset = (task * 64 + op % 64) * 512  # this task's own blocks
                        assert await aio.write(blocks, block, offset) == 512
                        assert await aio.read(blocks, 512, offset) == block
                    elif choice < 0.97:
                        head = await aio.read(log, 100, 0)
                        assert head == b"" or parse_records(head)
                    else:
                        await aio.datasync(rng.choice((log, blocks)))

            await asyncio.gather(*(worker(t) for t in range(tasks)))
            await aio.datasync(log)
            return appended

    appended = run(main, loop_kind, deadline_s=scaled(120, 3600))
    assert len(parse_records(log_path.read_bytes())) == appended


@on_each_loop
def test_submissions_of_one_loop_tick_reach_the_kernel_together(
    loop_kind: str, tmp_path: Path
) -> None:
    """STANDARD ring: 64 appends called in one tick leave as one kernel write, handed over
    by one flush (a flush per call would make 64 writes and 64 system calls)."""
    io = build_backend("uring")
    path = tmp_path / "f"

    async def main() -> tuple[int, int]:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            await aio.append(fd, b"warm-up\n")
            before = io.metrics()
            await asyncio.gather(*(aio.append(fd, record(t, 0)) for t in range(64)))
            after = io.metrics()
            return (
                after["ring_operations"] - before["ring_operations"],
                after["enter_calls"] - before["enter_calls"],
            )

    try:
        kernel_writes, system_calls = run(main, loop_kind)
    finally:
        io.close()
    assert kernel_writes == 1
    assert system_calls <= 2
