"""submit_writev / submit_appendv: several buffers written back to back under one token."""

from __future__ import annotations

import array

import pytest

from _support import assert_all_ok, assert_exactly_once, drain, pattern, register_path
from storage_io import BadFdError, ClosedError


def test_appendv_lands_back_to_back_with_plain_appends(make_io, tmp_path):
    io = make_io(buffer_size=4096, buffer_count=8, ring_entries=8)
    fd = register_path(io, tmp_path / "log")
    expected = b""
    tokens: dict[int, int] = {}
    for i in range(60):
        records = [pattern((i * 37 + k * 101) % 3000, seed=i + k) for k in range(i % 5)]
        if i % 3:
            token = io.submit_appendv(fd, records)
        else:
            token = io.submit_append(fd, b"".join(records))
        tokens[token] = sum(len(r) for r in records)
        expected += b"".join(records)
    tokens[io.submit_datasync(fd)] = 0
    completions = drain(io)
    assert_all_ok(completions)
    by_token = assert_exactly_once(completions, tokens)
    assert {t: c.result for t, c in by_token.items()} == tokens
    assert (tmp_path / "log").read_bytes() == expected


def test_writev_at_an_offset_larger_than_the_pool(make_io, tmp_path):
    io = make_io(buffer_size=4096, buffer_count=4, ring_entries=8)
    fd = register_path(io, tmp_path / "f")
    parts = [pattern(5000, seed=s) for s in range(10)]  # 50,000 bytes > 4 x 4 KiB
    token = io.submit_writev(fd, parts, 777)
    (done,) = drain(io)
    assert (done.token, done.result) == (token, 50_000)
    assert (tmp_path / "f").read_bytes() == b"\0" * 777 + b"".join(parts)


def test_any_iterable_of_bytes_like_objects(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    mixed = [b"ab", bytearray(b"cd"), memoryview(b"xefx")[1:3], array.array("B", b"gh")]
    io.submit_appendv(fd, mixed)
    io.submit_appendv(fd, (b"i", b"j"))
    io.submit_appendv(fd, (bytes([c]) for c in b"kl"))
    io.submit_appendv(fd, [])
    completions = drain(io)
    assert sorted(c.result for c in completions) == [0, 2, 2, 8]
    assert (tmp_path / "f").read_bytes() == b"abcdefghijkl"


def test_buffers_are_copied_before_the_call_returns(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    record = bytearray(b"original")
    io.submit_appendv(fd, [record, record])
    record[:] = b"CHANGED!"
    drain(io)
    assert (tmp_path / "f").read_bytes() == b"originaloriginal"


@pytest.mark.parametrize("bad", [b"one bytes object", bytearray(b"x"), 42, None, "text"])
def test_buffers_must_be_a_sequence_of_bytes_like(io, tmp_path, bad):
    fd = register_path(io, tmp_path / "f")
    with pytest.raises(TypeError):
        io.submit_appendv(fd, bad)
    with pytest.raises(TypeError):
        io.submit_writev(fd, bad, 0)
    assert io.pending_count() == 0


def test_an_item_that_is_not_bytes_like_refuses_the_whole_call(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    with pytest.raises(TypeError):
        io.submit_appendv(fd, [b"fine", "not bytes"])
    assert io.pending_count() == 0
    io.submit_append(fd, b"next")
    drain(io)
    # Nothing of the refused call was written, and the append position did not move.
    assert (tmp_path / "f").read_bytes() == b"next"


def test_vectored_errors_match_the_single_forms(make_io, tmp_path):
    io = make_io()
    fd = register_path(io, tmp_path / "f")
    with pytest.raises(ValueError):
        io.submit_writev(fd, [b"x"], -1)
    io.deregister_fd(fd)
    with pytest.raises(BadFdError):
        io.submit_appendv(fd, [b"x"])
    io.close()
    with pytest.raises(ClosedError):
        io.submit_writev(fd, [b"x"], 0)
