"""Guarantee 6: no completion is dropped (deregister_fd, completion-queue overflow, close)."""

from __future__ import annotations

import time

from _support import (
    assert_all_ok,
    assert_exactly_once,
    drain,
    pattern,
    register_path,
    submit_with_retry,
)


def test_deregister_one_file_while_another_has_writes_in_flight(io, tmp_path):
    a = register_path(io, tmp_path / "a")
    b = register_path(io, tmp_path / "b")
    a_data = [pattern(50_000, i) for i in range(6)]
    b_data = [pattern(70_000, 100 + i) for i in range(12)]
    tokens = []
    for i, d in enumerate(b_data[:6]):
        tokens.append(io.submit_write(b, d, i * 70_000))
    tokens += [io.submit_append(a, d) for d in a_data]
    tokens.append(io.submit_datasync(a))
    for i, d in enumerate(b_data[6:], start=6):
        tokens.append(io.submit_write(b, d, i * 70_000))
    io.deregister_fd(a)
    # Nothing was polled yet: every completion, of both files, comes from poll/wait now.
    completions = drain(io)
    assert_exactly_once(completions, tokens)
    assert_all_ok(completions)
    assert (tmp_path / "a").read_bytes() == b"".join(a_data)
    assert (tmp_path / "b").read_bytes() == b"".join(b_data)


def test_completion_queue_overflow_loses_nothing(make_io, tmp_path):
    io = make_io(ring_entries=4)
    fds = [register_path(io, tmp_path / f"f{i}") for i in range(3)]
    received: list = []
    tokens = []
    expected = [bytearray() for _ in fds]
    for i in range(500):
        k = i % 3
        if i % 25 == 24:
            tokens.append(submit_with_retry(io, received, io.submit_datasync, fds[k]))
        else:
            data = pattern(100 + i % 400, i)
            tokens.append(submit_with_retry(io, received, io.submit_append, fds[k], data))
            expected[k] += data
        if i % 50 == 0:
            io.flush()
    io.flush()
    time.sleep(0.2)  # let the kernel finish everything and overrun the completion queue
    completions = drain(io, received)
    assert_exactly_once(completions, tokens)
    assert_all_ok(completions)
    assert io.poll_completions() == []
    for k in range(3):
        assert (tmp_path / f"f{k}").read_bytes() == bytes(expected[k])


def test_close_with_operations_in_flight_keeps_every_byte(make_io, tmp_path):
    io = make_io()
    fds = [register_path(io, tmp_path / f"f{i}") for i in range(2)]
    received: list = []
    expected = [bytearray(), bytearray()]
    for i in range(200):
        k = i % 2
        data = pattern(1000 + (i * 7919) % 150_000, i)
        submit_with_retry(io, received, io.submit_append, fds[k], data)
        expected[k] += data
        if i % 40 == 39:
            submit_with_retry(io, received, io.submit_datasync, fds[k])
    big = pattern(3 << 20, 99)
    submit_with_retry(io, received, io.submit_write, fds[0], big, 64 << 20)
    io.close()  # nothing waited for: close must finish it all first
    for k in range(2):
        got = (tmp_path / f"f{k}").read_bytes()
        assert got[: len(expected[k])] == bytes(expected[k]), f"file {k} lost bytes at close"
    assert (tmp_path / "f0").read_bytes()[64 << 20 :] == big
    assert (tmp_path / "f1").stat().st_size == len(expected[1])


def test_close_right_after_submit_of_large_write_then_reopen(make_io, tmp_path):
    io = make_io(buffer_size=4096, buffer_count=4)
    fd = register_path(io, tmp_path / "f")
    data = pattern(2 << 20, 5)
    io.submit_write(fd, data, 0)
    io.close()
    assert (tmp_path / "f").read_bytes() == data
