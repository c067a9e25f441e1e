"""Guarantee 7: back-pressure, not corruption."""

from __future__ import annotations

import pytest

from _support import assert_all_ok, assert_exactly_once, drain, pattern, register_path
from storage_io import BufferExhaustedError, QueueFullError


@pytest.mark.parametrize("size", [4096, 1000, 10_000])
def test_many_writes_with_two_buffers_succeed_or_push_back(make_io, tmp_path, size):
    io = make_io(buffer_count=2, buffer_size=4096)
    fd = register_path(io, tmp_path / "f")
    n = 160
    tokens: dict[int, int] = {}  # token -> write index
    received: list = []
    refusals = 0
    i = 0
    while i < n:
        before = io.pending_count()
        try:
            token = io.submit_write(fd, pattern(size, i), i * size)
        except (QueueFullError, BufferExhaustedError):
            refusals += 1
            # Nothing submitted earlier is affected and nothing half-submitted remains.
            assert io.pending_count() == before
            assert before > 0, "refused a submission with nothing in flight"
            received.extend(io.wait(min_complete=1, timeout=10))
            continue  # retry the same write
        assert token not in tokens
        tokens[token] = i
        i += 1
    completions = drain(io, received)
    assert_exactly_once(completions, list(tokens))
    assert_all_ok(completions)
    assert all(c.result == size for c in completions)
    assert (tmp_path / "f").read_bytes() == b"".join(pattern(size, j) for j in range(n))


def test_back_pressure_on_appends_keeps_them_contiguous(make_io, tmp_path):
    io = make_io(buffer_count=2, buffer_size=4096, ring_entries=4)
    fd = register_path(io, tmp_path / "f")
    expected = bytearray()
    tokens = []
    received: list = []
    i = 0
    while i < 200:
        data = pattern(500 + (i * 37) % 9000, i)
        try:
            tokens.append(io.submit_append(fd, data))
        except (QueueFullError, BufferExhaustedError):
            # A refused append must not reserve space: the retry lands right after.
            received.extend(io.wait(min_complete=1, timeout=10))
            continue
        expected += data
        i += 1
    completions = drain(io, received)
    assert_exactly_once(completions, tokens)
    assert_all_ok(completions)
    assert (tmp_path / "f").read_bytes() == bytes(expected)
