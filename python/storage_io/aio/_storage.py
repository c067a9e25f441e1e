"""`AsyncStorageIo`: a `StorageIo` whose operations coroutines await."""

from __future__ import annotations

import asyncio
import os
import warnings
import weakref
from asyncio import Future, get_running_loop
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, overload

from .._native import ClosedError, IoFd
from ..selection import open_storage_io
from ._driver import READ, SYNC, WRITE, Account, LoopDriver, running_loop
from ._files import Opening
from ._offload import run_off_loop
from ._operation import Operation

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType
    from typing import Self

    from typing_extensions import Buffer

    from ..interface import HasFileno, StorageIo

__all__ = ["AsyncStorageIo"]


class _ClassOrInstance:
    """`open` means two things, as asyncio users expect both: on the class, ``await
    AsyncStorageIo.open(io=None)`` makes one (its io set up off the loop); on an instance,
    ``aio.open(path, mode)`` opens a file."""

    def __init__(self, on_class: Any, on_instance: Any) -> None:
        self._on_class = on_class
        self._on_instance = on_instance

    @overload
    def __get__(self, instance: None, owner: type) -> Callable[..., Awaitable[AsyncStorageIo]]: ...
    @overload
    def __get__(self, instance: AsyncStorageIo, owner: type) -> Callable[..., Opening]: ...
    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return self._on_class.__get__(None, owner)
        return self._on_instance.__get__(instance, owner)


_OPEN, _CLOSING, _CLOSED = range(3)


