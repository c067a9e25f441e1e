"""WAL.md guarantee 6 (threads, group commit) and the blocking rules of `wait_durable`, on
every backend: many threads appending and waiting at once, one fdatasync shared by many
waiters, timeouts, and waiting without holding the GIL."""

from __future__ import annotations

import threading
import time

from _wal_support import WrappedIo, payload_for, replayed, run_threads
from storage_io import Wal


def test_threads_appending_and_syncing_at_once_get_unique_lsns_in_file_order(make_io, tmp_path):
    threads, per_thread = 8, 150
    with Wal.open(tmp_path / "log", io=make_io(), segment_bytes=8192) as wal:

        def work(tid: int) -> list[tuple[int, bytes]]:
            mine = []
            for seq in range(per_thread):
                payload = b"%d:%d:" % (tid, seq) + bytes([65 + tid]) * (seq % 50)
                if seq % 10 == 9:
                    first = wal.append_many([payload, payload + b"+"])
                    mine += [(first - 1, payload), (first, payload + b"+")]
                else:
                    mine.append((wal.append(payload), payload))
                if seq % 3 == 0:
                    assert wal.wait_durable(wal.sync(), timeout=30)
                elif seq % 3 == 1:
                    wal.commit()
            return mine

        results = run_threads(work, threads)
        wal.sync()
        written = sorted(pair for mine in results for pair in mine)
        lsns = [lsn for lsn, _ in written]
        assert lsns == list(range(1, len(lsns) + 1)), "LSNs not unique and consecutive"
        assert replayed(wal) == written
        assert wal.durable_lsn == wal.last_lsn == len(lsns)
        for mine in results:  # each thread's records in the order it appended them
            assert [lsn for lsn, _ in mine] == sorted(lsn for lsn, _ in mine)


def test_append_many_is_consecutive_while_other_threads_append_across_rotations(make_io, tmp_path):
    with Wal.open(tmp_path / "log", io=make_io(), segment_bytes=600) as wal:

        def work(tid: int) -> list[tuple[int, int]]:
            blocks = []
            for _ in range(20):
                last = wal.append_many([bytes([tid]) * 40] * 7)
                blocks.append((last - 6, last))
                wal.append(b"single")
            return blocks

        results = run_threads(work, 4)
        wal.sync()
        records = dict(replayed(wal))
        for tid, blocks in enumerate(results):
            for first, last in blocks:
                assert [records[lsn] for lsn in range(first, last + 1)] == [bytes([tid]) * 40] * 7


def test_many_waiters_share_one_fdatasync(make_io, tmp_path):
    wrapped = WrappedIo(make_io())
    with Wal.open(tmp_path / "log", io=wrapped) as wal:
        lsns = [wal.append(payload_for(i)) for i in range(1, 101)]
        before = wrapped.datasyncs
        start = threading.Barrier(8)

        def wait(i: int) -> bool:
            start.wait()
            return wal.wait_durable(lsns[i * 12], timeout=30)

        assert run_threads(wait, 8) == [True] * 8
        assert wrapped.datasyncs - before == 1, "waiters did not share the fdatasync"
        assert wal.durable_lsn == 100


def test_wait_durable_times_out_and_a_later_wait_succeeds(make_io, tmp_path):
    wrapped = WrappedIo(make_io())
    with Wal.open(tmp_path / "log", io=wrapped) as wal:
        lsn = wal.append(b"held")
        wrapped.gate.clear()  # the io's completions are held back
        assert wal.wait_durable(lsn, timeout=0) is False
        started = time.monotonic()
        assert wal.wait_durable(lsn, timeout=0.2) is False
        assert time.monotonic() - started < 5
        assert wal.durable_lsn == 0
        waiter = threading.Thread(target=lambda: wal.wait_durable(lsn), daemon=True)
        waiter.start()
        time.sleep(0.05)
        wrapped.gate.set()
        waiter.join(30)
        assert not waiter.is_alive()
        assert wal.wait_durable(lsn, timeout=10) is True
        assert wal.durable_lsn == lsn


def test_a_waiter_does_not_hold_the_gil_or_the_log(make_io, tmp_path):
    wrapped = WrappedIo(make_io())
    with Wal.open(tmp_path / "log", io=wrapped) as wal:
        lsn = wal.append(b"first")
        wrapped.gate.clear()
        waiter = threading.Thread(target=lambda: wal.wait_durable(lsn), daemon=True)
        waiter.start()
        time.sleep(0.05)
        # While the leader sleeps in the io, others append, commit and ask at once.
        started = time.monotonic()
        for i in range(100):
            wal.append(b"x%d" % i)
        wal.commit()
        assert wal.durable_lsn == 0 and wal.last_lsn == 101
        assert time.monotonic() - started < 5
        wrapped.gate.set()
        waiter.join(30)
        assert not waiter.is_alive()
        assert wal.sync() == 101
