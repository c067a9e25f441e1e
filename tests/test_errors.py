"""Guarantee 8: clear errors, and kernel failures reported as completions."""

from __future__ import annotations

import errno
import os

import pytest

import storage_io
from _support import assert_exactly_once, drain, register_path
from conftest import build_backend
from storage_io import (
    BadFdError,
    BufferExhaustedError,
    ClosedError,
    QueueFullError,
    StorageIoError,
    UringUnavailableError,
)


@pytest.mark.parametrize(
    "exc",
    [QueueFullError, BadFdError, ClosedError, BufferExhaustedError, UringUnavailableError],
)
def test_exceptions_subclass_storage_io_error(exc):
    assert issubclass(exc, StorageIoError)
    assert issubclass(StorageIoError, Exception)


def fd_methods(io, fd):
    """Every call that takes an IoFd."""
    return {
        "submit_write": lambda: io.submit_write(fd, b"x", 0),
        "submit_append": lambda: io.submit_append(fd, b"x"),
        "submit_datasync": lambda: io.submit_datasync(fd),
        "deregister_fd": lambda: io.deregister_fd(fd),
    }


def assert_bad_fd_everywhere(io, fd):
    for name, call in fd_methods(io, fd).items():
        with pytest.raises(BadFdError):
            call()
        assert io.pending_count() == 0, f"{name} left a pending operation behind"


@pytest.mark.parametrize("bogus", [3, 0, -1, None, "fd", object()], ids=repr)
def test_non_iofd_raises_bad_fd(io, bogus):
    assert_bad_fd_everywhere(io, bogus)


def test_deregistered_fd_raises_bad_fd(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    io.deregister_fd(fd)
    assert_bad_fd_everywhere(io, fd)


def test_stale_fd_does_not_reach_a_new_registration(io, tmp_path):
    old = register_path(io, tmp_path / "old")
    io.deregister_fd(old)
    new = register_path(io, tmp_path / "new")  # may reuse the old slot
    assert new != old
    with pytest.raises(BadFdError):
        io.submit_write(old, b"stale", 0)
    token = io.submit_write(new, b"fresh", 0)
    assert_exactly_once(drain(io), [token])
    assert (tmp_path / "new").read_bytes() == b"fresh"
    assert (tmp_path / "old").read_bytes() == b""


@pytest.mark.parametrize("which", ["same-backend", "other-backend"])
def test_fd_of_another_instance_raises_bad_fd(io, backend_kind, tmp_path, which):
    if which == "same-backend":
        other = build_backend(backend_kind)
    else:
        other = build_backend("uring" if backend_kind == "sync" else "sync")
    try:
        foreign = register_path(other, tmp_path / "f")
        assert_bad_fd_everywhere(io, foreign)
        # The other instance still owns it.
        token = other.submit_append(foreign, b"mine")
        assert_exactly_once(drain(other), [token])
    finally:
        other.close()
    assert (tmp_path / "f").read_bytes() == b"mine"


def test_fd_of_a_closed_instance_raises_bad_fd(make_io, tmp_path):
    first = make_io()
    stale = register_path(first, tmp_path / "f")
    first.close()
    second = make_io()
    assert_bad_fd_everywhere(second, stale)


@pytest.mark.parametrize("data", ["text", 123, None, 1.5, [1, 2]], ids=repr)
def test_non_bytes_data_raises_type_error(io, tmp_path, data):
    fd = register_path(io, tmp_path / "f")
    with pytest.raises(TypeError):
        io.submit_write(fd, data, 0)
    with pytest.raises(TypeError):
        io.submit_append(fd, data)
    assert io.pending_count() == 0
    # A refused append does not move the append position.
    token = io.submit_append(fd, b"first")
    assert_exactly_once(drain(io), [token])
    assert (tmp_path / "f").read_bytes() == b"first"


def test_argument_checks_in_the_decided_order(io, tmp_path):
    # closed > bad fd > data type > offset value (NATIVE.md).
    fd = register_path(io, tmp_path / "f")
    with pytest.raises(BadFdError):
        io.submit_write(12345, "not bytes", -1)
    with pytest.raises(TypeError):
        io.submit_write(fd, "not bytes", -1)
    io.close()
    with pytest.raises(ClosedError):
        io.submit_write(12345, "not bytes", -1)


@pytest.mark.parametrize("method", ["write", "append"])
def test_write_to_read_only_fd_completes_with_ebadf(io, tmp_path, method):
    path = tmp_path / "ro"
    path.write_bytes(b"original")
    ro = register_path(io, path, os.O_RDONLY)
    if method == "write":
        token = io.submit_write(ro, b"overwrite", 0)
    else:
        token = io.submit_append(ro, b"more")
    (c,) = drain(io)
    assert c.token == token
    assert c.result == -errno.EBADF
    assert c.ok is False
    assert isinstance(c.error, OSError)
    assert c.error.errno == errno.EBADF
    assert path.read_bytes() == b"original"
    # The instance stays usable.
    rw = register_path(io, tmp_path / "rw")
    tokens = [io.submit_write(rw, b"ok", 0), io.submit_datasync(rw), io.submit_datasync(ro)]
    by_token = assert_exactly_once(drain(io), tokens)
    assert by_token[tokens[0]].result == 2
    assert by_token[tokens[1]].result == 0
    assert (tmp_path / "rw").read_bytes() == b"ok"


def test_public_names_exist():
    for name in [
        "StorageIo",
        "SyncStorageIo",
        "UringStorageIo",
        "open_storage_io",
        "IoUringConfig",
        "RingMode",
        "IoFd",
        "IoCompletion",
        "StorageIoError",
        "QueueFullError",
        "BadFdError",
        "ClosedError",
        "BufferExhaustedError",
        "UringUnavailableError",
    ]:
        assert hasattr(storage_io, name), name
