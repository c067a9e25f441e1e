"""Guarantee 3: deterministic appends, back to back in submission order, on every backend."""

from __future__ import annotations

import os
import random

from _support import (
    assert_all_ok,
    assert_exactly_once,
    drain,
    pattern,
    register_path,
    submit_with_retry,
)
from conftest import build_backend

PRIOR = b"existing content that was here before registration\n" * 7

APPEND_SIZES = [1, 7, 4096, 65535, 65536, 65537, 200_000, 0, 13, 1 << 20, 333]


def setup_files(tmp_path, prefix):
    """Four files: plain, O_APPEND, plain with prior content, O_APPEND with prior content."""
    specs = []
    for i, (append_flag, prior) in enumerate(
        [(False, b""), (True, b""), (False, PRIOR), (True, PRIOR)]
    ):
        path = tmp_path / f"{prefix}{i}"
        path.write_bytes(prior)
        flags = os.O_WRONLY | (os.O_APPEND if append_flag else 0)
        specs.append((path, flags, prior))
    return specs


def run_append_sequence(io, tmp_path, prefix, seed=7):
    """A fixed, interleaved sequence of appends (and syncs) over four files, submitted
    without waiting. Returns the expected contents and the actual ones."""
    rng = random.Random(seed)
    specs = setup_files(tmp_path, prefix)
    fds = [register_path(io, path, flags) for path, flags, _ in specs]
    expected = [bytearray(prior) for _, _, prior in specs]
    tokens: list[int] = []
    received: list = []
    for i in range(160):
        k = rng.randrange(len(fds))
        if i % 23 == 22:
            tokens.append(submit_with_retry(io, received, io.submit_datasync, fds[k]))
            continue
        size = rng.choice(APPEND_SIZES) if i % 5 == 0 else rng.randrange(1, 3000)
        data = pattern(size, seed=i)
        tokens.append(submit_with_retry(io, received, io.submit_append, fds[k], data))
        expected[k] += data
    completions = drain(io, received)
    by_token = assert_exactly_once(completions, tokens)
    assert_all_ok(completions)
    for c in by_token.values():
        assert c.result >= 0
    actual = [path.read_bytes() for path, _, _ in specs]
    return [bytes(e) for e in expected], actual


def test_appends_land_back_to_back_in_submission_order(io, tmp_path):
    expected, actual = run_append_sequence(io, tmp_path, "f")
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        assert len(a) == len(e), f"file {i}: {len(a)} bytes, expected {len(e)}"
        assert a == e, f"file {i}: appended bytes out of order or overlapping"


def test_append_results_are_lengths(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    sizes = [0, 1, 100, 70_000, 300_000]
    tokens = [io.submit_append(fd, b"z" * n) for n in sizes]
    by_token = assert_exactly_once(drain(io), tokens)
    assert [by_token[t].result for t in tokens] == sizes


def test_append_starts_at_current_size_not_file_position(io, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PRIOR)
    fd = os.open(path, os.O_WRONLY)  # file position 0, size len(PRIOR)
    try:
        iofd = io.register_fd(fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        tokens = [io.submit_append(iofd, b"A" * 10), io.submit_append(iofd, b"B" * 5)]
        assert_exactly_once(drain(io), tokens)
    finally:
        os.close(fd)
    assert path.read_bytes() == PRIOR + b"A" * 10 + b"B" * 5


def test_append_position_of_a_new_registration_is_the_size_then(io, tmp_path):
    path = tmp_path / "f"
    fd1 = register_path(io, path)
    token = io.submit_append(fd1, b"one")
    assert_exactly_once(drain(io), [token])
    io.deregister_fd(fd1)
    fd2 = register_path(io, path)
    token = io.submit_append(fd2, b"two")
    assert_exactly_once(drain(io), [token])
    assert path.read_bytes() == b"onetwo"


def test_append_advances_at_submission_even_with_a_write_in_between(io, tmp_path):
    # submit_write does not move the append position; appends stay contiguous.
    path = tmp_path / "f"
    fd = register_path(io, path)
    tokens = [
        io.submit_append(fd, b"a" * 100),
        io.submit_write(fd, b"W" * 10, 5000),
        io.submit_append(fd, b"b" * 100),
    ]
    assert_exactly_once(drain(io), tokens)
    data = path.read_bytes()
    assert data[:200] == b"a" * 100 + b"b" * 100
    assert data[5000:5010] == b"W" * 10


def test_sync_and_uring_produce_identical_bytes(tmp_path, uring_kind):
    sync_io = build_backend("sync")
    try:
        sync_expected, sync_actual = run_append_sequence(sync_io, tmp_path, "sync", seed=11)
    finally:
        sync_io.close()
    uring_io = build_backend(uring_kind)
    try:
        uring_expected, uring_actual = run_append_sequence(uring_io, tmp_path, "uring", seed=11)
    finally:
        uring_io.close()
    assert sync_expected == uring_expected  # same call sequence
    for i in range(len(sync_actual)):
        assert sync_actual[i] == sync_expected[i], f"sync backend, file {i}"
        assert uring_actual[i] == sync_actual[i], f"uring and sync differ on file {i}"


def test_explicit_offsets_hold_on_an_o_append_descriptor(io, tmp_path):
    # Linux ignores the offset of a write through an O_APPEND description (pwrite(2), BUGS),
    # io_uring's writes included: a backend that wrote through the caller's description
    # would put this write at the end, and appends in completion order.
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        handle = io.register_fd(fd)
        io.submit_write(handle, b"ab", 2)
        assert_all_ok(drain(io))
        assert path.read_bytes() == b"01ab456789"
        os.write(fd, b"!")  # the caller's own descriptor still appends
        assert path.read_bytes() == b"01ab456789!"
    finally:
        os.close(fd)
