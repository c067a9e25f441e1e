"""Files by path, as `aiofile.async_open`, `anyio.open_file` and `aiofiles.open` offer them:
``async with aio.open(path, "a") as f: await f.append(record)``.

The file is opened (``os.open``, which may wait for the disk) on a thread of its own,
registered with the io, and its operations go through the `AsyncStorageIo` like any other.
The object keeps its own descriptor for ``fsync``; `aclose` waits for the file's operations
and lets go of both.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from .._native import ClosedError
from ._offload import run_off_loop

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from typing_extensions import Buffer

    from .._native import IoFd
    from ._operation import Operation
    from ._storage import AsyncStorageIo

__all__ = ["AsyncFile", "Opening"]

_FLAGS = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT,
    "a+": os.O_RDWR | os.O_CREAT,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "x+": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


def _flags(mode: object) -> int:
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, not {type(mode).__name__}")
    plain = mode.replace("b", "")
    if mode.count("b") > 1 or plain not in _FLAGS:
        raise ValueError(
            f"invalid mode {mode!r}: use r, w, a or x, with + to read and write "
            "(binary always; a b is allowed)"
        )
    return _FLAGS[plain] | getattr(os, "O_CLOEXEC", 0)


class AsyncFile:
    """An open file whose operations coroutines await; ``await f.aclose()`` or
    ``async with``. `append` writes at the end of the file (in call order, whatever the
    mode), `write` at an offset; `read`, `datasync` and `fsync` as on `AsyncStorageIo`."""

    __slots__ = ("_aio", "fd", "path", "_descriptor")

    def __init__(self, aio: AsyncStorageIo, fd: IoFd, path: str, descriptor: int) -> None:
        self._aio = aio
        self.fd = fd
        self.path = path
        self._descriptor: int | None = descriptor

    def _handle(self) -> IoFd:
        if self._descriptor is None:
            raise ClosedError(f"the file {self.path!r} is closed")
        return self.fd

    def append(self, data: Buffer) -> Operation[int]:
        return self._aio.append(self._handle(), data)

    def appendv(self, buffers: Iterable[Buffer]) -> Operation[int]:
        return self._aio.appendv(self._handle(), buffers)

    def write(self, data: Buffer, offset: int) -> Operation[int]:
        return self._aio.write(self._handle(), data, offset)

    def read(self, length: int, offset: int = 0) -> Operation[bytes]:
        return self._aio.read(self._handle(), length, offset)

    def datasync(self) -> Operation[None]:
        return self._aio.datasync(self._handle())

    async def fsync(self) -> None:
        """As `datasync`, then an ``fsync`` of the file (its times too), off the loop."""
        await self.datasync()
        descriptor = self._descriptor
        if descriptor is not None:
            loop = self._aio._bound().loop
            await run_off_loop(loop, lambda: os.fsync(descriptor), "storage_io-fsync")

    @property
    def closed(self) -> bool:
        return self._descriptor is None

    async def aclose(self) -> None:
        """Wait for this file's operations, then close it. A second call does nothing."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        try:
            await self._aio.deregister_fd(self.fd)
        finally:
            os.close(descriptor)

    async def __aenter__(self) -> AsyncFile:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncFile {self.path!r}{' closed' if self.closed else ''}>"


class Opening:
    """What `AsyncStorageIo.open` returns: await it for the `AsyncFile`, or use it with
    ``async with`` (the file is closed at the end)."""

    __slots__ = ("_aio", "_path", "_flags", "_file")

    def __init__(self, aio: AsyncStorageIo, path: str | os.PathLike[str], mode: str) -> None:
        self._aio = aio
        self._path = os.fspath(path)
        self._flags = _flags(mode)
        self._file: AsyncFile | None = None

    async def _open(self) -> AsyncFile:
        aio, path, flags = self._aio, self._path, self._flags

        def opened() -> AsyncFile:
            descriptor = os.open(path, flags, 0o666)
            try:
                fd = aio.io.register_fd(descriptor)
            except BaseException:
                os.close(descriptor)
                raise
            return AsyncFile(aio, fd, str(path), descriptor)

        loop = aio._bound().loop
        return await run_off_loop(loop, opened, "storage_io-open-file", _close_abandoned)

    def __await__(self) -> Generator[Any, None, AsyncFile]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncFile:
        self._file = await self._open()
        return self._file

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._file is not None:
            await self._file.aclose()


def _close_abandoned(file: AsyncFile) -> None:
    """A file opened for a caller that stopped waiting: let go of it."""
    descriptor, file._descriptor = file._descriptor, None
    try:
        file._aio.io.deregister_fd(file.fd)
    except Exception:
        pass
    if descriptor is not None:
        os.close(descriptor)