class AsyncStorageIo:
    """Writes, appends, datasyncs and reads that coroutines await.

    Wraps a `StorageIo`: by default a new one from `open_storage_io()` (``await
    AsyncStorageIo.open()`` sets it up off the loop), which this object owns and closes in
    `aclose()`; an `io` you pass stays yours, open after `aclose()`. It binds to the running
    event loop at its first operation. Any number of `AsyncStorageIo` and `AsyncWal`
    objects may share one io on one loop.

    Each operation starts at the call: the arguments are checked (a mistake raises
    `TypeError`, `ValueError`, `BadFdError` or `ClosedError` there), the bytes copied and the
    operation handed to the io, in call order, before the call returns; from then on it
    happens whatever becomes of the caller, its task or its event loop (at the latest when
    the io is closed). Awaiting gives its result; a failure of the I/O raises `OSError`
    with the errno. Cancelling the awaiting task stops the waiting, never the I/O.
    """

    __slots__ = (
        "_io",
        "_owns_io",
        "_driver",
        "_account",
        "_state",
        "_closer",
        "_pid",
        "_syncable",
        "__weakref__",
    )

    def __init__(self, io: StorageIo | None = None) -> None:
        self._owns_io = io is None
        self._io: Any = open_storage_io() if io is None else io
        if not getattr(self._io, "supports_nowait", False):
            raise TypeError(
                f"storage_io.aio needs a StorageIo with supports_nowait (submissions that "
                f"never wait), which {type(self._io).__name__} does not offer"
            )
        self._driver: LoopDriver | None = None
        self._account = Account()
        self._state = _OPEN
        self._closer: weakref.ref[asyncio.Task[None]] | None = None
        self._pid = os.getpid()
        # Our own descriptor of each file registered here, for fsync() (metadata too).
        self._syncable: dict[IoFd, int] = {}

    @classmethod
    async def _open_io(cls, io: StorageIo | None = None) -> AsyncStorageIo:
        """``await AsyncStorageIo.open(io=None)``: as the constructor, with the io (ring
        set-up, buffer registration) made on a thread of its own rather than on the loop."""
        loop = running_loop()
        if io is not None:
            return cls(io)
        made = await run_off_loop(loop, open_storage_io, "storage_io-open", _close_quietly)
        try:
            self = cls(made)
        except BaseException:
            made.close()
            raise
        self._owns_io = True
        return self

    # -- identity ---------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The wrapped io's backend: ``"uring-sqpoll"``, ``"uring"`` or ``"sync"``."""
        return self._io.backend  # type: ignore[no-any-return]

    @property
    def io(self) -> StorageIo:
        """The wrapped `StorageIo`."""
        return self._io  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return self._state != _OPEN

    def __repr__(self) -> str:
        state = ("open", "closing", "closed")[self._state]
        return f"<AsyncStorageIo {self.backend} {state}>"

    # -- binding to the loop ----------------------------------------------------------

    def _bound(self) -> LoopDriver:
        """The driver for the running loop, attached at first use."""
        loop = running_loop()
        if os.getpid() != self._pid:
            raise ClosedError(
                "this AsyncStorageIo was inherited across fork(); it belongs to the parent "
                "process: make a new one (with a new StorageIo) in the child"
            )
        if self._state != _OPEN:
            raise ClosedError("this AsyncStorageIo is closed")
        driver = self._driver
        if driver is not None:
            if driver.loop is not loop:
                raise RuntimeError(
                    "this AsyncStorageIo is bound to another event loop (the one it was "
                    "first used in); make one per loop"
                )
            return driver
        if self._io.closed:
            self._io.take_nowait_completions()  # raises the io's own ClosedError (fork...)
            raise ClosedError("the StorageIo under this AsyncStorageIo is closed")
        self._driver = driver = LoopDriver.attach(self._io, loop)
        return driver

    def _track(self, token: int, kind: int) -> Operation[Any]:
        driver = self._driver
        assert driver is not None
        return Operation(driver.track(token, kind, self._account))

    # -- files ------------------------------------------------------------------------

    def register_fd(self, file: int | HasFileno) -> IoFd:
        """As `StorageIo.register_fd` (it needs no event loop)."""
        if self._state != _OPEN:
            raise ClosedError("this AsyncStorageIo is closed")
        fd: IoFd = self._io.register_fd(file)
        number = file if isinstance(file, int) else file.fileno()
        try:
            self._syncable[fd] = os.dup(number)
        except OSError:
            pass  # fsync() falls back to a datasync, which covers data and size
        return fd

    def deregister_fd(self, fd: IoFd) -> Operation[None]:
        """Wait for that file's operations (called before this) to finish, then close the
        io's descriptor; the handle is dead afterwards (`BadFdError` at the call). Runs on
        a thread of its own: the loop, and other files' operations, go on meanwhile."""
        driver = self._bound()
        io = self._io
        if not isinstance(fd, IoFd):
            io.deregister_fd(fd)  # raises what the io raises for it, at the call
        own = self._syncable.pop(fd, None)

        def deregister() -> None:
            try:
                io.deregister_fd(fd)
            finally:
                if own is not None:
                    os.close(own)

        return Operation(run_off_loop(driver.loop, deregister, "storage_io-deregister"))

    # -- operations -------------------------------------------------------------------

    # write and append spell out `_track`: they are the hot path, where a Python call costs
    # about as much as the bookkeeping.

    def write(self, fd: IoFd, data: Buffer, offset: int) -> Operation[int]:
        """Write `data` at `offset`; awaited, the number of bytes written (all of them)."""
        driver = self._driver
        if driver is None or driver.loop is not get_running_loop() or self._state:
            driver = self._bound()
        token = self._io.submit_write_nowait(fd, data, offset)
        loop = driver.loop
        future: Future[int] = loop.create_future()
        account = self._account
        driver.waiting[token] = (future, WRITE, account)
        account.tokens.add(token)
        if not driver.drain_scheduled:
            driver.drain_scheduled = True
            loop.call_soon(driver.drain)
        return Operation(future)

    def append(self, fd: IoFd, data: Buffer) -> Operation[int]:
        """Write `data` at the file's append position (appends land in call order);
        awaited, the number of bytes written."""
        driver = self._driver
        if driver is None or driver.loop is not get_running_loop() or self._state:
            driver = self._bound()
        token = self._io.submit_append_nowait(fd, data)
        loop = driver.loop
        future: Future[int] = loop.create_future()
        account = self._account
        driver.waiting[token] = (future, WRITE, account)
        account.tokens.add(token)
        if not driver.drain_scheduled:
            driver.drain_scheduled = True
            loop.call_soon(driver.drain)
        return Operation(future)

    def writev(self, fd: IoFd, buffers: Iterable[Buffer], offset: int) -> Operation[int]:
        """Write the buffers back to back at `offset`, as one write; awaited, the total."""
        self._bound()
        return self._track(self._io.submit_writev_nowait(fd, buffers, offset), WRITE)

    def appendv(self, fd: IoFd, buffers: Iterable[Buffer]) -> Operation[int]:
        """Append the buffers back to back, as one append; awaited, the total length."""
        self._bound()
        return self._track(self._io.submit_appendv_nowait(fd, buffers), WRITE)

    def datasync(self, fd: IoFd) -> Operation[None]:
        """fdatasync the file; once awaited, every write to it called before this call
        (or completed before it) is durable, with the file's size."""
        self._bound()
        return self._track(self._io.submit_datasync_nowait(fd), SYNC)

    async def fsync(self, fd: IoFd) -> None:
        """As `datasync`, and then the file's other metadata (its times) too: an
        ``fsync`` of the file, on a thread of its own."""
        await self.datasync(fd)
        own = self._syncable.get(fd)
        if own is not None:
            await run_off_loop(get_running_loop(), lambda: os.fsync(own), "storage_io-fsync")

    async def fsync_directory(self, path: str | os.PathLike[str]) -> None:
        """fsync a directory (on a thread of its own), so that the files created in it,
        renamed or deleted, stay so after a crash."""
        self._bound()
        await run_off_loop(get_running_loop(), lambda: _fsync_directory(path), "storage_io-fsync")

    def read(self, fd: IoFd, length: int, offset: int) -> Operation[bytes]:
        """Read up to `length` bytes at `offset`; fewer only at the end of the file. Sees
        every write to the file called before it."""
        self._bound()
        return self._track(self._io.submit_read_nowait(fd, length, offset), READ)

    def _open_file(self, path: str | os.PathLike[str], mode: str = "r") -> Opening:
        """``aio.open(path, mode)``: a file by path, ``async with aio.open(path, "a") as f:
        await f.append(b)`` (or ``f = await aio.open(path, mode)``, then ``await
        f.aclose()``). Modes as the built-in `open`, binary only: ``r``, ``w``, ``a``,
        ``x``, each with ``+``."""
        self._bound()
        return Opening(self, path, mode)

    open = _ClassOrInstance(_open_io, _open_file)

    # -- lifetime ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Wait for every operation called so far, stop driving the io, and close it if this
        object opened it. Cancelled or timed out, it leaves the rest to the next call:
        calling it again finishes the job. Once done, a call does nothing."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSING
        # Weak: the loop keeps a closing task alive while it runs; a finished one, cut short,
        # must not keep this object (the task's traceback holds its frames) from collection.
        closer = None if self._closer is None else self._closer()
        if closer is None or closer.done():
            closer = get_running_loop().create_task(self._close_steps())
            self._closer = weakref.ref(closer)
        await asyncio.shield(closer)

    async def _close_steps(self) -> None:
        # Each step may be cut short (the loop ends) and is safe to run again.
        driver = self._driver
        if driver is not None:
            if self._io.closed:
                driver.drain()  # fails what waits: the io cannot hand it back any more
            if driver.loop is get_running_loop():
                await self._account.idle(driver.loop)
            # Else the loop it ran in has ended, and the io went on to another: what it
            # started is the io's, which completes it whatever happens here.
            self._driver = None
            driver.detach()
        for own in list(self._syncable.values()):
            os.close(own)
        self._syncable.clear()
        if self._owns_io and not self._io.closed:
            # close() waits for background flushes: off the loop.
            await run_off_loop(get_running_loop(), self._io.close, "storage_io-close")
        self._state = _CLOSED

    async def __aenter__(self) -> Self:
        self._bound()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_state", _CLOSED) != _CLOSED and getattr(self, "_pid", 0) == os.getpid():
            warnings.warn(
                f"unclosed {self!r}: await aclose() (or use async with); its operations "
                "still complete, and an io it opened closes when it is collected",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )


def _fsync_directory(path: str | os.PathLike[str]) -> None:
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _close_quietly(io: Any) -> None:
    io.close()
