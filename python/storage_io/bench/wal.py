"""The write-ahead log's workloads (WAL.md), against what users write by hand.

Registered as WAL1..WAL4 (``--workload
wal_append_256,wal_group_commit,wal_replay,wal_replay_256``), out of the default run (the
README's first command stays W1..W5, about two minutes; these take minutes more):

- ``wal_append_256``: 200,000 records of 256 B, then one sync. ``pwrite`` is the loop a
  user writes: each record framed in Python (a ``struct`` header, ``zlib.crc32``) and
  ``os.pwrite``-n, one ``os.fdatasync`` at the end; ``pwritev`` the same with one
  ``os.pwritev`` per 64 records; ``sync``/``uring``/``uring-sqpoll`` are ``Wal.append``
  per record on that backend, then ``Wal.sync()``; their ``-v`` rows ``Wal.append_many``
  of 64 records.
- ``wal_group_commit``: 8 threads, each 2,000 x (append 256 B + sync). ``pwrite``: 8
  threads each ``os.pwrite`` + ``os.fdatasync`` per record on a file of its own; the
  backends: one log shared by the 8 threads. Records per fdatasync reported.
- ``wal_replay`` (4 KiB records, 1 GiB at scale 1) and ``wal_replay_256`` (4,000,000
  records of 256 B): reading the records back, page cache warm (set-up writes them,
  untimed). ``pwrite``: read the hand-framed file and check each record with ``struct``
  and ``zlib.crc32``; the backends: iterate ``Wal.replay()`` of a log written through them.

Every run checks what it wrote or read (each record compared): anything else is WRONG.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..wal import Wal
from .model import KIB, Workload, register_workload

if TYPE_CHECKING:
    from ..interface import StorageIo
    from .run import PreparedRun

__all__ = ["WAL_APPEND_256", "WAL_GROUP_COMMIT", "WAL_REPLAY", "WAL_REPLAY_256"]

HAND_HEADER = struct.Struct("<IQ")  # payload length, LSN; after a CRC32 (u32)
HAND_CRC = struct.Struct("<I")
HAND_HEADER_LEN = 16
PWRITEV_RECORDS = 64
THREADS = 8


def hand_frame(lsn: int, payload: bytes) -> bytes:
    """A record as users frame it by hand: CRC32 of (length, LSN, payload), then those."""
    head = HAND_HEADER.pack(len(payload), lsn)
    return HAND_CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + head


def hand_parse(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The hand-framed records of `data`, each checked; ValueError at a bad one."""
    at, end = 0, len(data)
    unpack_crc, unpack_head = HAND_CRC.unpack_from, HAND_HEADER.unpack_from
    while at < end:
        (crc,) = unpack_crc(data, at)
        length, lsn = unpack_head(data, at + 4)
        start = at + HAND_HEADER_LEN
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(data[at + 4 : start])) != crc:
            raise ValueError(f"bad record at offset {at}")
        yield lsn, payload
        at = start + length


def _expected(run: PreparedRun, lsn: int) -> bytes:
    return run.pool[(lsn - 1) % len(run.pool)]


def _check_hand_file(run: PreparedRun, path: str, count: int) -> str | None:
    with open(path, "rb") as f:
        got = 0
        for lsn, payload in hand_parse(f.read()):
            got += 1
            if lsn != got or payload != _expected(run, lsn):
                return f"{path}: record {got} differs"
    return None if got == count else f"{path}: {got} records, {count} written"


def _check_log(run: PreparedRun, directory: str, count: int) -> str | None:
    from .. import SyncStorageIo

    with Wal.open(directory, io=SyncStorageIo(), create=False) as wal:
        got = 0
        for lsn, payload in wal.replay():
            got += 1
            if lsn != got or payload != _expected(run, lsn):
                return f"log record {got} differs"
    return None if got == count else f"log holds {got} records, {count} written"


# -- wal_append_256 ---------------------------------------------------------------------


def _open_log(run: PreparedRun) -> None:
    if run.form in ("api", "apiv"):
        run.state["log"] = tempfile.mkdtemp(prefix="wal-", dir=run.directory)
        io: StorageIo = run.target  # type: ignore[assignment]
        run.state["wal"] = Wal.open(run.state["log"], io=io)


