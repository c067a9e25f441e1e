"""open_storage_io: backend selection, `.backend` and `.fallback_reason`."""

from __future__ import annotations

import pytest

from _support import assert_exactly_once, drain, register_path, skip_or_fail
from storage_io import (
    IoUringConfig,
    RingMode,
    StorageIo,
    SyncStorageIo,
    UringStorageIo,
    UringUnavailableError,
    open_storage_io,
)


def uring_works() -> str | None:
    """None when a STANDARD ring can be built here, else the reason it cannot."""
    try:
        UringStorageIo(config=IoUringConfig(mode=RingMode.STANDARD)).close()
    except UringUnavailableError as exc:
        return str(exc)
    return None


def check_usable(io, tmp_path):
    fd = register_path(io, tmp_path / "probe")
    token = io.submit_append(fd, b"probe")
    assert_exactly_once(drain(io), [token])
    assert (tmp_path / "probe").read_bytes() == b"probe"


def test_auto_picks_uring_where_it_works(tmp_path):
    io = open_storage_io()
    try:
        assert isinstance(io, StorageIo)
        assert io.backend in ("uring-sqpoll", "uring", "sync")
        reason = uring_works()
        if reason is None:
            assert io.backend != "sync", "auto chose sync although io_uring works here"
        else:
            assert io.backend == "sync"
        if io.backend == "sync":
            assert isinstance(io.fallback_reason, str) and io.fallback_reason
        else:
            assert io.fallback_reason is None or isinstance(io.fallback_reason, str)
        check_usable(io, tmp_path)
    finally:
        io.close()


def test_auto_is_the_default_backend_argument(tmp_path):
    explicit = open_storage_io(backend="auto")
    default = open_storage_io()
    try:
        assert explicit.backend == default.backend
    finally:
        explicit.close()
        default.close()


def test_forcing_sync(tmp_path):
    io = open_storage_io(backend="sync")
    try:
        assert io.backend == "sync"
        assert isinstance(io, StorageIo)
        check_usable(io, tmp_path)
    finally:
        io.close()


def test_forcing_uring_gives_uring_or_says_why(tmp_path):
    try:
        io = open_storage_io(backend="uring")
    except UringUnavailableError as exc:
        assert str(exc), "UringUnavailableError must say why"
        assert uring_works() is not None
        skip_or_fail(f"io_uring unavailable: {exc}")
    try:
        assert io.backend in ("uring", "uring-sqpoll")
        assert isinstance(io, StorageIo)
        check_usable(io, tmp_path)
    finally:
        io.close()


def test_forcing_uring_standard_mode(tmp_path):
    try:
        io = open_storage_io(backend="uring", config=IoUringConfig(mode=RingMode.STANDARD))
    except UringUnavailableError as exc:
        skip_or_fail(f"io_uring unavailable: {exc}")
    try:
        assert io.backend == "uring"
        check_usable(io, tmp_path)
    finally:
        io.close()


def test_sqpoll_backend_reports_itself_or_why_not():
    try:
        io = UringStorageIo(config=IoUringConfig(mode=RingMode.SQPOLL))
    except UringUnavailableError as exc:
        skip_or_fail(f"io_uring unavailable: {exc}")
    try:
        if io.backend == "uring-sqpoll":
            assert io.mode == RingMode.SQPOLL
            assert io.fallback_reason is None
        else:
            assert io.backend == "uring"
            assert isinstance(io.fallback_reason, str) and io.fallback_reason
    finally:
        io.close()


@pytest.mark.parametrize("name", ["invalid", "", "URING", "threads", None])
def test_unknown_backend_name_raises_value_error(name):
    with pytest.raises((ValueError, TypeError)) as info:
        open_storage_io(backend=name)
    if isinstance(name, str):
        assert info.type is ValueError


def test_both_backends_are_storage_io():
    sync = SyncStorageIo()
    try:
        assert isinstance(sync, StorageIo)
        assert sync.backend == "sync"
    finally:
        sync.close()
    assert issubclass(UringStorageIo, StorageIo)
    try:
        uring = UringStorageIo(config=IoUringConfig(mode=RingMode.STANDARD))
    except UringUnavailableError as exc:
        skip_or_fail(f"io_uring unavailable: {exc}")
    try:
        assert isinstance(uring, StorageIo)
    finally:
        uring.close()
