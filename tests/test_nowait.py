"""Submissions that never wait (``submit_*_nowait``), on every backend: accepted at the call
with or without room, performed in call order, collected only by
``take_nowait_completions()``, waited for by ``close()`` and by a plain submission that
follows them, refused with `QueueFullError` past the bound."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from _support import register_path
from storage_io import QueueFullError


def _take_all(io: Any, count: int, deadline_s: float = 30.0) -> list[Any]:
    taken: list[Any] = []
    deadline = time.monotonic() + deadline_s
    while len(taken) < count:
        assert time.monotonic() < deadline, f"only {len(taken)} of {count} came back"
        taken.extend(io.take_nowait_completions())
    return taken


def test_every_backend_offers_them(io: Any) -> None:
    assert io.supports_nowait is True


def test_more_than_the_pool_holds_is_accepted_and_written_in_call_order(
    make_io: Any, tmp_path: Path
) -> None:
    io = make_io(buffer_size=4096, buffer_count=8)
    path = tmp_path / "f"
    fd = register_path(io, path, os.O_RDWR | os.O_CREAT)
    chunks = [bytes([i]) * 4096 for i in range(200)]
    tokens = [io.submit_append_nowait(fd, chunk) for chunk in chunks]
    tokens.append(io.submit_datasync_nowait(fd))
    assert len(set(tokens)) == 201
    done = _take_all(io, 201)
    assert sorted(c.token for c in done) == sorted(tokens)
    assert all(c.ok for c in done)
    assert path.read_bytes() == b"".join(chunks)


def test_close_writes_what_nobody_collected(make_io: Any, tmp_path: Path) -> None:
    io = make_io(buffer_size=4096, buffer_count=8)
    path = tmp_path / "f"
    fd = register_path(io, path, os.O_RDWR | os.O_CREAT)
    chunks = [bytes([i]) * 4096 for i in range(200)]
    for chunk in chunks:
        io.submit_append_nowait(fd, chunk)
    io.close()
    assert path.read_bytes() == b"".join(chunks)


def test_their_completions_go_to_take_nowait_completions_only(io: Any, tmp_path: Path) -> None:
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    plain = io.submit_append(fd, b"plain")
    nowait = io.submit_append_nowait(fd, b"nowait")
    read = io.submit_read_nowait(fd, 11, 0)
    taken = _take_all(io, 2)
    assert {c.token for c in taken} == {nowait, read}
    assert next(c for c in taken if c.token == read).data == b"plainnowait"
    assert [c.token for c in io.wait_for([plain], 30)] == [plain]
    assert io.poll_completions() == []


def test_a_plain_datasync_covers_the_nowait_writes_called_before_it(
    io: Any, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    fd = register_path(io, path, os.O_RDWR | os.O_CREAT)
    for i in range(100):
        io.submit_write_nowait(fd, b"%04d" % i, 4 * i)
    sync = io.submit_datasync(fd)
    (completion,) = io.wait_for([sync], 30)
    assert completion.ok
    # Every write called before the datasync had completed when it ran.
    assert path.read_bytes() == b"".join(b"%04d" % i for i in range(100))
    assert len(_take_all(io, 100)) == 100


def test_argument_errors_raise_at_the_call_and_accept_nothing(io: Any, tmp_path: Path) -> None:
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    with pytest.raises(TypeError):
        io.submit_append_nowait(fd, "text")
    with pytest.raises(ValueError):
        io.submit_write_nowait(fd, b"x", -1)
    with pytest.raises(TypeError):
        io.submit_appendv_nowait(fd, b"one bytes object")
    io.deregister_fd(fd)
    from storage_io import BadFdError

    with pytest.raises(BadFdError):
        io.submit_append_nowait(fd, b"x")
    assert io.take_nowait_completions() == []


def test_past_the_bound_a_call_raises_queue_full_and_accepts_nothing(
    io: Any, tmp_path: Path
) -> None:
    """The queue can only fill while nothing empties it: on io_uring nobody polls; on the
    sync backend the worker is held by a write into a pipe nobody reads yet."""
    read_end, write_end = os.pipe()
    pipe = io.register_fd(write_end)
    os.close(write_end)
    io.submit_append_nowait(pipe, b"p" * (1 << 20))  # more than the pipe holds
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    chunk = b"c" * (1 << 20)
    accepted = 0
    with pytest.raises(QueueFullError, match="await earlier operations"):
        for _ in range(400):
            io.submit_append_nowait(fd, chunk)
            accepted += 1
    assert 200 < accepted < 400
    drained = bytearray()

    def drain_pipe() -> None:
        while len(drained) < 1 << 20:
            drained.extend(os.read(read_end, 1 << 16))

    reader = threading.Thread(target=drain_pipe)
    reader.start()
    assert len(_take_all(io, accepted + 1, 120)) == accepted + 1
    reader.join()
    os.close(read_end)
    assert (tmp_path / "f").stat().st_size == accepted * len(chunk)
