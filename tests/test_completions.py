"""The completion side: IoCompletion, flush, poll_completions, wait, pending_count."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

import pytest

from _support import (
    LIVENESS_TIMEOUT_S,
    assert_exactly_once,
    call_with_timeout,
    close_quietly,
    drain,
    register_path,
    wait_for_all,
)
from storage_io import IoCompletion


def test_completion_fields_for_write_and_datasync(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    write = io.submit_write(fd, b"12345", 0)
    sync = io.submit_datasync(fd)
    by_token = assert_exactly_once(drain(io), [write, sync])
    w, s = by_token[write], by_token[sync]
    assert isinstance(w, IoCompletion)
    assert (w.token, w.result, w.ok, w.error) == (write, 5, True, None)
    assert (s.token, s.result, s.ok, s.error) == (sync, 0, True, None)
    assert isinstance(w.token, int) and isinstance(w.result, int)


def test_iocompletion_value_type():
    ok = IoCompletion(7, 42)
    assert (ok.token, ok.result, ok.ok, ok.error) == (7, 42, True, None)
    bad = IoCompletion(8, -errno.ENOSPC)
    assert bad.ok is False
    assert isinstance(bad.error, OSError)
    assert bad.error.errno == errno.ENOSPC
    assert IoCompletion(7, 42) == IoCompletion(7, 42)
    assert IoCompletion(7, 42) != IoCompletion(7, 43)
    assert "7" in repr(ok)


def test_flush_returns_a_non_negative_int(io, tmp_path):
    assert io.flush() == 0  # nothing queued
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_append(fd, b"x" * 10) for _ in range(5)]
    n = io.flush()
    assert isinstance(n, int) and 0 <= n <= len(tokens)
    assert isinstance(io.flush(), int)
    assert_exactly_once(drain(io), tokens)


def test_poll_never_blocks_and_returns_a_list(io, tmp_path):
    assert io.poll_completions() == []
    r, w = os.pipe()
    try:
        stuck = io.submit_read(io.register_fd(r), 1, 0)
        io.flush()
        # The read cannot finish before the write below: a poll that waited for it would
        # hang, and call_with_timeout fails the test instead.
        assert call_with_timeout(io.poll_completions, LIVENESS_TIMEOUT_S) == []
        os.write(w, b"!")
        assert [(c.token, c.data) for c in wait_for_all(io, [stuck])] == [(stuck, b"!")]
    finally:
        close_quietly(r, w)
    fd = register_path(io, tmp_path / "f")
    token = io.submit_append(fd, b"abc")
    io.flush()
    got: list = []
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        got = io.poll_completions()
        assert isinstance(got, list)
    assert [c.token for c in got] == [token]
    assert io.poll_completions() == []


def test_pending_count_tracks_tokens_not_handed_back(io, tmp_path):
    assert io.pending_count() == 0
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_append(fd, b"x") for _ in range(10)]
    tokens.append(io.submit_datasync(fd))
    assert io.pending_count() == 11
    io.flush()
    assert io.pending_count() == 11, "flush does not hand completions back"
    first = io.wait(min_complete=1, timeout=10)
    assert 1 <= len(first)
    assert io.pending_count() == 11 - len(first)
    rest = drain(io)
    assert io.pending_count() == 0
    assert_exactly_once(first + rest, tokens)


def test_pending_count_includes_failed_operations(io, tmp_path):
    path = tmp_path / "ro"
    path.write_bytes(b"")
    ro = register_path(io, path, os.O_RDONLY)
    token = io.submit_write(ro, b"nope", 0)
    assert io.pending_count() == 1
    (c,) = drain(io)
    assert c.token == token and not c.ok
    assert io.pending_count() == 0


def test_wait_returns_at_least_min_complete(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_write(fd, b"y" * 100, i * 100) for i in range(8)]
    got = io.wait(min_complete=5, timeout=10)
    assert len(got) >= 5
    assert_exactly_once(drain(io, got), tokens)


def test_wait_with_nothing_pending_returns_at_once(io):
    # Nothing outstanding can wake them: a wait() that slept for its timeout (or for ever,
    # without one) would hang, and call_with_timeout fails the test instead.
    assert call_with_timeout(io.wait, LIVENESS_TIMEOUT_S) == []
    assert call_with_timeout(lambda: io.wait(min_complete=3), LIVENESS_TIMEOUT_S) == []
    assert call_with_timeout(lambda: io.wait(timeout=3600.0), LIVENESS_TIMEOUT_S) == []


def test_wait_min_complete_larger_than_pending_returns_all(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_append(fd, b"q" * 64) for _ in range(3)]
    result: list = []
    worker = threading.Thread(target=lambda: result.extend(io.wait(min_complete=100)), daemon=True)
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "wait(min_complete > pending) blocked forever"
    assert_exactly_once(result, tokens)
    assert io.pending_count() == 0


def test_wait_timeout_zero_returns(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    token = io.submit_append(fd, b"z")
    got = io.wait(min_complete=1, timeout=0)
    assert isinstance(got, list)
    assert_exactly_once(drain(io, got), [token])


# ---- io_uring only: an operation that stays in flight, using a full pipe ----


@pytest.fixture
def full_pipe():
    """A pipe whose buffer is full: a write to it stays in flight until the reader drains."""
    r, w = os.pipe()
    flags = fcntl.fcntl(w, fcntl.F_GETFL)
    fcntl.fcntl(w, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"\0" * 65536)
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, flags)  # blocking again, so io_uring waits instead of EAGAIN
    yield r, w
    for d in (r, w):
        try:
            os.close(d)
        except OSError:
            pass


def drain_pipe(r):
    flags = fcntl.fcntl(r, fcntl.F_GETFL)
    fcntl.fcntl(r, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            if not os.read(r, 1 << 20):
                break
    except BlockingIOError:
        pass
    fcntl.fcntl(r, fcntl.F_SETFL, flags)


# io_uring_enter's number, the same on every Linux architecture (the io_uring system calls
# came after the numbering was unified).
IO_URING_ENTER = 426


def in_io_uring_enter(thread: threading.Thread) -> bool:
    """Whether `thread` is inside the io_uring_enter system call right now."""
    with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
        return f.read().split()[0] == str(IO_URING_ENTER)


def test_wait_timeout_expires_with_operation_in_flight(uring_io, full_pipe):
    r, w = full_pipe
    fd = uring_io.register_fd(w)
    token = uring_io.submit_write(fd, b"x" * 10, 0)
    # The write cannot finish before the pipe is drained below: the wait returns only
    # because its timeout expired (how close to it: benches/test_bench_liveness.py).
    got = call_with_timeout(lambda: uring_io.wait(min_complete=1, timeout=0.3), LIVENESS_TIMEOUT_S)
    if got and got[0].result < 0:
        pytest.skip(f"pipe writes not supported here: {got[0].error}")
    assert got == []
    assert uring_io.pending_count() == 1
    drain_pipe(r)
    completions = drain(uring_io)
    assert [(c.token, c.result) for c in completions] == [(token, 10)]


def test_wait_releases_the_gil_while_blocked(uring_io, full_pipe):
    r, w = full_pipe
    fd = uring_io.register_fd(w)
    token = uring_io.submit_write(fd, b"x" * 10, 0)
    result: list = []
    started = threading.Event()

    def waiter():
        started.set()
        result.extend(uring_io.wait(min_complete=1, timeout=10))

    worker = threading.Thread(target=waiter, daemon=True)
    worker.start()
    started.wait()
    # This thread runs Python (the polling loop) until it sees the worker asleep in the
    # kernel's completion wait: it could not, were the GIL held there.
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    while not in_io_uring_enter(worker):
        assert time.monotonic() < deadline, "the worker never went to sleep in io_uring_enter"
        time.sleep(0.001)
    assert worker.is_alive(), f"wait returned early: {result}"
    drain_pipe(r)
    worker.join(10)
    assert not worker.is_alive()
    assert [(c.token, c.result) for c in result] == [(token, 10)]


def test_metrics_count_the_callers_operations_on_every_backend(io, tmp_path):
    # However operations travel (combined into one write, run in the caller's thread),
    # metrics() counts what the caller submitted: one per token.
    fd = register_path(io, tmp_path / "f")
    readonly = tmp_path / "ro"
    readonly.write_bytes(b"")
    ro_fd = os.open(readonly, os.O_RDONLY)
    try:
        bad = io.register_fd(ro_fd)
    finally:
        os.close(ro_fd)
    tokens = [io.submit_append(fd, b"x" * 100) for _ in range(10)]
    tokens.append(io.submit_write(fd, b"y" * 50, 5000))
    tokens.append(io.submit_datasync(fd))
    tokens.append(io.submit_write(bad, b"z", 0))
    completions = drain(io)
    assert_exactly_once(completions, tokens)
    metrics = io.metrics()
    assert metrics["submitted"] == metrics["completed"] == len(tokens)
    assert metrics["failed"] == 1
    assert metrics["bytes_written"] == 10 * 100 + 50
