"""Guarantees 4 and 5 (whole writes, any size) and the `submit_write` row: bytes-like data,
copied at submission, written at the given offset."""

from __future__ import annotations

import array
import errno
import resource
import signal

import pytest

from _support import assert_all_ok, assert_exactly_once, drain, pattern, register_path

MIB = 1 << 20


def test_write_lands_at_offset_and_reports_length(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_write(fd, b"hello", 0), io.submit_write(fd, b"world", 10)]
    by_token = assert_exactly_once(drain(io), tokens)
    assert [by_token[t].result for t in tokens] == [5, 5]
    assert (tmp_path / "f").read_bytes() == b"hello" + b"\0" * 5 + b"world"


def test_overwrite_inside_existing_file(io, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"." * 100)
    fd = register_path(io, path)
    token = io.submit_write(fd, b"XYZ", 50)
    assert_exactly_once(drain(io), [token])
    assert path.read_bytes() == b"." * 50 + b"XYZ" + b"." * 47


def test_five_mib_write_with_small_buffers_is_one_token(make_io, tmp_path):
    # 5 MiB + 123 at an unaligned offset, through 64 KiB buffers (pool of 512 KiB in all).
    io = make_io(buffer_size=65536, buffer_count=8)
    fd = register_path(io, tmp_path / "f")
    data = pattern(5 * MIB + 123, seed=3)
    token = io.submit_write(fd, data, 4097)
    completions = drain(io)
    assert [c.token for c in completions] == [token]
    assert completions[0].result == len(data)
    assert completions[0].ok
    got = (tmp_path / "f").read_bytes()
    assert got[:4097] == b"\0" * 4097
    assert got[4097:] == data


def test_large_append_is_one_token(make_io, tmp_path):
    io = make_io(buffer_size=4096, buffer_count=4)
    fd = register_path(io, tmp_path / "f")
    data = pattern(3 * MIB + 5, seed=4)
    tokens = [io.submit_append(fd, b"head"), io.submit_append(fd, data), io.submit_append(fd, b"t")]
    by_token = assert_exactly_once(drain(io), tokens)
    assert by_token[tokens[1]].result == len(data)
    assert (tmp_path / "f").read_bytes() == b"head" + data + b"t"


def test_zero_length_write_completes_with_zero(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    token = io.submit_write(fd, b"", 0)
    (c,) = drain(io)
    assert (c.token, c.result, c.ok) == (token, 0, True)


@pytest.fixture
def file_size_limit():
    """Set RLIMIT_FSIZE for the duration of a test (SIGXFSZ ignored so the kernel returns
    EFBIG instead of killing the process); always restored."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def set_limit(limit):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))

    try:
        yield set_limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.parametrize("limit", [100_000, 65536 + 1])
def test_short_write_is_continued_and_reports_efbig(io, tmp_path, file_size_limit, limit):
    # The kernel writes up to the limit (a short write); continuing it hits EFBIG. The
    # completion must say EFBIG, never the short count.
    fd = register_path(io, tmp_path / "f")
    data = pattern(300_000, seed=5)
    file_size_limit(limit)
    token = io.submit_write(fd, data, 0)
    completions = drain(io)
    file_size_limit(resource.RLIM_INFINITY)
    assert [c.token for c in completions] == [token]
    c = completions[0]
    assert c.result == -errno.EFBIG, f"expected -EFBIG, got {c.result} (short count leaked?)"
    assert not c.ok
    assert isinstance(c.error, OSError) and c.error.errno == errno.EFBIG
    got = (tmp_path / "f").read_bytes()
    assert len(got) == limit
    assert got == data[:limit]


def test_short_append_is_continued_and_instance_stays_usable(io, tmp_path, file_size_limit):
    fd = register_path(io, tmp_path / "f")
    ok_fd = register_path(io, tmp_path / "small")
    data = pattern(200_000, seed=6)
    file_size_limit(50_001)
    token = io.submit_append(fd, data)
    completions = drain(io)
    file_size_limit(resource.RLIM_INFINITY)
    assert [(c.token, c.result) for c in completions] == [(token, -errno.EFBIG)]
    assert (tmp_path / "f").read_bytes() == data[:50_001]
    # Still usable afterwards.
    again = io.submit_append(ok_fd, b"fine")
    assert [(c.token, c.result) for c in drain(io)] == [(again, 4)]
    assert (tmp_path / "small").read_bytes() == b"fine"


def _noncontiguous():
    base = bytes(range(256)) * 4
    return memoryview(base)[::2], base[::2]


BYTES_LIKE = {
    "bytes": lambda: (b"bytes data", b"bytes data"),
    "bytearray": lambda: (bytearray(b"bytearray data"), b"bytearray data"),
    "memoryview": lambda: (memoryview(b"memoryview data"), b"memoryview data"),
    "memoryview-slice": lambda: (memoryview(b"0123456789")[2:7], b"23456"),
    "memoryview-noncontiguous": _noncontiguous,
    "array-i": lambda: (
        array.array("i", [1, 2, 3, 0x01020304]),
        array.array("i", [1, 2, 3, 0x01020304]).tobytes(),
    ),
    "array-d": lambda: (array.array("d", [1.5, -2.25]), array.array("d", [1.5, -2.25]).tobytes()),
    "memoryview-cast": lambda: (
        memoryview(b"\x01\x00\x00\x00\x02\x00\x00\x00").cast("I"),
        b"\x01\x00\x00\x00\x02\x00\x00\x00",
    ),
}


@pytest.mark.parametrize("kind", sorted(BYTES_LIKE))
@pytest.mark.parametrize("method", ["write", "append"])
def test_bytes_like_objects_are_accepted(io, tmp_path, kind, method):
    data, expected = BYTES_LIKE[kind]()
    fd = register_path(io, tmp_path / "f")
    if method == "write":
        token = io.submit_write(fd, data, 3)
        prefix = b"\0" * 3
    else:
        token = io.submit_append(fd, data)
        prefix = b""
    (c,) = drain(io)
    assert c.token == token
    assert c.result == len(expected), "result must count bytes, not items"
    assert (tmp_path / "f").read_bytes() == prefix + expected


@pytest.mark.parametrize("size", [16, 200_000])
def test_data_is_copied_at_submission(io, tmp_path, size):
    fd = register_path(io, tmp_path / "f")
    appended = bytearray(b"p" * size)
    tokens = [io.submit_append(fd, appended)]  # reserves [0, size)
    appended[:] = b"Y" * size
    written = bytearray(b"o" * size)
    tokens.append(io.submit_write(fd, written, size))
    written[:] = b"X" * size
    completions = drain(io)
    assert_exactly_once(completions, tokens)
    assert_all_ok(completions)
    assert (tmp_path / "f").read_bytes() == b"p" * size + b"o" * size


def test_mutating_buffer_after_submit_keeps_original_in_file(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    buf = bytearray(pattern(100_000, seed=9))
    original = bytes(buf)
    token = io.submit_write(fd, buf, 0)
    for i in range(0, len(buf), 7):
        buf[i] = 0
    buf.extend(b"more")  # resizing is allowed: the backend does not hold the buffer
    assert_exactly_once(drain(io), [token])
    assert (tmp_path / "f").read_bytes() == original
