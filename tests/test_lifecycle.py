"""register_fd / deregister_fd / close / context manager, and ClosedError after close."""

from __future__ import annotations

import os

import pytest

from _support import assert_all_ok, assert_exactly_once, drain, pattern, register_path
from storage_io import ClosedError, IoFd, StorageIo


def test_register_fd_accepts_an_int(io, tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        iofd = io.register_fd(fd)
        assert isinstance(iofd, IoFd)
        token = io.submit_append(iofd, b"int")
        assert_exactly_once(drain(io), [token])
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"int"


def test_register_fd_accepts_an_object_with_fileno(io, tmp_path):
    with open(tmp_path / "f", "wb") as f:
        iofd = io.register_fd(f)
    # The caller's file object is closed: the backend's duplicate keeps working.
    assert isinstance(iofd, IoFd)
    tokens = [io.submit_append(iofd, b"file"), io.submit_datasync(iofd)]
    assert_all_ok(drain(io))
    assert (tmp_path / "f").read_bytes() == b"file"
    assert len(tokens) == 2


class HasFileno:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


def test_register_fd_accepts_any_object_with_fileno(io, tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    iofd = io.register_fd(HasFileno(fd))
    os.close(fd)
    token = io.submit_write(iofd, b"duck", 0)
    assert_exactly_once(drain(io), [token])
    assert (tmp_path / "f").read_bytes() == b"duck"


def test_caller_may_close_its_fd_right_after_registering(io, tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    iofd = io.register_fd(fd)
    os.close(fd)
    # Reuse the number for something else: the backend must not write there.
    other = os.open(tmp_path / "decoy", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        tokens = [io.submit_append(iofd, b"!"), io.submit_write(iofd, b"target", 1)]
        completions = drain(io)
        assert_exactly_once(completions, tokens)
        assert_all_ok(completions)
    finally:
        os.close(other)
    assert (tmp_path / "decoy").read_bytes() == b""
    assert (tmp_path / "f").read_bytes() == b"!target"


def test_backend_never_closes_the_callers_descriptor(io, tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        iofd = io.register_fd(fd)
        io.deregister_fd(iofd)
        io.close()
        os.fstat(fd)  # still open
        assert os.write(fd, b"mine") == 4
    finally:
        os.close(fd)


def test_deregister_waits_for_that_files_operations(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    data = [pattern(100_000, i) for i in range(10)]
    tokens = [io.submit_append(fd, d) for d in data]
    assert io.deregister_fd(fd) is None
    # Once deregister returns, the bytes are in the file.
    assert (tmp_path / "f").read_bytes() == b"".join(data)
    completions = drain(io)
    assert_exactly_once(completions, tokens)
    assert_all_ok(completions)


def test_register_returns_distinct_handles(io, tmp_path):
    a = register_path(io, tmp_path / "a")
    b = register_path(io, tmp_path / "b")
    assert a != b
    assert hash(a) == hash(a)


def test_context_manager_returns_itself_and_closes(make_io, tmp_path):
    io = make_io()
    with io as entered:
        assert entered is io
        fd = register_path(io, tmp_path / "f")
        io.submit_append(fd, b"in context")
    with pytest.raises(ClosedError):
        io.pending_count()
    assert (tmp_path / "f").read_bytes() == b"in context"


def test_context_manager_closes_on_exception_and_does_not_swallow_it(make_io, tmp_path):
    io = make_io()
    with pytest.raises(KeyError):
        with io:
            fd = register_path(io, tmp_path / "f")
            io.submit_append(fd, b"before the error")
            raise KeyError("boom")
    with pytest.raises(ClosedError):
        io.submit_append(fd, b"x")
    assert (tmp_path / "f").read_bytes() == b"before the error"


def test_is_a_storage_io(io):
    assert isinstance(io, StorageIo)


def test_storage_io_is_abstract():
    with pytest.raises(TypeError):
        StorageIo()  # type: ignore[abstract]  # that it cannot be made is what is tested
