"""API.md "Second round", the fallback is visible: when open_storage_io() falls back (to the
sync backend, or to STANDARD because SQPOLL was refused) it logs one WARNING on the
``storage_io`` logger with the reason, besides ``.fallback_reason``; a choice made for the
machine (STANDARD on few CPUs, a smaller pool under a low memlock limit) is logged at INFO.

The causes are simulated by replacing the io_uring constructor that open_storage_io() calls
(the real causes are provoked in test_uring_refused.py, in child processes).
"""

from __future__ import annotations

import logging

import pytest

import storage_io.selection as selection
from storage_io import (
    IoUringConfig,
    RingMode,
    SyncStorageIo,
    UringStorageIo,
    UringUnavailableError,
    open_storage_io,
)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "storage_io" and r.levelno == level]


def refuse(reason: str):
    def make(*args, **kwargs):
        raise UringUnavailableError(reason)

    return make


@pytest.mark.parametrize("config", [None, IoUringConfig(mode=RingMode.STANDARD)])
def test_fallback_to_sync_logs_one_warning_with_the_reason(monkeypatch, caplog, config):
    reason = "io_uring_setup failed: Operation not permitted (a seccomp filter?)"
    monkeypatch.setattr(selection, "UringStorageIo", refuse(reason))
    caplog.set_level(logging.DEBUG, logger="storage_io")
    io = open_storage_io(config=config)
    try:
        assert isinstance(io, SyncStorageIo) and io.fallback_reason == reason
    finally:
        io.close()
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert reason in warnings[0].getMessage()
    assert "sync" in warnings[0].getMessage()


class _SqpollRefused:
    """Stands for a UringStorageIo that asked for SQPOLL and runs in STANDARD mode."""

    backend = "uring"
    fallback_reason = "SQPOLL refused: Operation not permitted"

    def __init__(self, *args, **kwargs) -> None:
        pass


def test_sqpoll_refused_logs_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(selection, "UringStorageIo", _SqpollRefused)
    caplog.set_level(logging.DEBUG, logger="storage_io")
    io = open_storage_io(config=IoUringConfig(mode=RingMode.SQPOLL))
    assert io.fallback_reason == _SqpollRefused.fallback_reason
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert _SqpollRefused.fallback_reason in warnings[0].getMessage()
    assert "STANDARD" in warnings[0].getMessage()


def test_forced_sync_and_a_granted_ring_log_no_warning(caplog):
    caplog.set_level(logging.DEBUG, logger="storage_io")
    open_storage_io(backend="sync").close()
    try:
        io = open_storage_io(config=IoUringConfig(mode=RingMode.STANDARD))
    except UringUnavailableError:
        io = None
    if io is not None:
        io.close()
    if io is None or io.fallback_reason is None:
        assert records(caplog, logging.WARNING) == []


def test_forcing_uring_raises_without_a_fallback_warning(monkeypatch, caplog):
    monkeypatch.setattr(selection, "UringStorageIo", refuse("no io_uring here"))
    caplog.set_level(logging.DEBUG, logger="storage_io")
    with pytest.raises(UringUnavailableError):
        open_storage_io(backend="uring")
    assert records(caplog, logging.WARNING) == []


def test_standard_mode_for_few_cpus_is_logged_at_info(monkeypatch, caplog):
    monkeypatch.setattr(selection, "usable_cpu_count", lambda: 2)
    made: list = []

    def make(core_id, config):
        made.append(config)
        return _Granted()

    monkeypatch.setattr(selection, "UringStorageIo", make)
    caplog.set_level(logging.DEBUG, logger="storage_io")
    open_storage_io()
    assert made[-1].mode == RingMode.STANDARD
    infos = records(caplog, logging.INFO)
    assert any("STANDARD" in r.getMessage() and "2 usable CPUs" in r.getMessage() for r in infos)
    assert records(caplog, logging.WARNING) == []


def test_many_cpus_choose_sqpoll_without_an_info_about_standard(monkeypatch, caplog):
    monkeypatch.setattr(selection, "usable_cpu_count", lambda: 16)
    monkeypatch.setattr(selection, "UringStorageIo", lambda core_id, config: _Granted())
    caplog.set_level(logging.DEBUG, logger="storage_io")
    open_storage_io()
    assert not any("STANDARD" in r.getMessage() for r in caplog.records)


def test_smaller_pool_under_low_memlock_is_logged_at_info(monkeypatch, caplog):
    def make(core_id, config):
        if config.buffer_count > 64:
            raise UringUnavailableError("registering buffers exceeds RLIMIT_MEMLOCK")
        return _Granted()

    monkeypatch.setattr(selection, "UringStorageIo", make)
    caplog.set_level(logging.DEBUG, logger="storage_io")
    open_storage_io()
    infos = [r.getMessage() for r in records(caplog, logging.INFO)]
    assert any("RLIMIT_MEMLOCK" in m and "256" in m and "64" in m for m in infos), infos
    assert records(caplog, logging.WARNING) == []


class _Granted:
    backend = "uring"
    fallback_reason = None


def test_the_real_constructor_is_what_selection_uses():
    # The simulations above replace this name: it must be the one open_storage_io() calls.
    assert selection.UringStorageIo is UringStorageIo
