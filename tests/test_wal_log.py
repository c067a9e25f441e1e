"""storage_io.wal (WAL.md): names, LSNs, replay, segments, truncate_before, the lock and the
argument errors, on every backend (`make_io`) and on the log's own default io."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import storage_io
from _wal_support import payload_for, replayed, segment_files
from conftest import build_backend
from storage_io import ClosedError, StorageIo, Wal, WalError
from storage_io.wal import WalRecovery


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


def test_names_are_exported_from_the_package():
    for name in ("Wal", "WalError", "WalCorruptionError", "WalPoisonedError"):
        assert getattr(storage_io, name) is getattr(storage_io.wal, name)
    assert issubclass(storage_io.WalError, storage_io.StorageIoError)
    assert issubclass(storage_io.WalCorruptionError, storage_io.WalError)
    assert issubclass(storage_io.WalPoisonedError, storage_io.WalError)


def test_records_get_lsns_from_one_and_replay_in_order(make_io, log_dir):
    with Wal.open(log_dir, io=make_io()) as wal:
        assert (wal.last_lsn, wal.durable_lsn, wal.first_lsn) == (0, 0, 1)
        assert wal.recovery == WalRecovery(records=0, segments=0, truncated_bytes=0)
        assert [wal.append(payload_for(i)) for i in (1, 2, 3)] == [1, 2, 3]
        assert wal.append_many(payload_for(i) for i in range(4, 11)) == 10
        assert wal.append_many([]) == 10
        assert wal.sync() == 10
        assert wal.durable_lsn == 10
        assert replayed(wal) == [(i, payload_for(i)) for i in range(1, 11)]
        assert replayed(wal, 7) == [(i, payload_for(i)) for i in range(7, 11)]
        assert replayed(wal, 11) == []


def test_any_bytes_like_payload_and_empty_ones(make_io, log_dir):
    with Wal.open(log_dir, io=make_io()) as wal:
        wal.append(b"")
        wal.append(bytearray(b"array"))
        wal.append(memoryview(b"xxviewxx")[2:6])
        wal.append(memoryview(b"abcdef")[::2])  # not contiguous
        wal.append_many([b"", b""])
        wal.sync()
        want = [b"", b"array", b"view", b"ace", b"", b""]
        assert [p for _, p in replayed(wal)] == want


def test_a_payload_is_copied_before_append_returns(make_io, log_dir):
    with Wal.open(log_dir, io=make_io()) as wal:
        buffer = bytearray(b"before")
        wal.append(buffer)
        buffer[:] = b"AFTER!"
        wal.sync()
        assert replayed(wal) == [(1, b"before")]


def test_numbering_goes_on_after_reopen(make_io, log_dir):
    io = make_io()
    with Wal.open(log_dir, io=io) as wal:
        wal.append_many([b"a", b"b", b"c"])
    with Wal.open(log_dir, io=io) as wal:
        assert wal.recovery == WalRecovery(records=3, segments=1, truncated_bytes=0)
        assert (wal.first_lsn, wal.last_lsn, wal.durable_lsn) == (1, 3, 3)
        assert wal.append(b"d") == 4
    with Wal.open(log_dir, io=io) as wal:
        assert replayed(wal) == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")]


def test_close_makes_everything_appended_durable_and_leaves_a_given_io_open(make_io, log_dir):
    io = make_io()
    wal = Wal.open(log_dir, io=io)
    wal.append_many(payload_for(i) for i in range(1, 101))
    wal.close()
    assert not io.closed
    assert io.pending_count() == 0, "the log left its completions in the caller's io"
    with Wal.open(log_dir, io=io, create=False) as again:
        assert again.recovery.records == 100
        assert replayed(again) == [(i, payload_for(i)) for i in range(1, 101)]


def test_the_default_io_is_owned_and_closed_by_the_log(log_dir):
    wal = Wal.open(log_dir)
    assert isinstance(wal.io, StorageIo)
    assert wal.backend == wal.io.backend
    wal.append_many(payload_for(i) for i in range(1, 50))
    assert wal.sync() == 49
    wal.close()
    assert wal.io.closed
    with Wal.open(log_dir) as wal:
        assert replayed(wal) == [(i, payload_for(i)) for i in range(1, 50)]


def test_segments_rotate_named_by_first_lsn_and_sorted_by_ls(make_io, log_dir):
    io = make_io()
    with Wal.open(log_dir, io=io, segment_bytes=1024) as wal:
        for i in range(1, 201):
            wal.append(payload_for(i, 100))
        wal.sync()
        files = segment_files(log_dir)
        assert len(files) > 10
        names = [f.name for f in files]
        assert sorted(os.listdir(log_dir)) == sorted(names + ["LOCK"])
        assert names == sorted(names, key=lambda n: int(n.split(".")[0]))
        assert all(len(n) == len("00000000000000000001.wal") for n in names)
        assert all(f.stat().st_size <= 1024 for f in files)
    with Wal.open(log_dir, io=io, segment_bytes=1024) as wal:
        assert wal.recovery.segments == len(files)
        firsts = [int(f.name.split(".")[0]) for f in files]
        assert firsts[0] == 1
        for lsn, payload in replayed(wal):
            assert payload == payload_for(lsn, 100)
        assert wal.last_lsn == 200


def test_a_payload_larger_than_a_segment_gets_one_of_its_own(make_io, log_dir):
    big = os.urandom(10_000)
    with Wal.open(log_dir, io=make_io(), segment_bytes=4096) as wal:
        wal.append(b"small")
        wal.append(big)
        wal.append(b"after")
        wal.sync()
        sizes = [f.stat().st_size for f in segment_files(log_dir)]
        assert len(sizes) == 3 and sizes[1] > 4096
        assert replayed(wal) == [(1, b"small"), (2, big), (3, b"after")]
    with Wal.open(log_dir, io=make_io(), segment_bytes=4096) as wal:
        assert replayed(wal) == [(1, b"small"), (2, big), (3, b"after")]


def test_a_payload_larger_than_the_handoff_chunk_and_the_buffer_pool(make_io, log_dir):
    big = os.urandom(3 * 2**20 + 5)
    io = make_io(buffer_size=65536, buffer_count=16)  # 1 MiB of registered buffers
    with Wal.open(log_dir, io=io) as wal:
        wal.append(b"a")
        wal.append(big)
        wal.append_many([b"b"] * 3)
        wal.sync()
    with Wal.open(log_dir, io=io) as wal:
        assert replayed(wal) == [(1, b"a"), (2, big), (3, b"b"), (4, b"b"), (5, b"b")]


def test_truncate_before_deletes_only_whole_segments_below_the_lsn(make_io, log_dir):
    io = make_io()
    with Wal.open(log_dir, io=io, segment_bytes=512) as wal:
        for i in range(1, 101):
            wal.append(payload_for(i, 40))
        wal.sync()
        before = len(segment_files(log_dir))
        wal.truncate_before(50)
        assert len(segment_files(log_dir)) < before
        first = wal.first_lsn
        assert first <= 50
        got = replayed(wal)
        assert got[0][0] == first and [lsn for lsn, _ in got] == list(range(first, 101))
        assert int(segment_files(log_dir)[0].name.split(".")[0]) == first
        # Nothing below first_lsn can be replayed any more.
        with pytest.raises(ValueError):
            wal.replay(first - 1)
        wal.truncate_before(first)  # nothing more to delete: a no-op
        assert wal.first_lsn == first
    with Wal.open(log_dir, io=io, segment_bytes=512) as wal:
        assert wal.first_lsn == first
        assert wal.append(b"next") == 101


def test_truncate_before_keeps_the_segment_being_appended_to(make_io, log_dir):
    with Wal.open(log_dir, io=make_io()) as wal:
        wal.append_many([b"a", b"b"])
        wal.sync()
        wal.truncate_before(3)
        assert wal.first_lsn == 1
        assert replayed(wal) == [(1, b"a"), (2, b"b")]


def test_an_empty_log_after_truncation_has_first_lsn_past_last(make_io, log_dir):
    with Wal.open(log_dir, io=make_io(), segment_bytes=128) as wal:
        wal.append(b"x" * 60)
        wal.append(b"y" * 60)  # does not fit: a second segment
        wal.sync()
        wal.truncate_before(2)
        assert (wal.first_lsn, wal.last_lsn) == (2, 2)


def test_replay_stops_at_the_durable_lsn(make_io, log_dir):
    with Wal.open(log_dir, io=make_io()) as wal:
        wal.append_many(payload_for(i) for i in range(1, 11))
        wal.sync()
        wal.append_many(payload_for(i) for i in range(11, 16))  # not committed
        assert wal.durable_lsn == 10
        assert [lsn for lsn, _ in replayed(wal)] == list(range(1, 11))
        iterator = wal.replay()
        wal.sync()  # more becomes durable after the iteration started: not included
        assert [lsn for lsn, _ in iterator] == list(range(1, 11))
        assert [lsn for lsn, _ in replayed(wal)] == list(range(1, 16))


def test_replay_keeps_its_files_when_truncated_meanwhile(make_io, log_dir):
    with Wal.open(log_dir, io=make_io(), segment_bytes=256) as wal:
        wal.append_many(payload_for(i, 50) for i in range(1, 31))
        wal.sync()
        iterator = wal.replay()
        wal.truncate_before(25)
        assert [lsn for lsn, _ in iterator] == list(range(1, 31))


def test_a_log_written_through_one_backend_replays_identically_through_the_other(
    make_io, backend_kind, log_dir
):
    with Wal.open(log_dir, io=make_io(), segment_bytes=2048) as wal:
        for i in range(1, 301):
            wal.append(payload_for(i))
            if i % 37 == 0:
                wal.sync()
        wal.sync()
        written = replayed(wal)
    other = build_backend("sync" if backend_kind != "sync" else "uring")
    try:
        with Wal.open(log_dir, io=other, segment_bytes=2048) as wal:
            assert replayed(wal) == written
            assert wal.append(b"more") == 301
    finally:
        other.close()
    with Wal.open(log_dir, io=make_io(), segment_bytes=2048) as wal:
        assert replayed(wal) == written + [(301, b"more")]


def test_a_second_open_in_this_process_is_refused_while_the_first_is_open(make_io, log_dir):
    wal = Wal.open(log_dir, io=make_io())
    with pytest.raises(WalError, match="already open"):
        Wal.open(log_dir, io=make_io())
    wal.close()
    Wal.open(log_dir, io=make_io()).close()


def test_an_open_in_another_process_is_refused_while_ours_is_open(make_io, log_dir):
    script = (
        "import sys\nfrom storage_io import Wal, WalError, SyncStorageIo\n"
        "try:\n    Wal.open(sys.argv[1], io=SyncStorageIo()).close()\n"
        "except WalError as e:\n    print('refused', e)\nelse:\n    print('opened')\n"
    )
    wal = Wal.open(log_dir, io=make_io())
    try:
        out = subprocess.run(
            [sys.executable, "-c", script, str(log_dir)], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.startswith("refused"), out
    finally:
        wal.close()
    out = subprocess.run(
        [sys.executable, "-c", script, str(log_dir)], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.startswith("opened"), out


def test_create_false_needs_an_existing_log(make_io, tmp_path):
    with pytest.raises(FileNotFoundError):
        Wal.open(tmp_path / "missing", io=make_io(), create=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        Wal.open(tmp_path / "empty", io=make_io(), create=False)
    assert list((tmp_path / "empty").iterdir()) == [], "create=False left a file behind"
    Wal.open(tmp_path / "deep" / "new", io=make_io()).close()
    Wal.open(tmp_path / "deep" / "new", io=make_io(), create=False).close()


def test_argument_errors(make_io, log_dir):
    io = make_io()
    for bad in (0, 63, -1):
        with pytest.raises(ValueError, match="segment_bytes"):
            Wal.open(log_dir, io=io, segment_bytes=bad)
    with pytest.raises(TypeError):
        Wal.open(log_dir, io=io, segment_bytes=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Wal(log_dir)  # type: ignore[call-arg]
    with Wal.open(log_dir, io=io) as wal:
        with pytest.raises(TypeError):
            wal.append("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            wal.append_many([b"ok", 5])  # type: ignore[list-item]
        assert wal.last_lsn == 1  # the record before the bad one stays appended
        with pytest.raises(ValueError, match="last LSN"):
            wal.wait_durable(2)
        with pytest.raises(ValueError):
            wal.wait_durable(-1)
        with pytest.raises(ValueError):
            wal.wait_durable(1, timeout=-1)
        with pytest.raises(TypeError):
            wal.wait_durable("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            wal.truncate_before(3)
        assert wal.wait_durable(0) is True


def test_calls_after_close_raise_closed_error(make_io, log_dir):
    wal = Wal.open(log_dir, io=make_io())
    wal.append(b"x")
    wal.close()
    wal.close()  # a second close does nothing
    calls: list[Callable[[], object]] = [
        lambda: wal.append(b"y"),
        lambda: wal.append_many([b"y"]),
        wal.commit,
        wal.sync,
        lambda: wal.wait_durable(1),
        wal.replay,
        lambda: wal.truncate_before(1),
        wal.poll,
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()
    assert wal.durable_lsn == 1  # the state stays readable


def test_poll_advances_the_durable_lsn_without_blocking(make_io, log_dir):
    import time

    with Wal.open(log_dir, io=make_io()) as wal:
        lsn = wal.append(b"polled")
        assert wal.commit() == lsn
        deadline = time.monotonic() + 10
        while wal.poll() < lsn:
            assert time.monotonic() < deadline, "poll never saw the commit complete"
            time.sleep(0.001)
        assert wal.durable_lsn == lsn
        assert wal.poll() == lsn


def test_durable_lsn_advances_after_commit_without_another_call(make_io, log_dir):
    import time

    with Wal.open(log_dir, io=make_io()) as wal:
        lsn = wal.append(b"committed, never waited for")
        wal.commit()
        deadline = time.monotonic() + 10
        while wal.durable_lsn < lsn:
            assert time.monotonic() < deadline, "durable_lsn never moved after commit()"
            time.sleep(0.001)


def test_a_log_dropped_without_close_releases_its_lock(make_io, log_dir):
    import gc

    wal = Wal.open(log_dir, io=make_io())
    wal.append(b"x")
    wal.sync()
    del wal
    gc.collect()
    with Wal.open(log_dir, io=make_io()) as again:
        assert again.last_lsn == 1
