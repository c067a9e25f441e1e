"""Helpers shared by the contract suite: collecting completions and checking them.

Every helper fails the test (rather than hanging) when a completion never arrives.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from storage_io import BufferExhaustedError, ClosedError, QueueFullError

# Generous: a lost completion must fail the test, not hang the suite.
DRAIN_DEADLINE_S = 30.0


# Set where io_uring is known to work (CI on our machines): a uring case that would skip
# fails instead, so a broken ring set-up cannot pass as "skipped".
REQUIRE_URING = os.environ.get("STORAGE_IO_REQUIRE_URING") == "1"


def skip_or_fail(reason: str) -> None:
    if REQUIRE_URING:
        pytest.fail(f"STORAGE_IO_REQUIRE_URING=1 but {reason}")
    pytest.skip(reason)


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, position-dependent bytes, so a misplaced chunk is visible."""
    if size == 0:
        return b""
    block = bytes((i * 31 + seed * 17 + (i >> 8)) & 0xFF for i in range(4099))
    reps = size // len(block) + 1
    return (block * reps)[:size]


def register_path(io: Any, path: Path, flags: int = os.O_WRONLY | os.O_CREAT) -> Any:
    """Open `path`, register it and close the caller's descriptor at once (the backend keeps
    its own duplicate: docs/contract.md, "Methods", `register_fd`)."""
    fd = os.open(path, flags, 0o644)
    try:
        return io.register_fd(fd)
    finally:
        os.close(fd)


def submit_with_retry(
    io: Any, received: list, method: Callable[..., int], *args: Any, attempts: int = 10_000
) -> int:
    """Submit; on back-pressure (guarantee 7) wait for a completion and retry, as a caller
    would. Safe for threads sharing `io`: what a refusal must leave unchanged is checked
    single-threaded by tests/test_backpressure.py.

    Completions reaped while waiting are appended to `received` in delivery order.
    """
    for _ in range(attempts):
        try:
            return method(*args)
        except (QueueFullError, BufferExhaustedError):
            received.extend(io.wait(min_complete=1, timeout=5.0))
    pytest.fail(f"submission refused {attempts} times")


def drain(io: Any, received: list | None = None, deadline_s: float = DRAIN_DEADLINE_S) -> list:
    """Wait until `pending_count()` is 0; return every completion in delivery order
    (`received` first)."""
    out = list(received or [])
    deadline = time.monotonic() + deadline_s
    while io.pending_count() > 0:
        if time.monotonic() > deadline:
            pytest.fail(f"completions lost: pending_count() stays at {io.pending_count()}")
        out.extend(io.wait(min_complete=1, timeout=1.0))
    out.extend(io.poll_completions())
    return out


def assert_exactly_once(completions: Iterable, tokens: Iterable[int]) -> dict:
    """Each submitted token completed exactly once and nothing else completed."""
    completions = list(completions)
    tokens = list(tokens)
    assert len(set(tokens)) == len(tokens), "a token was returned twice by submit_*"
    got = Counter(c.token for c in completions)
    dupes = {t: n for t, n in got.items() if n > 1}
    assert not dupes, f"tokens completed more than once: {sorted(dupes)[:10]}"
    unknown = set(got) - set(tokens)
    assert not unknown, f"completions for tokens never submitted: {sorted(unknown)[:10]}"
    missing = set(tokens) - set(got)
    assert not missing, f"{len(missing)} tokens never completed, e.g. {sorted(missing)[:10]}"
    return {c.token: c for c in completions}


def assert_all_ok(completions: Iterable) -> None:
    bad = [(c.token, c.result) for c in completions if not c.ok]
    assert not bad, f"operations failed: {bad[:10]}"


# -- reliability suite (docs/reliability.md) ---------------------------------------------

# STORAGE_IO_STRESS=1 runs the stronger versions of the reliability tests (more operations,
# cycles and examples); the default run keeps them small enough for CI.
STRESS = os.environ.get("STORAGE_IO_STRESS") == "1"


def calls_not_refused_as_closed(calls: Iterable[Callable[[], Any]]) -> int:
    """How many of `calls` do not raise ClosedError (return, or raise anything else): in a
    forked child, every call on an inherited io_uring instance must raise it."""
    failures = 0
    for call in calls:
        try:
            call()
        except ClosedError:
            continue
        except BaseException:
            pass
        failures += 1
    return failures


def scaled(default: int, stress: int) -> int:
    """`stress` under STORAGE_IO_STRESS=1, else `default`."""
    return stress if STRESS else default


