"""WAL.md guarantee 2 (torn tails are cut, corruption is reported) and 4 (the checks), on
every backend: a crash matrix over every byte of the last record, appends after a cut, bit
flips before valid records and in older segments, stale records from another segment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _wal_support import file_hashes, payload_for, replayed, segment_files
from storage_io import Wal, WalCorruptionError

RECORD_HEADER = 16
SEGMENT_HEADER = 32


def write_log(io, directory: Path, lsns: range, size: int = 40, **kw) -> None:
    with Wal.open(directory, io=io, **kw) as wal:
        for lsn in lsns:
            assert wal.append(payload_for(lsn, size)) == lsn
        wal.sync()


def test_a_cut_at_every_byte_of_the_last_record_recovers_the_records_before_it(make_io, tmp_path):
    io = make_io()
    log = tmp_path / "log"
    write_log(io, log, range(1, 6), size=40)
    (newest,) = segment_files(log)
    full = newest.read_bytes()
    last_start = len(full) - (RECORD_HEADER + 40)
    for cut in range(last_start, len(full) + 1):
        newest.write_bytes(full[:cut])
        with Wal.open(log, io=io) as wal:
            whole = 5 if cut == len(full) else 4
            assert wal.recovery.records == whole, f"cut at {cut}"
            assert wal.recovery.truncated_bytes == (0 if whole == 5 else cut - last_start)
            assert (wal.last_lsn, wal.durable_lsn) == (whole, whole)
            assert replayed(wal) == [(i, payload_for(i, 40)) for i in range(1, whole + 1)]
        assert newest.stat().st_size == (len(full) if whole == 5 else last_start)


def test_a_cut_inside_the_header_of_a_new_segment_is_a_torn_rotation(make_io, tmp_path):
    io = make_io()
    log = tmp_path / "log"
    write_log(io, log, range(1, 4), size=40, segment_bytes=128)
    files = segment_files(log)
    assert len(files) == 3
    full = files[-1].read_bytes()
    for cut in range(SEGMENT_HEADER):
        files[-1].write_bytes(full[:cut])
        with Wal.open(log, io=io, segment_bytes=128) as wal:
            assert wal.recovery.records == 2 and wal.recovery.segments == 2
            assert wal.recovery.truncated_bytes == cut
            assert not files[-1].exists()
            assert replayed(wal) == [(i, payload_for(i, 40)) for i in (1, 2)]
        files[-1].write_bytes(full)  # put it back for the next cut (record 3 is whole)
    with Wal.open(log, io=io, segment_bytes=128) as wal:
        assert wal.last_lsn == 3


def test_synced_then_torn_then_more_appends_recover_without_the_torn_one(make_io, tmp_path):
    io = make_io()
    log = tmp_path / "log"
    with Wal.open(log, io=io) as wal:
        wal.append(b"A" * 30)
        wal.sync()
        wal.append(b"B" * 30)
        wal.sync()
    (newest,) = segment_files(log)
    newest.write_bytes(newest.read_bytes()[:-7])  # B is torn
    with Wal.open(log, io=io) as wal:
        assert wal.recovery.truncated_bytes == RECORD_HEADER + 30 - 7
        assert wal.append(b"C" * 30) == 2
        assert wal.append(b"D" * 30) == 3
        wal.sync()
    with Wal.open(log, io=io) as wal:
        assert wal.recovery.truncated_bytes == 0
        assert replayed(wal) == [(1, b"A" * 30), (2, b"C" * 30), (3, b"D" * 30)]


def test_zeros_after_the_last_record_are_a_torn_tail(make_io, tmp_path):
    io = make_io()
    log = tmp_path / "log"
    write_log(io, log, range(1, 4))
    (newest,) = segment_files(log)
    size = newest.stat().st_size
    with open(newest, "ab") as f:
        f.write(bytes(5000))  # what a preallocated or half-flushed page looks like
    with Wal.open(log, io=io) as wal:
        assert wal.recovery.truncated_bytes == 5000
        assert wal.last_lsn == 3
    assert newest.stat().st_size == size


def flip(path: Path, offset: int, bit: int = 0x04) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["header", "payload", "length"])
def test_a_bad_record_followed_by_valid_ones_is_corruption_and_nothing_changes(
    make_io, tmp_path, where
):
    io = make_io()
    log = tmp_path / "log"
    write_log(io, log, range(1, 11), size=40)
    (newest,) = segment_files(log)
    record_3 = SEGMENT_HEADER + 2 * (RECORD_HEADER + 40)
    offset = {"header": record_3 + 9, "payload": record_3 + 30, "length": record_3 + 5}[where]
    flip(newest, offset)
    before = file_hashes(log)
    with pytest.raises(WalCorruptionError) as caught:
        Wal.open(log, io=io)
    assert caught.value.path == str(newest)
    assert caught.value.offset == record_3
    assert str(record_3) in str(caught.value) and newest.name in str(caught.value)
    assert file_hashes(log) == before, "a failed open changed the disk"
    flip(newest, offset)  # repaired: the lock was released and the log opens
    with Wal.open(log, io=io) as wal:
        assert wal.last_lsn == 10


def test_a_bad_last_record_in_an_older_segment_is_corruption(make_io, tmp_path):
    io = make_io()
    log = tmp_path / "log"
    write_log(io, log, range(1, 13), size=40, segment_bytes=256)
    files = segment_files(log)
    assert len(files) >= 3
    older = files[-2]
    flip(older, older.stat().st_size - 1)
    before = file_hashes(log)
    with pytest.raises(WalCorruptionError) as caught:
        Wal.open(log, io=io, segment_bytes=256)
    assert caught.value.path == str(older)
    assert caught.value.offset == older.stat().st_size - (RECORD_HEADER + 40)
    assert file_hashes(log) == before


@pytest.mark.parametrize("damage", ["missing segment", "header flip", "renamed"])
def test_gaps_and_bad_segment_headers_are_corruption(make_io, tmp_path, damage):
    io = make_io()
    log = tmp_path / "log"
    write_log(io, log, range(1, 13), size=40, segment_bytes=256)
    files = segment_files(log)
    if damage == "missing segment":
        files[1].unlink()
        blamed = files[2]
    elif damage == "header flip":
        flip(files[1], 20)
        blamed = files[1]
    else:
        files[1].rename(log / f"{int(files[1].name[:20]) + 1:020d}.wal")
        blamed = log / f"{int(files[1].name[:20]) + 1:020d}.wal"
    before = file_hashes(log)
    with pytest.raises(WalCorruptionError) as caught:
        Wal.open(log, io=io, segment_bytes=256)
    assert caught.value.path == str(blamed)
    assert file_hashes(log) == before


def test_a_stale_record_left_from_another_segment_never_validates(make_io, tmp_path):
    io = make_io()
    one, two = tmp_path / "one", tmp_path / "two"
    write_log(io, one, range(1, 4), size=40)
    write_log(io, two, range(1, 6), size=40)
    (seg_one,) = segment_files(one)
    (seg_two,) = segment_files(two)
    # Log one's file, followed by the bytes of log two's records 4 and 5 (same LSNs, same
    # positions, same payloads: only the salt differs). They must not be taken as records.
    data_one, data_two = seg_one.read_bytes(), seg_two.read_bytes()
    seg_one.write_bytes(data_one + data_two[len(data_one) :])
    with Wal.open(one, io=io) as wal:
        assert wal.last_lsn == 3
        assert wal.recovery.truncated_bytes == len(data_two) - len(data_one)


def test_replay_reports_damage_that_happened_after_open(make_io, tmp_path):
    io = make_io()
    log = tmp_path / "log"
    with Wal.open(log, io=io) as wal:
        for lsn in range(1, 6):
            wal.append(payload_for(lsn, 40))
        wal.sync()
        (newest,) = segment_files(log)
        flip(newest, SEGMENT_HEADER + RECORD_HEADER + 40 + 20)  # record 2's payload
        iterator = wal.replay()
        assert next(iterator)[0] == 1
        with pytest.raises(WalCorruptionError) as caught:
            next(iterator)
        assert caught.value.offset == SEGMENT_HEADER + RECORD_HEADER + 40
        flip(newest, SEGMENT_HEADER + RECORD_HEADER + 40 + 20)


def test_recovered_records_are_synced_before_they_count_as_durable(make_io, tmp_path):
    """What open finds may be in the page cache only (a crashed writer): the log syncs the
    newest segment before reporting durable_lsn. Seen here as an fdatasync at open."""
    from _wal_support import WrappedIo

    log = tmp_path / "log"
    write_log(make_io(), log, range(1, 4))
    wrapped = WrappedIo(make_io())
    with Wal.open(log, io=wrapped) as wal:
        assert wrapped.datasyncs >= 1
        assert wal.durable_lsn == 3
    assert os.path.exists(log / "LOCK")
