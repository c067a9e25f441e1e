"""AsyncStorageIo (ASYNC.md): round trips, results and errors, on every backend and on both
event loops. The same suite for every backend: guarantee 4 (same API and results)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from _aio_support import on_each_loop, parse_records, record, register, run
from _support import pattern
from storage_io import BadFdError, ClosedError, StorageIo
from storage_io.aio import AsyncStorageIo


@on_each_loop
def test_write_append_datasync_read_round_trip(io: Any, loop_kind: str, tmp_path: Path) -> None:
    path = tmp_path / "f"

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            assert aio.io is io and aio.backend == io.backend
            fd = register(aio, path)
            assert await aio.append(fd, b"abc") == 3
            assert await aio.append(fd, bytearray(b"def")) == 3
            assert await aio.write(fd, memoryview(b"XY"), 1) == 2
            result = await aio.datasync(fd)  # type: ignore[func-returns-value]
            assert result is None  # the contract: None once durable
            assert await aio.read(fd, 100, 0) == b"aXYdef"
            assert await aio.read(fd, 2, 4) == b"ef"
            assert await aio.read(fd, 10, 100) == b""
            assert await aio.read(fd, 0, 0) == b""
            await aio.deregister_fd(fd)

    run(main, loop_kind)
    assert path.read_bytes() == b"aXYdef"
    assert not io.closed, "an io that was passed in stays open"


@on_each_loop
def test_writes_larger_than_the_buffer_pool_and_more_than_it_holds(
    make_io: Any, loop_kind: str, tmp_path: Path
) -> None:
    """Writes that need more registered buffers than are free are held back, not blocked on
    (io_uring) and land whole; one larger than the whole pool travels on its own."""
    io = make_io(buffer_size=4096, buffer_count=8)
    path = tmp_path / "f"
    chunks = [pattern(20_000, seed=i) for i in range(24)] + [pattern(100_000, seed=99)]

    async def main() -> list[int]:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            sizes = await asyncio.gather(*(aio.append(fd, chunk) for chunk in chunks))
            await aio.datasync(fd)
            return list(sizes)

    assert run(main, loop_kind) == [len(c) for c in chunks]
    assert path.read_bytes() == b"".join(chunks)


@on_each_loop
def test_the_bytes_are_copied_at_the_call(io: Any, loop_kind: str, tmp_path: Path) -> None:
    path = tmp_path / "f"

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            buffer = bytearray(b"a" * 10)
            pending = aio.write(fd, buffer, 0)
            buffer[:] = b"b" * 10
            task = asyncio.ensure_future(aio.write(fd, buffer, 10))
            buffer[:] = b"c" * 10
            await pending
            await task

    run(main, loop_kind)
    assert path.read_bytes() == b"a" * 10 + b"b" * 10


@on_each_loop
def test_operations_run_as_tasks_land_in_call_order(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    """The operation starts at the call, so create_task takes it and appends land in the
    order of the calls."""
    path = tmp_path / "f"

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)
            tasks = [asyncio.create_task(aio.append(fd, record(0, i))) for i in range(200)]
            assert await asyncio.gather(*tasks) == [100] * 200

    run(main, loop_kind)
    assert parse_records(path.read_bytes()) == [(0, i) for i in range(200)]


@on_each_loop
def test_64_tasks_appending_leave_every_record_whole(
    io: Any, loop_kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    per_task = 150

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, path)

            async def writer(task: int) -> None:
                for seq in range(per_task):
                    assert await aio.append(fd, record(task, seq)) == 100
                    if seq % 50 == 49:
                        await aio.datasync(fd)

            await asyncio.gather(*(writer(task) for task in range(64)))
            await aio.datasync(fd)

    run(main, loop_kind)
    found = parse_records(path.read_bytes())
    assert sorted(found) == [(t, s) for t in range(64) for s in range(per_task)]
    for task in range(64):
        assert [s for t, s in found if t == task] == list(range(per_task)), "order of a task"


@on_each_loop
def test_owned_io_is_opened_and_closed(loop_kind: str, tmp_path: Path) -> None:
    async def main() -> StorageIo:
        aio = AsyncStorageIo()
        fd = register(aio, tmp_path / "f")
        assert await aio.append(fd, b"x") == 1
        await aio.aclose()
        await aio.aclose()  # a second close does nothing
        assert aio.closed
        return aio.io

    io = run(main, loop_kind)
    assert isinstance(io, StorageIo) and io.closed


# -- errors (guarantee 5) ------------------------------------------------------------------


@on_each_loop
def test_argument_errors_raise_at_the_call(io: Any, loop_kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            fd = register(aio, tmp_path / "f")
            with pytest.raises(TypeError):
                aio.write(fd, "text", 0)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                aio.append(fd, 12)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                aio.write(fd, b"x", -1)
            with pytest.raises(ValueError):
                aio.read(fd, -1, 0)
            with pytest.raises(BadFdError):
                aio.append("not a handle", b"x")  # type: ignore[arg-type]
            with pytest.raises(BadFdError):
                aio.datasync(7)  # type: ignore[arg-type]
            # Nothing was written by the refused calls, and the instance still works.
            assert await aio.append(fd, b"ok") == 2
            await aio.deregister_fd(fd)
            with pytest.raises(BadFdError):
                await aio.append(fd, b"x")
        with pytest.raises(ClosedError):
            aio.append(fd, b"x")

    run(main, loop_kind)
    assert (tmp_path / "f").read_bytes() == b"ok"


@on_each_loop
def test_kernel_errors_raise_oserror_with_errno(io: Any, loop_kind: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"read only")

    async def main() -> None:
        async with AsyncStorageIo(io) as aio:
            read_only = register(aio, path, os.O_RDONLY)
            with pytest.raises(OSError) as raised:
                await aio.write(read_only, b"x", 0)
            assert raised.value.errno == errno.EBADF
            with pytest.raises(OSError) as raised:
                await aio.append(read_only, b"x")
            assert raised.value.errno == errno.EBADF
            # The instance stays usable.
            fd = register(aio, tmp_path / "g")
            assert await aio.append(fd, b"fine") == 4

    run(main, loop_kind)
    assert path.read_bytes() == b"read only"


@on_each_loop
def test_a_closed_io_raises_closed_error(io: Any, loop_kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        aio = AsyncStorageIo(io)
        fd = register(aio, tmp_path / "f")
        io.close()
        with pytest.raises(ClosedError):
            await aio.append(fd, b"x")
        await aio.aclose()

    run(main, loop_kind)


def test_bound_to_the_loop_of_first_use(io: Any, tmp_path: Path) -> None:
    aio = AsyncStorageIo(io)
    fd = register(aio, tmp_path / "f")

    async def use() -> int:
        return await aio.append(fd, b"x")

    assert asyncio.run(use()) == 1
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(use())

    async def close() -> None:
        # The first loop is gone: closing from another one lets go of what it can.
        await aio.aclose()

    asyncio.run(close())


# -- streams -------------------------------------------------------------------------------


@on_each_loop
def test_a_pipe_written_while_another_task_reads_it(io: Any, loop_kind: str) -> None:
    """More than a pipe holds goes through the writer while a reader task on the same loop
    drains it: neither side may block the loop. Pipes are streams on every backend
    (docs/contract.md): each write leaves whole, in call order."""
    chunks = [pattern(16_384, seed=i) for i in range(64)]  # 1 MiB: 16 pipe buffers

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        async with AsyncStorageIo(io) as aio:
            fd = aio.register_fd(write_end)
            os.close(write_end)
            reader = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb")
            )
            try:
                reading = asyncio.ensure_future(reader.readexactly(len(chunks) * 16_384))
                for chunk in chunks:
                    assert await aio.write(fd, chunk, 0) == len(chunk)
                return await reading
            finally:
                transport.close()

    received = run(main, loop_kind, deadline_s=30)
    assert received == b"".join(chunks)