class Hang(AssertionError):
    """A call did not return within its time limit."""


def call_with_timeout(fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Run `fn()` on a helper thread and return its result or raise what it raised (any
    BaseException, pyo3's PanicException included). A call still running after `timeout_s`
    raises `Hang`; the stuck thread is a daemon and is left behind."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller as is
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise Hang(f"call did not return within {timeout_s} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# Records written by several threads into one file: thread id, sequence number, payload
# length, a payload made of one byte that names the thread, and an end mark. A file of them
# parses exactly, or the parse names the first torn or interleaved record.
THREAD_RECORD_HEADER = b"<%02d %08d %05d "
THREAD_RECORD_HEADER_LEN = len(THREAD_RECORD_HEADER % (0, 0, 0))


def thread_record(tid: int, seq: int, length: int) -> bytes:
    return THREAD_RECORD_HEADER % (tid, seq, length) + bytes([65 + tid]) * length + b">\n"


def parse_thread_records(data: bytes) -> list[tuple[int, int]]:
    """(thread id, sequence number) of every record, in file order."""
    out = []
    pos = 0
    head_len = THREAD_RECORD_HEADER_LEN
    while pos < len(data):
        head = data[pos : pos + head_len]
        assert head[:1] == b"<" and head[-1:] == b" ", f"bad header at {pos}: {head!r}"
        tid, seq, length = (int(x) for x in head[1:-1].split(b" "))
        body = data[pos + head_len : pos + head_len + length]
        tail = data[pos + head_len + length : pos + head_len + length + 2]
        assert body == bytes([65 + tid]) * length, f"torn payload at {pos}"
        assert tail == b">\n", f"torn record end at {pos}"
        out.append((tid, seq))
        pos += head_len + length + 2
    return out


# -- second round (API.md "Second round") -------------------------------------------------

# Long enough for any liveness check on a loaded machine; a hang fails the test instead of
# blocking the suite.
LIVENESS_TIMEOUT_S = 20.0


def wait_for_all(io: Any, tokens: list[int], timeout: float = DRAIN_DEADLINE_S) -> list:
    """`io.wait_for(tokens)` with a deadline: a lost completion fails instead of hanging."""
    try:
        return io.wait_for(tokens, timeout=timeout)
    except TimeoutError as exc:
        pytest.fail(f"completions never arrived: {exc}")


def register_pipe(io: Any) -> tuple[Any, Any, int, int]:
    """A pipe registered at both ends: (read handle, write handle, the caller's read end,
    the caller's write end). The caller closes its ends (`close_quietly`)."""
    r, w = os.pipe()
    return io.register_fd(r), io.register_fd(w), r, w


def close_quietly(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def read_exactly(fd: int, size: int, timeout: float = LIVENESS_TIMEOUT_S) -> bytes:
    """Read `size` bytes from a (blocking) pipe end, failing the test at end of stream or
    after `timeout` seconds."""
    import select

    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"only {len(out)} of {size} bytes arrived within {timeout} s")
        chunk = os.read(fd, min(size - len(out), 1 << 20))
        if not chunk:
            pytest.fail(f"end of stream after {len(out)} of {size} bytes")
        out += chunk
    return bytes(out)


# A backend built in a child process the way conftest.build_backend builds it in the test
# process (the test builds one there first, so that an unavailable backend skips there).
CHILD_PRELUDE = r"""
import gc, json, os, sys, threading, time
from storage_io import (
    BufferExhaustedError, IoUringConfig, QueueFullError, RingMode, SyncStorageIo,
    UringStorageIo,
)

KIND = sys.argv[1]

def make_io(**config):
    if KIND == "sync":
        return SyncStorageIo()
    mode = RingMode.SQPOLL if KIND == "uring-sqpoll" else RingMode.STANDARD
    return UringStorageIo(config=IoUringConfig(mode=mode, **config))
"""


def run_child(kind: str, body: str, timeout: float = 60.0, *args: str) -> str:
    """Run `CHILD_PRELUDE + body` in a fresh interpreter for backend `kind` (extra `args`
    follow it in sys.argv); return its stdout. A hang (the process outlives `timeout`) or
    a non-zero exit fails the test with what the child printed."""
    import subprocess
    import sys

    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_PRELUDE + body, kind, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        hung = f"child process hung (killed after {timeout} s); it printed: {exc.stdout!r}"
    else:
        if proc.returncode != 0:
            pytest.fail(f"child exited with {proc.returncode}: {proc.stdout}\n{proc.stderr}")
        return proc.stdout
    pytest.fail(hung)
