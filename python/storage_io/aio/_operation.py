"""`Operation`: what `AsyncStorageIo.write` and friends return.

The I/O starts at the call, not at the first ``await``: the bytes are copied, the arguments
checked and the operation submitted before the call returns, so a mistake raises at the
call, and ``asyncio.create_task(aio.append(fd, record))`` puts the record in the file in the
order of the calls whatever order the tasks start in. A coroutine function could do neither
(its body runs only when first awaited or stepped). The object is still a coroutine in the
`collections.abc.Coroutine` sense, so ``await``, ``create_task``, ``gather``, ``TaskGroup``,
``wait_for`` and ``shield`` all take it.

Rejected: returning the `asyncio.Future` itself (``create_task`` refuses anything but a
coroutine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Operation"]


class Operation(Coroutine[Any, Any, T], Generic[T]):
    """An operation already submitted; await it for its result.

    Cancelling whoever awaits it stops the waiting, never the I/O: the operation completes
    in the background and its outcome is dropped.
    """

    __slots__ = ("_future", "_steps")

    def __init__(self, future: asyncio.Future[T]) -> None:
        self._future = future
        self._steps: Generator[Any, None, T] | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._future.__await__()

    def _started(self) -> Generator[Any, None, T]:
        if self._steps is None:
            self._steps = self._future.__await__()
        return self._steps

    # The coroutine protocol, for a Task that runs this object as its coroutine.

    def send(self, value: None) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if self._steps is None:
            # Cancelled (or thrown into) before its first step: nobody will read the
            # outcome, so let it go quietly.
            self._future.cancel()
        if val is None and tb is None:
            return self._started().throw(typ)
        return self._started().throw(typ, val, tb)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._steps is None:
            self._future.cancel()
        else:
            self._steps.close()

    def __repr__(self) -> str:
        return f"<storage_io.aio.Operation {self._future!r}>"
