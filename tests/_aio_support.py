"""Helpers for the storage_io.aio tests: running a coroutine on each event loop, and records
whose wholeness can be checked (how late the loop runs is the benches' to measure).

Decorate a test taking `loop_kind` with `on_each_loop` to run it on the default asyncio
loop and on uvloop (which the `test` extra installs).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

uvloop: Any
try:
    import uvloop
except ImportError:  # pragma: no cover - the test extra installs it
    uvloop = None

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")

# Generous: a lost wake-up must fail the test, not hang the suite.
DEADLINE_S = 60.0


# Runs a test on the default asyncio loop and on uvloop (where uvloop is installed).
on_each_loop = pytest.mark.parametrize("loop_kind", LOOPS)


def new_loop(loop_kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of `loop_kind` ("asyncio" or "uvloop")."""
    if loop_kind == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed (pip install -e '.[test]' installs it)")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def run(main: Callable[[], Awaitable[T]], loop_kind: str, deadline_s: float = DEADLINE_S) -> T:
    """Run `main()` on a new loop of `loop_kind`; a run that outlasts `deadline_s` fails."""

    async def bounded() -> T:
        # Not wait_for: cancelling a hung run could hang too (its cleanup awaits the I/O).
        task = asyncio.ensure_future(main())
        done, _ = await asyncio.wait({task}, timeout=deadline_s)
        if not done:
            pytest.fail(f"did not finish within {deadline_s} s: a lost wake-up or a hang")
        return task.result()

    loop = new_loop(loop_kind)
    try:
        return loop.run_until_complete(bounded())
    finally:
        loop.close()


def open_path(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    return os.open(path, flags, 0o644)


def register(aio: Any, path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> Any:
    """Register `path` and close our descriptor at once (the io keeps its own)."""
    fd = open_path(path, flags)
    try:
        return aio.register_fd(fd)
    finally:
        os.close(fd)


def record(task: int, seq: int, size: int = 100) -> bytes:
    """A record naming its task and sequence number, `size` bytes long, ending in a newline;
    its body is one byte repeated, so a torn or interleaved record shows."""
    head = b"%03d:%07d:" % (task, seq)
    return head + bytes([65 + task % 26]) * (size - len(head) - 1) + b"\n"


def parse_records(data: bytes, size: int = 100) -> list[tuple[int, int]]:
    """(task, seq) of each record of `data`, checking every record is whole."""
    assert len(data) % size == 0, f"file length {len(data)} is not a multiple of {size}"
    out = []
    for at in range(0, len(data), size):
        chunk = data[at : at + size]
        task, seq = int(chunk[:3]), int(chunk[4:11])
        assert chunk == record(task, seq, size), f"torn or mixed record at offset {at}"
        out.append((task, seq))
    return out