def _close_log(run: PreparedRun) -> None:
    wal = run.state.get("wal")
    if wal is not None:
        wal.close()


def _check_appended(run: PreparedRun) -> str | None:
    try:
        if run.form in ("pwrite", "pwritev"):
            return _check_hand_file(run, run.path, run.records)
        return _check_log(run, run.state["log"], run.records)
    finally:
        if "log" in run.state:
            shutil.rmtree(run.state["log"])


def _append_pwrite(run: PreparedRun) -> None:
    fd, pool, n = run.raw_fd, run.pool, len(run.pool)
    pwrite, frame = os.pwrite, hand_frame
    offset = 0
    for lsn in range(1, run.count + 1):
        payload = pool[(lsn - 1) % n]
        offset += pwrite(fd, frame(lsn, payload) + payload, offset)
    os.fdatasync(fd)


def _append_pwritev(run: PreparedRun) -> None:
    fd, pool, n = run.raw_fd, run.pool, len(run.pool)
    frame = hand_frame
    offset = 0
    batch: list[bytes] = []
    for lsn in range(1, run.count + 1):
        payload = pool[(lsn - 1) % n]
        batch += (frame(lsn, payload), payload)
        if len(batch) == 2 * PWRITEV_RECORDS:
            offset += os.pwritev(fd, batch, offset)
            batch = []
    if batch:
        os.pwritev(fd, batch, offset)
    os.fdatasync(fd)


def _append_wal(run: PreparedRun) -> None:
    wal: Wal = run.state["wal"]
    append, pool, n = wal.append, run.pool, len(run.pool)
    for lsn in range(1, run.count + 1):
        append(pool[(lsn - 1) % n])
    wal.sync()


def _append_wal_many(run: PreparedRun) -> None:
    wal: Wal = run.state["wal"]
    pool, n = run.pool, len(run.pool)
    for first in range(1, run.count + 1, PWRITEV_RECORDS):
        last = min(run.count, first + PWRITEV_RECORDS - 1)
        wal.append_many([pool[(lsn - 1) % n] for lsn in range(first, last + 1)])
    wal.sync()


WAL_APPEND_256 = register_workload(
    Workload(
        "WAL1",
        "wal_append_256",
        "200,000 log records of 256 B, then one sync (pwrite: framed by hand, os.pwrite each)",
        full_count=200_000,
        record_size=256,
        bodies={
            "pwrite": _append_pwrite,
            "pwritev": _append_pwritev,
            "api": _append_wal,
            "apiv": _append_wal_many,
        },
        headline="records_per_s",
        shown=("records_per_s", "mib_per_s"),
        in_default_run=False,
        quick_scale=0.02,
        setup=_open_log,
        teardown=_close_log,
        check=_check_appended,
    )
)


# -- wal_group_commit -------------------------------------------------------------------


