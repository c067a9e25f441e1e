"""The lifetime of storage_io.aio's objects: `aclose()` cancelled and retried, the io closed
under waiting tasks, an exception raised while completions are delivered, `__aexit__` with
the body's exception, `ResourceWarning` when unclosed, stale handles, fork, and the asyncio
calls that take the awaitables. On every backend and both event loops."""

from __future__ import annotations

import asyncio
import gc
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from _aio_support import on_each_loop, parse_records, record, register, run
from storage_io import BadFdError, ClosedError, WalError
from storage_io.aio import AsyncStorageIo, AsyncWal


def _open_descriptors() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@on_each_loop
def test_a_cancelled_aclose_leaves_the_object_closable_and_the_next_one_finishes(
    make_io: Any, loop_kind: str, tmp_path: Path
) -> None:
    io = make_io()
    before = _open_descriptors()

    async def main() -> None:
        aio = AsyncStorageIo(io)
        fd = register(aio, tmp_path / "f")
        for seq in range(300):
            aio.append(fd, record(1, seq, 4096))
        closing = asyncio.ensure_future(aio.aclose())
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert aio.closed  # closing: no new operations
        with pytest.raises(ClosedError):
            aio.append(fd, b"late")
        await aio.aclose()  # finishes the job
        await aio.aclose()  # and then does nothing

    run(main, loop_kind)
    # The eventfd is closed with the last user (the io keeps only its own descriptors of
    # the registered file).
    leftover = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in _open_descriptors() - before}
    assert not [fd for fd, what in leftover.items() if "eventfd" in what], leftover
    assert parse_records((tmp_path / "f").read_bytes(), 4096) == [(1, s) for s in range(300)]


