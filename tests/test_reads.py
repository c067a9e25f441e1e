"""API.md "Second round": `submit_read` and `IoCompletion.data` / `.check()`.

A read completes with the bytes read (`result == len(data)`), fewer than asked only at end
of file: a short read is continued by the backend. Regular files, pipes and a descriptor
opened read-only; data written through another descriptor is seen.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from _support import (
    assert_exactly_once,
    close_quietly,
    drain,
    pattern,
    register_path,
    register_pipe,
    wait_for_all,
)
from storage_io import BadFdError, ClosedError

SIZE = 300_000


def read_one(io, fd, length: int, offset: int):
    token = io.submit_read(fd, length, offset)
    (completion,) = wait_for_all(io, [token])
    assert completion.token == token
    return completion


@pytest.fixture
def filled(io, tmp_path):
    """A file of SIZE known bytes, written by the caller (not through the instance) and
    registered read-write."""
    path = tmp_path / "data"
    path.write_bytes(pattern(SIZE, seed=3))
    return register_path(io, path, os.O_RDWR), pattern(SIZE, seed=3)


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (0, 4096), (12_345, 54_321), (0, SIZE), (SIZE - 10, 10), (70_000, 200_000)],
)
def test_read_returns_the_bytes_at_the_offset(io, filled, offset, length):
    fd, expected = filled
    c = read_one(io, fd, length, offset)
    assert c.ok and c.error is None
    assert c.result == length
    assert isinstance(c.data, bytes)
    assert c.data == expected[offset : offset + length]


def test_read_at_and_past_end_of_file(io, filled):
    fd, expected = filled
    across = read_one(io, fd, 1000, SIZE - 300)
    assert (across.result, across.data) == (300, expected[-300:]), "short only at EOF"
    at_end = read_one(io, fd, 1000, SIZE)
    assert (at_end.result, at_end.data) == (0, b"")
    past = read_one(io, fd, 10, SIZE + 1_000_000)
    assert (past.result, past.data) == (0, b"")
    assert at_end.ok and past.ok


def test_a_read_larger_than_the_buffer_pool_is_continued_whole(make_io, tmp_path):
    # On io_uring a read this large goes through many registered buffers (or several kernel
    # reads): it must still come back as one completion with every byte in place.
    io = make_io(buffer_size=4096, buffer_count=8)
    expected = pattern(1_000_000, seed=5)
    (tmp_path / "big").write_bytes(expected)
    fd = register_path(io, tmp_path / "big", os.O_RDONLY)
    c = read_one(io, fd, 2_000_000, 0)
    assert c.result == len(expected)
    assert c.data == expected


def test_zero_length_read(io, filled):
    fd, _ = filled
    c = read_one(io, fd, 0, 5)
    assert (c.result, c.data, c.ok) == (0, b"", True)


def test_read_sees_data_written_through_another_descriptor(io, tmp_path):
    path = tmp_path / "shared"
    own = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fd = io.register_fd(own)
        os.pwrite(own, b"written by the caller", 100)  # after registration, not through io
        c = read_one(io, fd, 200, 100)
        assert c.data == b"written by the caller"
        other = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(other, b"AND ANOTHER", 0)
        finally:
            os.close(other)
        c = read_one(io, fd, 11, 0)
        assert c.data == b"AND ANOTHER"
    finally:
        os.close(own)


def test_read_after_a_completed_write_through_the_instance(io, tmp_path):
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    data = pattern(200_000, seed=8)
    wait_for_all(io, [io.submit_append(fd, data)])[0].check()
    c = read_one(io, fd, len(data), 0)
    assert c.data == data


def test_read_sees_the_writes_submitted_before_it_without_waiting(make_io, tmp_path):
    # Held behind them like a datasync: appends gathered in a registered buffer, writes
    # larger than the pool, an overwrite in the middle.
    io = make_io(buffer_size=4096, buffer_count=8)
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    small, large = pattern(1000, seed=1), pattern(100_000, seed=2)
    tokens = [io.submit_append(fd, small), io.submit_append(fd, large)]
    tokens.append(io.submit_write(fd, b"MIDDLE", 50_000))
    tokens.append(io.submit_read(fd, 200_000, 0))
    got = wait_for_all(io, tokens)
    expected = bytearray(small + large)
    expected[50_000:50_006] = b"MIDDLE"
    assert got[3].data == bytes(expected)


def test_read_only_descriptor_reads_and_refuses_writes(io, tmp_path):
    path = tmp_path / "ro"
    path.write_bytes(b"read me")
    fd = register_path(io, path, os.O_RDONLY)
    read = io.submit_read(fd, 100, 0)
    write = io.submit_write(fd, b"nope", 0)
    got = wait_for_all(io, [read, write])
    assert got[0].data == b"read me"
    assert got[1].result == -errno.EBADF and got[1].data is None
    assert path.read_bytes() == b"read me"


def test_read_of_a_write_only_descriptor_completes_with_ebadf(io, tmp_path):
    fd = register_path(io, tmp_path / "wo", os.O_WRONLY | os.O_CREAT)
    c = wait_for_all(io, [io.submit_read(fd, 10, 0)])[0]
    assert c.result == -errno.EBADF
    assert not c.ok and c.data is None
    assert isinstance(c.error, OSError) and c.error.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        c.check()
    assert info.value.errno == errno.EBADF
    # The instance stays usable.
    assert wait_for_all(io, [io.submit_append(fd, b"x")])[0].check().result == 1


def test_data_is_none_for_writes_and_datasyncs_and_check_returns_the_completion(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_append(fd, b"abc"), io.submit_datasync(fd)]
    for c in wait_for_all(io, tokens):
        assert c.data is None
        assert c.check() is c


@pytest.mark.parametrize(
    ("length", "offset", "exc"),
    [
        (-1, 0, ValueError),
        (1, -1, ValueError),
        (2**63, 0, ValueError),
        (1.0, 0, TypeError),
        ("1", 0, TypeError),
        (1, None, TypeError),
        (None, 0, TypeError),
    ],
    ids=repr,
)
def test_bad_read_arguments_raise_and_queue_nothing(io, filled, length, offset, exc):
    fd, _ = filled
    with pytest.raises(exc):
        io.submit_read(fd, length, offset)
    assert io.pending_count() == 0


def test_read_checks_closed_and_handles_first(make_io, filled):
    io = make_io()
    with pytest.raises(BadFdError):
        io.submit_read(object(), -1, -1)
    io.close()
    with pytest.raises(ClosedError):
        io.submit_read(object(), -1, -1)


# -- pipes (streams: offsets ignored, a read waits for `length` bytes or end of stream) --


def test_pipe_read_waits_for_all_bytes_arriving_in_pieces(io):
    rfd, _, r, w = register_pipe(io)
    try:
        token = io.submit_read(rfd, 30_000, 12345)  # offset ignored on a stream
        io.flush()
        pieces = [pattern(10_000, seed=i) for i in range(3)]

        def writer() -> None:
            for piece in pieces:
                time.sleep(0.05)
                os.write(w, piece)

        feeder = threading.Thread(target=writer)
        feeder.start()
        (c,) = wait_for_all(io, [token])
        feeder.join()
        assert c.result == 30_000, "a short pipe read was handed back instead of continued"
        assert c.data == b"".join(pieces)
    finally:
        close_quietly(r, w)


def test_pipe_read_reaches_end_of_stream(io):
    r, w = os.pipe()
    try:
        rfd = io.register_fd(r)
        os.write(w, b"last words")
        token = io.submit_read(rfd, 1000, 0)
        io.flush()
        time.sleep(0.05)
        os.close(w)  # the only write end: end of stream
        (c,) = wait_for_all(io, [token])
        assert (c.result, c.data) == (10, b"last words")
        again = wait_for_all(io, [io.submit_read(rfd, 10, 0)])[0]
        assert (again.result, again.data) == (0, b"")
    finally:
        close_quietly(r, w)


def test_pipe_round_trip_through_one_instance(io):
    rfd, wfd, r, w = register_pipe(io)
    try:
        records = [pattern(1000 + i, seed=i) for i in range(20)]
        tokens = []
        for rec in records:
            tokens.append(io.submit_write(wfd, rec, 0))
            tokens.append(io.submit_read(rfd, len(rec), 0))
        got = wait_for_all(io, tokens)
        for i, rec in enumerate(records):
            assert got[2 * i].result == len(rec)
            assert got[2 * i + 1].data == rec, f"record {i} came back wrong"
        assert_exactly_once(drain(io), [])
    finally:
        close_quietly(r, w)
