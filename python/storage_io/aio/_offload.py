"""Calls that may sleep (close a ring, deregister a file, open a log, fsync a directory) run
on a thread of their own, never on the event loop's, and never on the loop's default
executor: that one is shared with the application (which may fill it), and `asyncio.run`
shuts it down, waiting for whatever runs there.

A thread per call: these calls are rare, and a call that waits for the disk must not hold
up another that would not. The threads are not daemons, so an interpreter that exits while
one runs (a ring closing, its writes draining) lets it finish.

When nobody takes the result any more (the awaiting task was cancelled, or the loop is
gone), `abandoned` gets it instead, so that what the call opened is closed rather than
leaked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["run_off_loop"]


def run_off_loop(
    loop: asyncio.AbstractEventLoop,
    call: Callable[[], T],
    name: str,
    abandoned: Callable[[T], object] | None = None,
) -> asyncio.Future[T]:
    """Run `call()` on a new thread; the returned future (of `loop`) gets its outcome."""
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.cancelled():
            if ok and abandoned is not None:
                threading.Thread(target=abandoned, args=(value,), name=name).start()
        elif ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            value: Any = call()
            ok = True
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            value, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop is closed: nobody will take the result
            if ok and abandoned is not None:
                abandoned(value)

    threading.Thread(target=work, name=name).start()
    return future
