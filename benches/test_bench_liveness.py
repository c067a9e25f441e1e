"""How soon calls return where the correctness suite checks only that they return.

tests/ proves the behaviour without a clock: a call returns while another thread sleeps on an
operation that cannot finish (tests/test_shared_instances.py, tests/test_gil.py), a wait
with nothing to wait for returns (tests/test_completions.py), a timeout=0 probe does not
wait (tests/test_wait_for.py). The figures live here, per backend:

- each call on an instance while another thread sleeps in wait_for() on a read of an empty
  pipe (``extra_info["per_call_ns"]``, the median round over CALLS calls);
- wait() with an operation that cannot finish and a timeout of TIMEOUT_S: how long past its
  timeout it returns (``extra_info["past_timeout_ms"]``, median round);
- wait_for(timeout=0) on that operation, the probe that raises TimeoutError at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CALLS = 50  # calls per timed round
ROUNDS = 100
TIMEOUT_S = 0.05
TIMEOUT_ROUNDS = 10


class Sleeper:
    """A thread asleep in `io.wait_for` on a read of an empty pipe, until `release()`."""

    def __init__(self, io: Any) -> None:
        self.io = io
        self.read_end, self.write_end = os.pipe()
        self.token = io.submit_read(io.register_fd(self.read_end), 1, 0)
        io.flush()
        self.box: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._sleep, daemon=True)
        self.thread.start()

    def _sleep(self) -> None:
        try:
            self.box["got"] = self.io.wait_for([self.token], timeout=60.0)
        except BaseException as exc:  # reported by release()
            self.box["error"] = exc

    def release(self) -> None:
        """Let the read finish; check that the sleeper slept until now and got it."""
        assert self.thread.is_alive() and not self.box, f"the sleeper woke early: {self.box}"
        os.write(self.write_end, b"!")
        self.thread.join(60.0)
        os.close(self.read_end)
        os.close(self.write_end)
        assert "error" not in self.box, self.box["error"]
        assert [(c.token, c.data) for c in self.box["got"]] == [(self.token, b"!")]


@pytest.fixture
def sleeper(backend: tuple[str, Any]) -> Iterator[Sleeper]:
    _, io = backend
    asleep = Sleeper(io)
    yield asleep
    asleep.release()


def _calls(io: Any, handle: Any) -> dict[str, Callable[[], Any]]:
    return {
        "submit_append": lambda: io.submit_append(handle, b"a" * 100),
        "submit_write": lambda: io.submit_write(handle, b"w" * 100, 0),
        "flush": io.flush,
        "poll_completions": io.poll_completions,
        "pending_count": io.pending_count,
        "closed": lambda: io.closed,
    }


def _register(io: Any, directory: Path) -> Any:
    fd = os.open(directory / "liveness.dat", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        return io.register_fd(fd)
    finally:
        os.close(fd)


CALL_NAMES = [
    "submit_append",
    "submit_write",
    "flush",
    "poll_completions",
    "pending_count",
    "closed",
]


@pytest.mark.parametrize("call", CALL_NAMES)
def test_a_call_while_another_thread_sleeps(
    benchmark: Any, backend: tuple[str, Any], sleeper: Sleeper, bench_dir: Path, call: str
) -> None:
    _, io = backend
    handle = _register(io, bench_dir)
    target = _calls(io, handle)[call]
    loop = range(CALLS)

    def calls() -> None:
        for _ in loop:
            target()

    benchmark.group = f"{call} while another thread sleeps in wait_for"
    benchmark.pedantic(calls, rounds=ROUNDS)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["per_call_ns"] = round(stats.stats.median / CALLS * 1e9, 1)
    # Everything but the sleeper's read completes; collect it so that release() finds the
    # instance with nothing else outstanding.
    while io.pending_count() > 1:
        io.poll_completions()


class UnfinishedRead:
    """A read of an empty pipe, submitted to `io`: it completes only at `finish()`."""

    def __init__(self, io: Any) -> None:
        self.io = io
        self.read_end, self.write_end = os.pipe()
        self.token = io.submit_read(io.register_fd(self.read_end), 1, 0)
        io.flush()

    def finish(self) -> None:
        os.write(self.write_end, b"!")
        done = self.io.wait_for([self.token], timeout=60.0)
        os.close(self.read_end)
        os.close(self.write_end)
        assert [c.data for c in done] == [b"!"]


def test_wait_returns_at_its_timeout(benchmark: Any, backend: tuple[str, Any]) -> None:
    _, io = backend
    unfinished = UnfinishedRead(io)

    def wait() -> None:
        assert io.wait(min_complete=1, timeout=TIMEOUT_S) == []

    benchmark.group = f"wait(timeout={TIMEOUT_S}) with nothing that can complete"
    benchmark.pedantic(wait, rounds=TIMEOUT_ROUNDS)
    unfinished.finish()
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["past_timeout_ms"] = round((stats.stats.median - TIMEOUT_S) * 1e3, 3)


def test_wait_for_timeout_zero_probe(benchmark: Any, backend: tuple[str, Any]) -> None:
    _, io = backend
    unfinished = UnfinishedRead(io)

    def probe() -> None:
        with pytest.raises(TimeoutError):
            io.wait_for([unfinished.token], timeout=0)

    benchmark.group = "wait_for(timeout=0) on an unfinished read"
    benchmark.pedantic(probe, rounds=ROUNDS)
    unfinished.finish()
