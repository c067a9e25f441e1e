"""One io, any number of async users: `AsyncStorageIo` and `AsyncWal` objects, two of
either, and a thread waiting for its own tokens, all on one `StorageIo` and one loop, each
taking only its own completions; one eventfd for them all, closed with the last. A failed
`AsyncWal.open` leaves nothing behind. On every backend and both event loops."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from _aio_support import on_each_loop, parse_records, record, register, run
from storage_io import Wal, WalError
from storage_io.aio import AsyncStorageIo, AsyncWal


def _eventfds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if "eventfd" in os.readlink(f"/proc/self/fd/{name}"):
                count += 1
        except OSError:
            pass
    return count


@on_each_loop
def test_two_storage_users_and_two_logs_share_one_io(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    counts: list[int] = []

    async def main() -> None:
        log_a = await AsyncWal.open(tmp_path / "a", io=io)
        log_b = await AsyncWal.open(tmp_path / "b", io=io)
        # Counted from here: the loop's own eventfd (uvloop has one) exists by now.
        before = _eventfds()
        first, second = AsyncStorageIo(io), AsyncStorageIo(io)
        fd_1, fd_2 = register(first, tmp_path / "1"), register(second, tmp_path / "2")

        async def writer(aio: AsyncStorageIo, fd: Any, task: int) -> None:
            for seq in range(100):
                assert await aio.append(fd, record(task, seq)) == 100
            await aio.datasync(fd)

        async def logger(wal: AsyncWal, name: bytes) -> None:
            for seq in range(100):
                await wal.append(b"%s %d" % (name, seq))

        await asyncio.gather(
            writer(first, fd_1, 1),
            writer(second, fd_2, 2),
            logger(log_a, b"a"),
            logger(log_b, b"b"),
        )
        counts.append(_eventfds() - before)
        await first.aclose()
        counts.append(_eventfds() - before)  # the other user still has it
        await second.aclose()
        counts.append(_eventfds() - before)
        for wal in (log_a, log_b):
            await wal.aclose()

    run(main, loop_kind)
    assert counts == [1, 1, 0], "one eventfd for every user of the io, closed with the last"
    assert parse_records((tmp_path / "1").read_bytes()) == [(1, s) for s in range(100)]
    assert parse_records((tmp_path / "2").read_bytes()) == [(2, s) for s in range(100)]
    for name in ("a", "b"):
        with Wal.open(tmp_path / name) as wal:
            assert [p for _, p in wal.replay()] == [
                b"%s %d" % (name.encode(), s) for s in range(100)
            ]


@on_each_loop
def test_a_thread_waiting_for_its_own_tokens_on_the_same_io_loses_nothing(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "thread"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    thread_fd = io.register_fd(descriptor)
    os.close(descriptor)
    finished: list[int] = []

    def thread_writer() -> None:
        for seq in range(200):
            token = io.submit_append(thread_fd, record(9, seq))
            (completion,) = io.wait_for([token], 30)
            finished.append(completion.result)

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, tmp_path / "loop")
            thread = threading.Thread(target=thread_writer)
            thread.start()
            results = await asyncio.gather(*(aio.append(fd, record(1, s)) for s in range(500)))
            assert results == [100] * 500
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    run(main, loop_kind)
    assert finished == [100] * 200
    assert parse_records(path.read_bytes()) == [(9, s) for s in range(200)]
    assert parse_records((tmp_path / "loop").read_bytes()) == [(1, s) for s in range(500)]


@on_each_loop
def test_a_failed_asyncwal_open_leaves_nothing_behind(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with await AsyncWal.open(tmp_path, io=io) as held:
            await held.append(b"x")
            before = io.metrics().get("registered_files")
            with pytest.raises(WalError):  # the directory is locked by the open log
                await AsyncWal.open(tmp_path, io=io)
            if before is not None:  # the sync backend counts its registrations
                assert io.metrics()["registered_files"] == before
        # Opened again, it works: nothing of the failed attempt is locked or left open.
        async with await AsyncWal.open(tmp_path, io=io) as again:
            assert again.last_lsn == 1

    run(main, loop_kind)


@on_each_loop
def test_an_open_abandoned_by_its_caller_is_closed(io: Any, loop_kind: str, tmp_path: Path) -> None:
    """The task opening a log is cancelled while the recovery runs: the log it opened is
    closed and its directory unlocked once the recovery ends."""

    async def main() -> None:
        opening = asyncio.ensure_future(AsyncWal.open(tmp_path, io=io))
        await asyncio.sleep(0)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        for _ in range(200):  # the helper thread closes it when the recovery ends
            try:
                wal = await AsyncWal.open(tmp_path, io=io)
            except WalError:
                await asyncio.sleep(0.05)
                continue
            await wal.aclose()
            return
        pytest.fail("the log opened for the cancelled task stayed locked")

    run(main, loop_kind)
