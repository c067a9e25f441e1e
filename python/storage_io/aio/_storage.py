"""`AsyncStorageIo`: a `StorageIo` whose operations coroutines await."""

from __future__ import annotations

import asyncio
from asyncio import get_running_loop
from typing import TYPE_CHECKING, Any, Union

from .._native import BadFdError, ClosedError, IoFd
from ..selection import open_storage_io
from ._arguments import checked_length, checked_offset, owned_bytes
from ._operation import Operation
from ._ring import RingDriver
from ._thread import ThreadDriver

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Buffer, Self

    from ..interface import HasFileno, StorageIo

__all__ = ["AsyncStorageIo"]

_Driver = Union[RingDriver, ThreadDriver]


class AsyncStorageIo:
    """Writes, appends, datasyncs and reads that coroutines await.

    Wraps a `StorageIo`: by default a new one from `open_storage_io()`, which this object
    owns and closes in `aclose()`; an `io` you pass stays yours, open after `aclose()`. The
    object binds to the running event loop at its first awaited operation.

    On io_uring, completions wake the loop through an eventfd registered with the ring and
    no thread is involved; elsewhere the I/O runs on one worker thread. The results are the
    same either way. This object drives the io's completions: while it is in use, no other
    code may poll or wait on that `StorageIo`.

    Each operation starts at the call: the bytes are copied, the arguments checked (a
    mistake raises `TypeError`, `ValueError`, `BadFdError` or `ClosedError` there) and the
    operation submitted before the call returns; awaiting gives its result, and a failure of
    the I/O itself raises `OSError` with the errno. Cancelling the task that awaits it stops
    the waiting, never the I/O: the file ends up as if nothing had been cancelled.
    """

    __slots__ = ("_io", "_owns_io", "_driver", "_closed")

    def __init__(self, io: StorageIo | None = None) -> None:
        self._owns_io = io is None
        self._io: Any = open_storage_io() if io is None else io
        self._driver: _Driver | None = None
        self._closed = False

    # -- identity ---------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The wrapped io's backend: ``"uring-sqpoll"``, ``"uring"`` or ``"sync"``."""
        return self._io.backend  # type: ignore[no-any-return]

    @property
    def io(self) -> StorageIo:
        """The wrapped `StorageIo` (do not poll or wait on it while this object uses it)."""
        return self._io  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("bound" if self._driver else "unbound")
        return f"<AsyncStorageIo {self.backend} {state}>"

    # -- binding to the loop ----------------------------------------------------------

    def _bound(self) -> _Driver:
        """The driver for the running loop, made at first use."""
        loop = get_running_loop()
        driver = self._driver
        if driver is not None and driver.loop is loop and not self._closed:
            return driver
        return self._bind(loop)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> _Driver:
        if self._closed:
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
            raise ClosedError("the StorageIo under this AsyncStorageIo is closed")
        if hasattr(self._io, "register_eventfd"):
            driver = RingDriver(self._io, loop)
        else:
            driver = ThreadDriver(self._io, loop)
        self._driver = driver
        return driver

    # -- files ------------------------------------------------------------------------

    def register_fd(self, file: int | HasFileno) -> IoFd:
        """As `StorageIo.register_fd` (it needs no event loop)."""
        if self._closed:
            raise ClosedError("this AsyncStorageIo is closed")
        fd: IoFd = self._io.register_fd(file)
        return fd

    def deregister_fd(self, fd: IoFd) -> Operation[None]:
        """Wait for that file's operations in flight, then close the io's descriptor; the
        handle is dead afterwards. Awaitable; the loop does not wait meanwhile."""
        driver = self._bound()
        if isinstance(driver, RingDriver):
            io = self._io
            return Operation(driver.blocking(lambda: io.deregister_fd(fd)))
        self._check_fd(fd)
        return Operation(driver.deregister(fd))

    def _check_fd(self, fd: object) -> None:
        """At the call, on the worker-thread path (the io itself judges a handle only on the
        worker): refuse what is not an IoFd, and a closed io. An IoFd this object did not
        register (registered on the io directly, or stale) is left to the io."""
        if not isinstance(fd, IoFd):
            raise BadFdError(
                f"{fd!r} is not a registered IoFd of this instance: pass the handle "
                "register_fd() returned, before deregister_fd()"
            )
        if self._io.closed:
            raise ClosedError("the StorageIo under this AsyncStorageIo is closed")

    # -- operations -------------------------------------------------------------------

    def write(self, fd: IoFd, data: Buffer, offset: int) -> Operation[int]:
        """Write `data` at `offset`; awaited, the number of bytes written (all of them)."""
        driver = self._driver
        if type(driver) is RingDriver and driver.loop is get_running_loop() and not self._closed:
            return Operation(driver.write(fd, data, offset))
        driver = self._bound()
        if isinstance(driver, RingDriver):
            return Operation(driver.write(fd, data, offset))
        self._check_fd(fd)
        return Operation(driver.write(fd, owned_bytes(data), checked_offset(offset)))

    def append(self, fd: IoFd, data: Buffer) -> Operation[int]:
        """Write `data` at the file's append position (appends land in call order);
        awaited, the number of bytes written."""
        driver = self._driver
        if type(driver) is RingDriver and driver.loop is get_running_loop() and not self._closed:
            return Operation(driver.append(fd, data))
        driver = self._bound()
        if isinstance(driver, RingDriver):
            return Operation(driver.append(fd, data))
        self._check_fd(fd)
        return Operation(driver.append(fd, owned_bytes(data)))

    def datasync(self, fd: IoFd) -> Operation[None]:
        """fdatasync the file; once awaited, every write to it that completed or was called
        before this call is durable."""
        driver = self._bound()
        if isinstance(driver, ThreadDriver):
            self._check_fd(fd)
        return Operation(driver.datasync(fd))

    def read(self, fd: IoFd, length: int, offset: int) -> Operation[bytes]:
        """Read up to `length` bytes at `offset`; fewer only at the end of the file."""
        driver = self._bound()
        if isinstance(driver, ThreadDriver):
            self._check_fd(fd)
            return Operation(driver.read(fd, checked_length(length), checked_offset(offset)))
        return Operation(driver.read(fd, length, offset))

    # -- lifetime ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Wait for every operation called so far, stop driving the io, and close it if this
        object opened it. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        driver, self._driver = self._driver, None
        if isinstance(driver, RingDriver):
            await asyncio.shield(driver.idle())
            driver.detach()
            if self._owns_io:
                # close() waits for background flushes: not on the loop.
                await asyncio.get_running_loop().run_in_executor(None, self._io.close)
        elif isinstance(driver, ThreadDriver):
            await asyncio.shield(driver.stop())
            if self._owns_io:
                await asyncio.get_running_loop().run_in_executor(None, self._io.close)
        elif self._owns_io:
            self._io.close()  # never used in a loop: nothing in flight

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
