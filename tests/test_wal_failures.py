"""WAL.md guarantee 3 (fail closed) and 1 (acknowledged means durable) when the disk fails:
a full disk (a 1 MiB tmpfs) and an fdatasync that completes with -EIO, on every backend.
After the first failure the log is poisoned, issues no more I/O, and a reopen recovers
every record that was acknowledged durable."""

from __future__ import annotations

import errno

import pytest

from _wal_support import WrappedIo, payload_for, replayed
from storage_io import Wal, WalPoisonedError
from test_full_disk import small_filesystem


def assert_poisoned_and_silent(wal: Wal, wrapped: WrappedIo, acked: int, cause_errno: int):
    """Every later append/commit/sync raises WalPoisonedError caused by the first error, and
    nothing more is submitted (no retry)."""
    counts = (wrapped.writes, wrapped.datasyncs)
    for call in (lambda: wal.append(b"more"), wal.commit, wal.sync, wal.poll):
        with pytest.raises(WalPoisonedError) as caught:
            call()
        assert isinstance(caught.value.__cause__, OSError), caught.value.__cause__
        assert caught.value.__cause__.errno == cause_errno
    assert wal.wait_durable(acked) is True
    if wal.last_lsn > acked:
        with pytest.raises(WalPoisonedError):
            wal.wait_durable(wal.last_lsn)
    assert wal.durable_lsn == acked
    assert (wrapped.writes, wrapped.datasyncs) == counts, "the log retried after a failure"


def test_an_fdatasync_error_poisons_the_log_and_reopen_recovers(make_io, tmp_path):
    log = tmp_path / "log"
    wrapped = WrappedIo(make_io())
    wal = Wal.open(log, io=wrapped)
    wal.append_many(payload_for(i) for i in range(1, 6))
    assert wal.sync() == 5
    wrapped.fail_datasync_from = wrapped.datasyncs + 1
    wal.append_many(payload_for(i) for i in range(6, 11))
    with pytest.raises(WalPoisonedError) as caught:
        wal.sync()
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.EIO
    assert wal.durable_lsn == 5
    assert_poisoned_and_silent(wal, wrapped, acked=5, cause_errno=errno.EIO)
    with pytest.raises(WalPoisonedError):
        wal.close()  # released all the same, and says records were not made durable
    assert not wrapped.inner.closed
    with Wal.open(log, io=make_io()) as again:
        got = replayed(again)
        # Every acknowledged record, with its bytes; the rest were written, so may be back.
        assert got[:5] == [(i, payload_for(i)) for i in range(1, 6)]
        assert got == [(i, payload_for(i)) for i in range(1, len(got) + 1)]


def test_a_failure_raised_inside_a_with_block_is_not_masked_by_close(make_io, tmp_path):
    wrapped = WrappedIo(make_io())
    with pytest.raises(WalPoisonedError) as caught:
        with Wal.open(tmp_path / "log", io=wrapped) as wal:
            wrapped.fail_datasync_from = wrapped.datasyncs + 1
            wal.append(b"x")
            wal.sync()
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.EIO


def test_waiters_of_a_failed_commit_all_see_the_poison(make_io, tmp_path):
    from _wal_support import run_threads

    wrapped = WrappedIo(make_io())
    with pytest.raises(WalPoisonedError):
        with Wal.open(tmp_path / "log", io=wrapped) as wal:
            wrapped.fail_datasync_from = wrapped.datasyncs + 1
            lsns = [wal.append(payload_for(i)) for i in range(1, 9)]

            def wait(i: int) -> str:
                try:
                    wal.wait_durable(lsns[i], timeout=30)
                except WalPoisonedError:
                    return "poisoned"
                return "durable"

            assert run_threads(wait, 8) == ["poisoned"] * 8
            wal.sync()


def test_a_full_disk_poisons_the_log_and_reopen_recovers_what_was_durable(make_io, tmp_path):
    with small_filesystem("tmpfs") as root:
        log = root / "log"
        wrapped = WrappedIo(make_io(buffer_size=65536, buffer_count=16))
        wal = Wal.open(log, io=wrapped)
        acked = 0
        failure = None
        for lsn in range(1, 2000):  # 8 MB: far more than the filesystem holds
            try:
                assert wal.append(payload_for(lsn, 4096)) == lsn
                if lsn % 8 == 0:
                    acked = wal.sync()
            except WalPoisonedError as exc:
                failure = exc
                break
        assert failure is not None, "the disk never filled"
        assert isinstance(failure.__cause__, OSError)
        assert failure.__cause__.errno == errno.ENOSPC
        assert acked >= 8
        assert_poisoned_and_silent(wal, wrapped, acked=acked, cause_errno=errno.ENOSPC)
        with pytest.raises(WalPoisonedError):
            wal.close()
        with Wal.open(log, io=make_io()) as again:
            got = replayed(again)
            assert len(got) >= acked, "an acknowledged record was lost"
            assert got == [(i, payload_for(i, 4096)) for i in range(1, len(got) + 1)]
            # The log goes on from what it recovered, on the same full disk.
            assert again.last_lsn == len(got)
