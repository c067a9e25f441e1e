"""io_uring internals of issue 9: how waiting threads hand the ring to each other.

One thread at a time sleeps in io_uring_enter, waiting for a number of CQEs; a thread that
starts waiting meanwhile, or polls, must make it wake up (rust/waiters/). These cases set
up a sleeper that waits for several CQEs that cannot come (reads of pipes nobody writes),
so that only that hand-off can finish the other thread's call. The descriptor cases run on
every backend (the sync backend shares the native descriptor code).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest

from _support import call_with_timeout, close_quietly, pattern, register_path

PIPES = 6


def _sleeper_on_pipe_reads(io):
    """Start a thread in wait(min_complete=PIPES) on reads of PIPES pipes nobody writes.
    Returns (thread, its result box, pipe descriptors, read tokens)."""
    pipes = [os.pipe() for _ in range(PIPES)]
    tokens = [io.submit_read(io.register_fd(r), 1, 0) for r, _ in pipes]
    io.flush()
    box: dict = {}

    def sleep_in_wait():
        box["got"] = io.wait(PIPES, timeout=30.0)

    thread = threading.Thread(target=sleep_in_wait, daemon=True)
    thread.start()
    time.sleep(0.2)  # let it reach the kernel
    return thread, box, pipes, tokens


def _release(thread, box, pipes, tokens):
    for _, w in pipes:
        os.write(w, b"x")
    thread.join(10)
    assert not thread.is_alive(), "the sleeper never woke up"
    got = box["got"]
    assert sorted(c.token for c in got if c.data == b"x") == sorted(tokens)
    close_quietly(*(fd for pair in pipes for fd in pair))


def test_wait_for_wakes_a_sleeper_waiting_for_more(uring_io, tmp_path):
    io = uring_io
    thread, box, pipes, reads = _sleeper_on_pipe_reads(io)
    fd = register_path(io, tmp_path / "f")
    token = io.submit_append(fd, b"mine")
    # Without a wake-up the sleeper waits for PIPES CQEs and this one never gets reaped.
    got = call_with_timeout(lambda: io.wait_for([token], timeout=10.0))
    assert [(c.token, c.result) for c in got] == [(token, 4)]
    assert thread.is_alive(), "the sleeper's own reads cannot have completed"
    _release(thread, box, pipes, reads)


def test_poll_gets_completions_while_a_sleeper_waits_for_more(uring_io, tmp_path):
    io = uring_io
    thread, box, pipes, reads = _sleeper_on_pipe_reads(io)
    fd = register_path(io, tmp_path / "f")
    token = io.submit_append(fd, b"polled")
    io.flush()
    deadline = time.monotonic() + 10
    seen: list = []
    while not seen and time.monotonic() < deadline:
        seen = [c for c in io.poll_completions() if c.token == token]
        time.sleep(0.005)
    assert [c.result for c in seen] == [6], "poll never saw a completion the sleeper held up"
    _release(thread, box, pipes, reads)


def test_close_while_a_thread_sleeps_gives_it_closed_error(uring_io):
    from storage_io import ClosedError

    io = uring_io
    r, w = os.pipe()
    try:
        token = io.submit_read(io.register_fd(r), 1, 0)
        io.flush()
        box: dict = {}

        def waiter():
            try:
                box["got"] = io.wait_for([token])
            except ClosedError as exc:
                box["closed"] = exc

        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        time.sleep(0.2)
        closer = threading.Thread(target=io.close, daemon=True)
        closer.start()
        time.sleep(0.2)
        os.write(w, b"z")  # close waits for the read in flight; this lets it finish
        closer.join(10)
        thread.join(10)
        assert not closer.is_alive() and not thread.is_alive(), "close or the waiter hung"
        assert "closed" in box or [c.data for c in box["got"]] == [b"z"], box
    finally:
        close_quietly(r, w)


def test_a_read_longer_than_the_pool_grows_its_own_buffer(make_io, tmp_path):
    io = make_io(buffer_size=4096, buffer_count=2)
    path = tmp_path / "long"
    payload = pattern(3 << 20, seed=9)  # past the first 1 MiB of a private read buffer
    path.write_bytes(payload)
    fd = register_path(io, path, os.O_RDONLY)
    tokens = [io.submit_read(fd, 8 << 20, 0), io.submit_read(fd, 100, len(payload) - 40)]
    got = call_with_timeout(lambda: io.wait_for(tokens, timeout=10.0))
    assert got[0].result == len(payload) and got[0].data == payload
    assert got[1].result == 40 and got[1].data == payload[-40:]


def test_an_unnamed_temporary_file_opened_to_append_can_be_registered(io):
    try:
        fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR | os.O_APPEND, 0o600)
    except OSError as exc:  # a filesystem without O_TMPFILE
        pytest.skip(f"O_TMPFILE unsupported here: {exc}")
    try:
        os.write(fd, b"head")
        handle = io.register_fd(fd)
        tokens = [io.submit_append(handle, b"-tail"), io.submit_write(handle, b"EA", 1)]
        got = call_with_timeout(lambda: io.wait_for(tokens, timeout=10.0))
        assert [c.result for c in got] == [5, 2]
        assert os.pread(fd, 100, 0) == b"hEAd-tail"
        io.deregister_fd(handle)
    finally:
        os.close(fd)
