"""ASYNC.md guarantee 3: cancelling a task that awaits a write, append or datasync stops the
waiting, not the I/O; the file ends up as if nothing had been cancelled, and the instance
stays usable. On every backend and both event loops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from _aio_support import on_each_loop, parse_records, record, register, run
from storage_io.aio import AsyncStorageIo


@on_each_loop
def test_cancelling_half_of_200_appends_in_flight_loses_none(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "f"

    async def main() -> tuple[int, int]:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)

            async def one(seq: int) -> int:
                return await aio.append(fd, record(seq % 64, seq))

            tasks = [asyncio.create_task(one(seq)) for seq in range(200)]
            await asyncio.sleep(0)  # every task has called append and awaits it
            for task in tasks[::2]:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            cancelled = sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
            # Still usable: a later append and datasync go through after all 200.
            await aio.append(fd, record(0, 999))
            await aio.datasync(fd)
            return cancelled, sum(o == 100 for o in outcomes)

    cancelled, completed = run(main, loop_kind)
    assert (cancelled, completed) == (100, 100)
    found = parse_records(path.read_bytes())
    assert found == [(seq % 64, seq) for seq in range(200)] + [(0, 999)]


@on_each_loop
def test_cancelling_operations_run_as_tasks_before_they_start(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    """create_task(aio.append(...)) cancelled before the task's first step: the append was
    submitted at the call and still lands."""
    path = tmp_path / "f"

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            tasks = [asyncio.create_task(aio.append(fd, record(1, seq))) for seq in range(50)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert all(task.cancelled() for task in tasks)

    run(main, loop_kind)
    assert parse_records(path.read_bytes()) == [(1, seq) for seq in range(50)]


@on_each_loop
def test_a_cancelled_datasync_still_runs_and_the_write_after_it_too(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "f"

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            await aio.append(fd, b"one\n")
            sync = asyncio.create_task(_await(aio.datasync(fd)))
            await asyncio.sleep(0)
            sync.cancel()
            assert await aio.append(fd, b"two\n") == 4
            await aio.datasync(fd)
            assert sync.cancelled()

    run(main, loop_kind)
    assert path.read_bytes() == b"one\ntwo\n"


@on_each_loop
def test_a_write_whose_waiter_timed_out_completes(io: Any, loop_kind: str, tmp_path: Path) -> None:
    """asyncio.wait_for cancels the awaiting on timeout; the write itself finishes."""
    path = tmp_path / "f"
    big = b"z" * (8 << 20)

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            try:
                await asyncio.wait_for(aio.write(fd, big, 0), timeout=1e-6)
            except TimeoutError:
                pass
            # aclose (async with) waits for it.

    run(main, loop_kind)
    assert path.read_bytes() == big


async def _await(awaitable: Any) -> Any:
    return await awaitable
