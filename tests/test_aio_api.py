"""What an asyncio user expects to find: files by path (``aio.open(path, mode)``),
vectored writes, fsync and directory fsync, `AsyncWal.append_many`, `truncate_before`,
`replay_async`, typed `AsyncWal.open`, `wait_durable` returning True; anyio's asyncio
backend; trio refused at once, by name. On every backend and both event loops."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest

from _aio_support import on_each_loop, register, run
from storage_io import Wal
from storage_io.aio import AsyncFile, AsyncStorageIo, AsyncWal


@on_each_loop
def test_files_by_path_append_read_and_sync(io: Any, loop_kind: str, tmp_path: Path) -> None:
    path = tmp_path / "new.log"

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            async with aio.open(path, "x") as f:  # a new file, made durable by the layer
                assert isinstance(f, AsyncFile)
                assert await f.append(b"hello ") == 6
                assert await f.appendv([b"wor", bytearray(b"ld")]) == 5
                await f.fsync()
            await aio.fsync_directory(tmp_path)
            assert f.closed
            f = await aio.open(path, "r+b")
            assert await f.read(11) == b"hello world"
            assert await f.write(b"W", 6) == 1
            await f.datasync()
            assert await f.read(5, 6) == b"World"
            await f.aclose()
            async with aio.open(path, "a") as f:
                await f.append(b"!")
            with pytest.raises(FileExistsError):
                await aio.open(path, "x")
            with pytest.raises(ValueError, match="invalid mode"):
                aio.open(path, "rt")

    run(main, loop_kind)
    assert path.read_bytes() == b"hello World!"


@on_each_loop
def test_writev_appendv_and_fsync_on_handles(io: Any, loop_kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, tmp_path / "f")
            assert await aio.appendv(fd, [b"ab", memoryview(b"cd"), bytearray(b"ef")]) == 6
            assert await aio.writev(fd, [b"X", b"Y"], 2) == 2
            await aio.fsync(fd)
            assert await aio.read(fd, 10, 0) == b"abXYef"
            with pytest.raises(TypeError):
                aio.appendv(fd, b"one bytes object")  # type: ignore[arg-type]

    run(main, loop_kind)


@on_each_loop
def test_asyncwal_append_many_truncate_and_replay_async(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        wal = await AsyncWal.open(tmp_path, io=io, segment_bytes=1 << 20)
        last = await wal.append_many(b"%06d" % i + b"." * 4000 for i in range(600))
        assert last == 600 and wal.durable_lsn >= 600
        assert await wal.append_many([]) == 600
        assert await wal.wait_durable(600) is True
        assert len(list((tmp_path).glob("*.wal"))) > 1 or wal.first_lsn == 1
        await wal.truncate_before(500)
        first = wal.first_lsn
        assert 1 < first <= 500, "whole segments below 500 were deleted"
        replayed = [lsn async for lsn, _ in wal.replay_async()]
        assert replayed == list(range(first, 601))
        assert [p[:6] async for _, p in wal.replay_async(from_lsn=599)] == [b"000598", b"000599"]
        with pytest.raises(TypeError):
            wal.append_many([b"ok", "text"])  # type: ignore[list-item]
        assert wal.last_lsn == 600, "a refused batch appends nothing"
        await wal.aclose()

    run(main, loop_kind)


def test_asyncwal_open_takes_the_keywords_of_wal_open() -> None:
    wal_open = inspect.signature(Wal.open)
    async_open = inspect.signature(AsyncWal.open)
    assert list(async_open.parameters) == list(wal_open.parameters)
    for name, parameter in wal_open.parameters.items():
        assert async_open.parameters[name].kind == parameter.kind
        assert async_open.parameters[name].default == parameter.default

    async def main() -> None:
        with pytest.raises(TypeError):
            await AsyncWal.open("somewhere", no_such_option=1)  # type: ignore[call-arg]

    asyncio.run(main())


def test_anyio_asyncio_backend(io: Any, tmp_path: Path) -> None:
    anyio = pytest.importorskip("anyio")

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, tmp_path / "f")
            async with anyio.create_task_group() as group:
                for i in range(50):
                    group.start_soon(aio.append, fd, b"%02d" % i)
            await aio.datasync(fd)
            assert len(await aio.read(fd, 1000, 0)) == 100
        async with await AsyncWal.open(tmp_path / "log", io=io) as wal:
            with anyio.fail_after(30):
                assert await wal.append(b"x") == 1

    anyio.run(main, backend="asyncio")


def test_trio_is_refused_at_once_by_name(io: Any, tmp_path: Path) -> None:
    trio = pytest.importorskip("trio")
    aio = AsyncStorageIo(io)
    fd = register(aio, tmp_path / "f")
    messages = []

    async def main() -> None:
        for call in (
            lambda: aio.append(fd, b"x"),
            lambda: AsyncStorageIo.open(io),
            lambda: AsyncWal.open(tmp_path / "log", io=io),
        ):
            with pytest.raises(RuntimeError) as raised:
                awaitable = call()
                await awaitable  # a coroutine function raises when first stepped
            messages.append(str(raised.value))

    trio.run(main)
    for message in messages:
        assert "trio" in message and "asyncio" in message, message

    async def close() -> None:
        await aio.aclose()

    asyncio.run(close())