def _in_threads(work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(tid: int) -> None:
        try:
            work(tid)
        except BaseException as exc:  # re-raised below: the run reports it
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _group_paths(run: PreparedRun) -> list[str]:
    return [f"{run.path}.thread{t}" for t in range(THREADS)]


def _group_pwrite(run: PreparedRun) -> None:
    paths = _group_paths(run)

    def work(tid: int) -> None:
        fd = os.open(paths[tid], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for lsn in range(1, run.count + 1):
                payload = _expected(run, lsn)
                offset += os.pwrite(fd, hand_frame(lsn, payload) + payload, offset)
                os.fdatasync(fd)
        finally:
            os.close(fd)

    _in_threads(work)
    run.extra_figures["records_per_fdatasync"] = 1.0


def _group_wal(run: PreparedRun) -> None:
    wal: Wal = run.state["wal"]
    before = wal._commits_completed

    def work(tid: int) -> None:
        payload = run.pool[tid % len(run.pool)]
        for _ in range(run.count):
            wal.append(payload)
            wal.sync()

    _in_threads(work)
    commits = max(1, wal._commits_completed - before)
    run.extra_figures["records_per_fdatasync"] = run.records / commits


def _check_group(run: PreparedRun) -> str | None:
    if run.form == "pwrite":
        try:
            for path in _group_paths(run):
                wrong = _check_hand_file(run, path, run.count)
                if wrong:
                    return wrong
            return None
        finally:
            for path in _group_paths(run):
                if os.path.exists(path):
                    os.unlink(path)
    from .. import SyncStorageIo

    counts: dict[bytes, int] = {}
    try:
        with Wal.open(run.state["log"], io=SyncStorageIo(), create=False) as wal:
            for _lsn, payload in wal.replay():
                counts[payload] = counts.get(payload, 0) + 1
    finally:
        shutil.rmtree(run.state["log"])
    want = {run.pool[t % len(run.pool)]: run.count for t in range(THREADS)}
    return None if counts == want else f"records per thread {sorted(counts.values())}"


WAL_GROUP_COMMIT = register_workload(
    Workload(
        "WAL2",
        "wal_group_commit",
        "8 threads, each 2,000 x (append 256 B + sync); pwrite: each thread os.pwrite + "
        "os.fdatasync per record on its own file",
        full_count=2_000,
        record_size=256,
        records_per_unit=THREADS,
        bodies={"pwrite": _group_pwrite, "api": _group_wal},
        headline="records_per_s",
        shown=("records_per_s", "records_per_fdatasync"),
        labels={"records_per_fdatasync": "records/fdatasync"},
        in_default_run=False,
        quick_scale=0.02,
        setup=_open_log,
        teardown=_close_log,
        check=_check_group,
    )
)


# -- wal_replay -------------------------------------------------------------------------


def _write_for_replay(run: PreparedRun) -> None:
    """Untimed: the records the body reads back, hand-framed or as a log."""
    if run.form == "pwrite":
        with open(run.path, "wb") as f:
            for lsn in range(1, run.count + 1):
                payload = _expected(run, lsn)
                f.write(hand_frame(lsn, payload))
                f.write(payload)
        return
    _open_log(run)
    wal: Wal = run.state["wal"]
    for first in range(1, run.count + 1, 4096):
        last = min(run.count, first + 4095)
        wal.append_many(_expected(run, lsn) for lsn in range(first, last + 1))
    wal.sync()


def _replay_pwrite(run: PreparedRun) -> None:
    seen = 0
    with open(run.path, "rb") as f:
        for lsn, payload in hand_parse(f.read()):  # noqa: B007 (the last is checked)
            seen += 1
    run.state["last"] = (seen, lsn, payload)


def _replay_wal(run: PreparedRun) -> None:
    seen = 0
    for lsn, payload in run.state["wal"].replay():  # noqa: B007 (the last is checked)
        seen += 1
    run.state["last"] = (seen, lsn, payload)


def _check_replayed(run: PreparedRun) -> str | None:
    if "log" in run.state:
        shutil.rmtree(run.state["log"])
    seen, lsn, payload = run.state.get("last", (0, 0, b""))
    if seen != run.count or lsn != run.count or payload != _expected(run, lsn):
        return f"read {seen} records, the last LSN {lsn}; {run.count} were written"
    run.extra_figures["gb_per_s"] = run.count * run.workload.record_size / 1e9 / run.elapsed_s
    return None


def _replay_workload(wid: str, name: str, size: int, count: int, what: str) -> Workload:
    return register_workload(
        Workload(
            wid,
            name,
            f"read back {what} (page cache warm), every record checked; pwrite: a "
            "hand-framed file read and checked with struct + zlib.crc32",
            full_count=count,
            record_size=size,
            bodies={"pwrite": _replay_pwrite, "api": _replay_wal},
            headline="records_per_s",
            shown=("records_per_s", "gb_per_s"),
            labels={"gb_per_s": "GB/s read"},
            default_scale=0.25,
            in_default_run=False,
            quick_scale=2048 / count,
            setup=_write_for_replay,
            teardown=_close_log,
            check=_check_replayed,
        )
    )


WAL_REPLAY = _replay_workload("WAL3", "wal_replay", 4 * KIB, 262_144, "1 GiB of 4 KiB records")
WAL_REPLAY_256 = _replay_workload(
    "WAL4", "wal_replay_256", 256, 4_000_000, "4,000,000 records of 256 B"
)