@on_each_loop
def test_a_timed_out_aclose_of_an_owned_io_is_finished_by_the_next_call(
    loop_kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        aio = await AsyncStorageIo.open()
        fd = register(aio, tmp_path / "f")
        for seq in range(300):
            aio.append(fd, record(2, seq, 4096))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(aio.aclose(), timeout=0)
        await aio.aclose()
        assert aio.io.closed, "the io it opened is closed"

    run(main, loop_kind)
    assert parse_records((tmp_path / "f").read_bytes(), 4096) == [(2, s) for s in range(300)]


@on_each_loop
def test_a_cancelled_asyncwal_aclose_is_finished_by_the_next_call(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        wal = await AsyncWal.open(tmp_path, io=io)
        for seq in range(100):
            wal.append_nowait(b"%d" % seq)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(wal.aclose(), timeout=0)
        await wal.aclose()
        assert wal.wal.durable_lsn == 100
        # The directory is unlocked: the log opens again.
        reopened = await AsyncWal.open(tmp_path, io=io)
        assert [p async for _, p in reopened.replay_async()] == [b"%d" % s for s in range(100)]
        await reopened.aclose()

    run(main, loop_kind)


@on_each_loop
def test_closing_the_io_under_waiting_tasks_ends_every_wait(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    outcomes: list[Any] = []

    async def main() -> None:
        aio = AsyncStorageIo(io)
        fd = register(aio, tmp_path / "f")
        tasks = [asyncio.ensure_future(aio.append(fd, record(3, seq, 4096))) for seq in range(300)]
        tasks.append(asyncio.ensure_future(aio.datasync(fd)))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        io.close()  # from the loop's own thread: it waits for what is in flight
        outcomes.extend(await asyncio.gather(*tasks, return_exceptions=True))
        await aio.aclose()  # returns: nothing is left waiting

    run(main, loop_kind)
    assert len(outcomes) == 301
    for outcome in outcomes:
        assert outcome in (4096, None) or isinstance(outcome, ClosedError), outcome


@on_each_loop
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_exception_while_completions_are_delivered_loses_none(
    io: Any, loop_kind: str, tmp_path: Path, interruption: type[BaseException]
) -> None:
    """The exception comes out of the loop in the middle of a delivery (as a signal
    handler's would); the completions not yet delivered are delivered by the next drain,
    and every task finishes."""
    path = tmp_path / "f"
    raised: list[int] = []

    class InterruptedOnce(set):  # type: ignore[type-arg]
        """The set of the user's tokens in flight: its discard in a delivery under
        way: its future resolved, its entry not yet removed) raises."""

        def discard(self, token: object) -> None:
            if len(raised) == 0 and len(self) < 198:
                raised.append(int(token))  # type: ignore[call-overload]
                raise interruption()
            super().discard(token)

    started: list[Any] = []

    async def start() -> None:
        aio = AsyncStorageIo(io)
        aio._account.tokens = InterruptedOnce()
        fd = register(aio, path)
        started.append(aio)
        started.append([asyncio.ensure_future(aio.append(fd, record(4, s))) for s in range(200)])

    loop = asyncio.new_event_loop() if loop_kind == "asyncio" else _uvloop().new_event_loop()
    interruptions = 0
    try:
        while True:
            try:
                if not started:
                    loop.run_until_complete(start())
                aio, tasks = started
                results = loop.run_until_complete(asyncio.wait_for(asyncio.gather(*tasks), 30))
                break
            except interruption:
                interruptions += 1
            except RuntimeError as exc:
                # uvloop may still be stopping from the exception when run again: run again.
                assert "stopped before Future completed" in str(exc)
        loop.run_until_complete(asyncio.wait_for(aio.aclose(), 30))
    finally:
        loop.close()
    assert interruptions == 1 and raised, "the injected exception came out of the loop once"
    assert results == [100] * 200
    assert parse_records(path.read_bytes()) == [(4, s) for s in range(200)]


def _uvloop() -> Any:
    return pytest.importorskip("uvloop")


@on_each_loop
def test_asyncwal_aexit_lets_the_body_exception_through(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    class BodyFailed(Exception):
        pass

    async def main() -> None:
        with pytest.raises(BodyFailed):
            async with await AsyncWal.open(tmp_path, io=io) as wal:
                await wal.append(b"x")
                raise BodyFailed
        assert wal.closed

    run(main, loop_kind)


@on_each_loop
def test_unclosed_objects_warn_when_collected(io: Any, loop_kind: str, tmp_path: Path) -> None:
    async def leave_unclosed() -> None:
        aio = AsyncStorageIo(io)
        await aio.append(register(aio, tmp_path / "f"), b"x")
        wal = await AsyncWal.open(tmp_path / "log", io=io)
        await wal.append(b"y")

    async def main() -> None:
        with pytest.warns(ResourceWarning) as caught:
            await leave_unclosed()
            gc.collect()
        messages = [str(warning.message) for warning in caught]
        assert any(m.startswith("unclosed <AsyncStorageIo") for m in messages), messages
        assert any(m.startswith("unclosed <AsyncWal") for m in messages), messages

    run(main, loop_kind)

    # The log collected unclosed is closed by its worker (soon after): it opens again.
    async def reopen() -> None:
        for _ in range(600):
            try:
                wal = await AsyncWal.open(tmp_path / "log", io=io)
            except WalError:
                await asyncio.sleep(0.05)
                continue
            assert [p async for _, p in wal.replay_async()] == [b"y"]
            await wal.aclose()
            return
        pytest.fail("the log of the collected AsyncWal stayed open")

    run(reopen, loop_kind)


@on_each_loop
def test_a_stale_handle_raises_bad_fd_error_at_the_call(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, tmp_path / "f")
            await aio.append(fd, b"x")
            await aio.deregister_fd(fd)
            for call in (
                lambda: aio.append(fd, b"y"),
                lambda: aio.write(fd, b"y", 0),
                lambda: aio.datasync(fd),
                lambda: aio.read(fd, 1, 0),
            ):
                with pytest.raises(BadFdError):
                    call()  # raised here, not when awaited

    run(main, loop_kind)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_after_fork_the_child_is_told_about_fork(io: Any, tmp_path: Path) -> None:
    aio = AsyncStorageIo(io)
    fd = register(aio, tmp_path / "f")

    async def use() -> None:
        await aio.append(fd, b"x")

    asyncio.run(use())
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the message, never return into pytest
        try:
            try:
                asyncio.run(use())
                message = "no error"
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                message = f"{type(exc).__name__}: {exc}"
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    message = os.read(read_end, 4096).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert message.startswith("ClosedError") and "fork" in message, message

    async def close() -> None:
        await aio.aclose()

    asyncio.run(close())


@on_each_loop
def test_the_awaitables_work_with_every_asyncio_way_of_waiting(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, tmp_path / "f")
            assert await aio.append(fd, b"a") == 1
            assert await asyncio.gather(aio.append(fd, b"b"), aio.append(fd, b"c")) == [1, 1]
            assert await asyncio.wait_for(aio.append(fd, b"d"), 30) == 1
            future = asyncio.ensure_future(aio.append(fd, b"e"))
            done, _ = await asyncio.wait({future})
            assert done == {future} and future.result() == 1
            assert await asyncio.create_task(aio.append(fd, b"f")) == 1
            async with asyncio.TaskGroup() as group:
                task = group.create_task(aio.append(fd, b"g"))
            assert task.result() == 1
            assert await aio.read(fd, 16, 0) == b"abcdefg"

    run(main, loop_kind)


def test_no_resource_warning_from_closed_objects(io: Any, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            await aio.append(register(aio, tmp_path / "f"), b"x")
        async with await AsyncWal.open(tmp_path / "log", io=io) as wal:
            await wal.append(b"y")

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        asyncio.run(main())
        gc.collect()
