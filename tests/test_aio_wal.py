"""AsyncWal (ASYNC.md): durable appends from many tasks with group commit, the Wal calls it
passes through, cancellation, poisoning; on every backend and both event loops."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from _aio_support import on_each_loop, run
from storage_io import ClosedError, SyncStorageIo
from storage_io.aio import AsyncWal
from storage_io.wal import Wal, WalError, WalPoisonedError


def _payload(task: int, seq: int) -> bytes:
    return b"%02d:%05d:" % (task, seq) + bytes([65 + task % 26]) * 240


@on_each_loop
def test_appends_from_64_tasks_return_lsns_durable_at_that_moment(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    per_task = 40
    acknowledged: dict[int, bytes] = {}
    commits = 0

    async def main() -> None:
        nonlocal commits
        async with await AsyncWal.open(tmp_path, io=io) as wal:
            assert wal.backend == io.backend

            async def durable_appender(task: int) -> None:
                for seq in range(per_task):
                    payload = _payload(task, seq)
                    lsn = await wal.append(payload)
                    assert wal.durable_lsn >= lsn, "acknowledged before it was durable"
                    acknowledged[lsn] = payload

            await asyncio.gather(*(durable_appender(t) for t in range(64)))
            commits += wal.commits_observed

    run(main, loop_kind)
    records = len(acknowledged)
    assert sorted(acknowledged) == list(range(1, records + 1)), "LSNs unique, no gaps"
    # Group commit: one fdatasync covers many tasks' appends (64 when they keep in step).
    assert records / commits >= 8, f"{commits} commits for {records} records"
    with Wal.open(tmp_path, io=io) as reopened:
        assert dict(reopened.replay()) == acknowledged


@on_each_loop
def test_nowait_commit_wait_durable_sync_and_replay(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with await AsyncWal.open(tmp_path, io=io) as wal:
            assert (wal.last_lsn, wal.durable_lsn) == (0, 0)
            first = wal.append_nowait(b"one")
            second = wal.append_nowait(bytearray(b"two"))
            assert (first, second) == (1, 2) and wal.durable_lsn == 0
            with pytest.raises(ValueError):
                wal.wait_durable(3)  # not handed out yet: raised at the call
            assert wal.commit() == 2
            assert await wal.wait_durable(2) is True
            assert wal.durable_lsn >= 2
            third = wal.append_nowait(b"three")
            assert await wal.sync() == third == 3
            assert wal.durable_lsn == 3
            assert list(wal.replay()) == [(1, b"one"), (2, b"two"), (3, b"three")]
            assert list(wal.replay(from_lsn=3)) == [(3, b"three")]
            with pytest.raises(TypeError):
                wal.append("text")  # type: ignore[arg-type]
        with pytest.raises(ClosedError):
            wal.append(b"late")

    run(main, loop_kind)


@on_each_loop
def test_cancelled_appends_stay_in_the_log(io: Any, loop_kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with await AsyncWal.open(tmp_path, io=io) as wal:
            tasks = [asyncio.create_task(wal.append(b"%03d" % i)) for i in range(200)]
            await asyncio.sleep(0)
            for task in tasks[::2]:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert sum(isinstance(o, asyncio.CancelledError) for o in outcomes) == 100
            assert await wal.append(b"after") == 201

    run(main, loop_kind)
    with Wal.open(tmp_path) as reopened:
        assert [payload for _, payload in reopened.replay()] == [
            b"%03d" % i for i in range(200)
        ] + [b"after"]


class _DatasyncFails(SyncStorageIo):
    """A sync backend whose fdatasyncs fail with EIO once `broken` is set."""

    __slots__ = ("broken",)

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def submit_datasync(self, fd: Any) -> int:
        if self.broken:
            raise OSError(errno.EIO, "injected: fdatasync failed")
        return super().submit_datasync(fd)


@on_each_loop
def test_a_failed_fdatasync_poisons_the_waiting_appends(loop_kind: str, tmp_path: Path) -> None:
    io = _DatasyncFails()

    async def main() -> None:
        wal = await AsyncWal.open(tmp_path, io=io)
        assert await wal.append(b"durable") == 1
        io.broken = True
        outcomes = await asyncio.gather(
            *(wal.append(b"lost") for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(o, WalPoisonedError) for o in outcomes), outcomes
        with pytest.raises(WalPoisonedError):
            wal.append(b"refused")
        with pytest.raises(WalPoisonedError):
            await wal.aclose()

    run(main, loop_kind)
    io.close()
    with Wal.open(tmp_path) as reopened:
        # The failed commit's records were written but never acknowledged; without a crash
        # the page cache may still hold them, so reopening may find them after the first.
        found = list(reopened.replay())
        assert found[0] == (1, b"durable")
        assert all(payload == b"lost" for _, payload in found[1:])


@on_each_loop
def test_a_record_appended_to_the_wal_underneath_is_caught(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    """The AsyncWal numbers records at the call; a record appended to its Wal behind its
    back would shift every LSN it handed out: the log stops, saying why."""

    async def main() -> None:
        wal = await AsyncWal.open(tmp_path, io=io)
        assert await wal.append(b"one") == 1
        wal.wal.append(b"behind its back")
        with pytest.raises(WalError, match="something else appended"):
            await wal.append(b"two")
        with pytest.raises(WalError):
            wal.append(b"three")
        with pytest.raises(WalError):  # "two" was accepted and is not durable
            await wal.aclose()

    run(main, loop_kind)
