"""What a call of storage_io.aio started reaches the file, in call order, whatever happens to
the event loop afterwards: the loop ends with `asyncio.run` returning, a `TaskGroup` is
cancelled, or `aclose()` is cut short by a timeout. After `io.close()` the file holds every
byte. On every backend and both event loops."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from _aio_support import LOOPS, new_loop, register
from storage_io.aio import AsyncStorageIo

# The AsyncStorageIo of these tests is left unclosed on purpose: the loop ends first.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

CHUNK = 64 * 1024
COUNT = 1000


def chunk(index: int) -> bytes:
    """64 KiB naming its index, so that a lost or misplaced chunk shows."""
    head = b"<chunk %06d>" % index
    return head + bytes([index % 251]) * (CHUNK - len(head))


def assert_every_chunk_in_call_order(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) == COUNT * CHUNK, (
        f"the file holds {len(data)} of {COUNT * CHUNK} bytes: "
        f"{COUNT - len(data) // CHUNK} appends that the calls accepted were never made"
    )
    for index in range(COUNT):
        at = index * CHUNK
        assert data[at : at + CHUNK] == chunk(index), f"chunk {index} is not where it belongs"


def run_until_the_loop_ends(main: Callable[[], Awaitable[Any]], loop_kind: str) -> None:
    """Run `main` as `asyncio.run` does: whatever tasks are left are cancelled, and the loop
    is closed. The AsyncStorageIo left unclosed is collected here, where its ResourceWarning
    is expected."""
    loop = new_loop(loop_kind)
    try:
        loop.run_until_complete(main())
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    gc.collect()


def start_appends(aio: AsyncStorageIo, fd: Any) -> list[asyncio.Task[int]]:
    return [asyncio.ensure_future(aio.append(fd, chunk(index))) for index in range(COUNT)]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_appends_started_before_asyncio_run_returns_all_land(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "f"

    async def main() -> None:
        aio = AsyncStorageIo(io)
        fd = register(aio, path)
        start_appends(aio, fd)
        await asyncio.sleep(0)  # the loop runs a little, then main returns

    run_until_the_loop_ends(main, loop_kind)
    io.close()
    assert_every_chunk_in_call_order(path)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup is new in Python 3.11")
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_appends_of_a_cancelled_task_group_all_land(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "f"

    class Stop(Exception):
        pass

    async def main() -> None:
        aio = AsyncStorageIo(io)
        fd = register(aio, path)
        with pytest.raises(ExceptionGroup) as raised:  # noqa: F821 - Python >= 3.11
            async with asyncio.TaskGroup() as group:
                for index in range(COUNT):
                    group.create_task(aio.append(fd, chunk(index)))
                raise Stop
        assert raised.group_contains(Stop)  # the group was cancelled, its appends too

    run_until_the_loop_ends(main, loop_kind)
    io.close()
    assert_every_chunk_in_call_order(path)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_appends_land_when_aclose_is_cut_short_by_a_timeout(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    cut_short: list[AsyncStorageIo] = []

    async def main() -> None:
        aio = AsyncStorageIo(io)
        cut_short.append(aio)
        fd = register(aio, path)
        start_appends(aio, fd)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(aio.aclose(), timeout=0.001)

    run_until_the_loop_ends(main, loop_kind)
    io.close()
    assert_every_chunk_in_call_order(path)

    async def finish_closing() -> None:
        await cut_short[0].aclose()  # the next aclose() finishes the job, in another loop

    asyncio.run(finish_closing())
    assert cut_short[0].closed
