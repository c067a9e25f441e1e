"""The write-ahead log's workloads (WAL.md, "Performance"), against what users write by hand.

Registered when the bench package is imported; ``python -m storage_io bench --workload
wal_append_256,wal_group_commit,wal_replay`` runs them (they are not in the default run:
their full counts take minutes, the replay files alone are 4 GiB). ``wal_replay`` is a
group of two workloads, one per record size WAL.md names.

Implementations (a row each, interleaved with the others of the workload):

- ``hand-pwrite``: a Python loop that frames each record itself (a ``struct`` header and
  ``zlib.crc32``) and ``os.pwrite``s it, one ``os.fdatasync`` at the end; in
  ``wal_group_commit`` 8 threads, each ``os.pwrite`` + ``os.fdatasync`` per record on a file
  of its own. ``hand-pwritev``: the same framing, one ``os.pwritev`` per 64 records.
- ``wal-sync``, ``wal-uring``, ``wal-uring-sqpoll``: `Wal` over `SyncStorageIo`,
  `UringStorageIo` (STANDARD) and `UringStorageIo` (SQPOLL): ``append`` per record then
  ``sync()``; in ``wal_group_commit`` one log shared by the 8 threads, each doing
  ``append`` + ``sync()`` per record.
- ``hand-read`` / ``wal``: reading the records back with the page cache warm (the files
  are written once per directory and size, untimed, and shared by the repeats): the hand
  loop reads the file and checks every record with ``struct`` and ``zlib.crc32``; ``wal``
  iterates ``Wal.replay()`` (the native reader: the backend plays no part, so one row).

Every run is checked after the timing: the log (or the hand-framed file) is read back and
must hold exactly the records written, in order (per thread, for group commit); the replay
runs must have seen every record, the last one intact. Anything else reports WRONG.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from typing import Callable

from .. import SyncStorageIo
from ..wal import Wal
from .implementations import (
    Implementation,
    PwriteBaseline,
    Target,
    _sqpoll_ring,
    _standard_ring,
    register_implementation,
)
from .model import KIB, Workload, register_workload
from .run import PreparedRun

__all__ = ["L1", "L2", "L3", "L4", "PWRITEV_BATCH", "THREADS", "hand_frame", "hand_parse"]

HAND_CRC = struct.Struct("<I")  # CRC32 of the header's other fields and the payload
HAND_HEADER = struct.Struct("<IQ")  # payload length, LSN
PWRITEV_BATCH = 64  # records per os.pwritev of hand-pwritev (WAL.md)
THREADS = 8  # wal_group_commit's threads (WAL.md)
READ_CHUNK = 4 * 1024 * KIB  # how the replay files are read once to warm the page cache


def hand_frame(lsn: int, payload: bytes) -> tuple[bytes, bytes]:
    """What a user writes by hand: a header (CRC32, length, LSN) then the payload."""
    head = HAND_HEADER.pack(len(payload), lsn)
    return HAND_CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + head, payload


def hand_parse(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The hand-framed records in `data`, each checked; ValueError at the first bad one."""
    at, end = 0, len(data)
    unpack_crc, unpack_head, crc32 = HAND_CRC.unpack_from, HAND_HEADER.unpack_from, zlib.crc32
    while at < end:
        (crc,) = unpack_crc(data, at)
        length, lsn = unpack_head(data, at + 4)
        start = at + 16
        payload = data[start : start + length]
        if len(payload) != length or crc32(payload, crc32(data[at + 4 : start])) != crc:
            raise ValueError(f"bad record at offset {at}")
        yield lsn, payload
        at = start + length


def _hand_file_problem(path: str, want: Sequence[tuple[int, bytes]]) -> str | None:
    with open(path, "rb") as f:
        data = f.read()
    try:
        got = list(hand_parse(data))
    except ValueError as exc:
        return str(exc)
    if got == list(want):
        return None
    return f"{len(got)} records read back, {len(want)} written, or not the ones written"


def _expected(run: PreparedRun) -> list[tuple[int, bytes]]:
    """Record LSN i of a single-writer run is ``pool[i % len(pool)]``, LSNs from 1."""
    pool = run.pool
    return [(lsn, pool[lsn % len(pool)]) for lsn in range(1, run.records + 1)]


# -- logs of the Wal rows: opened untimed, checked and removed after the timing ----------


def _open_log(run: PreparedRun) -> None:
    if isinstance(run.target, PwriteBaseline):
        return
    run.state["log_dir"] = log_dir = tempfile.mkdtemp(prefix="wal-", dir=run.directory)
    run.state["wal"] = Wal.open(log_dir, io=run.target)  # type: ignore[arg-type]


def _close_and_check_log(run: PreparedRun, problem: Callable[[Wal], str | None]) -> None:
    """Teardown of the Wal rows: close the log, read it back (unless the run already went
    wrong), remove it. The verdict waits in ``run.state["wrong"]`` for the check hook."""
    wal: Wal | None = run.state.pop("wal", None)
    log_dir: str | None = run.state.pop("log_dir", None)
    try:
        if wal is not None:
            wal.close()
        if log_dir is not None and run.problem is None:
            with Wal.open(log_dir, io=SyncStorageIo(), create=False) as reread:
                run.state["wrong"] = problem(reread)
    finally:
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)


def _verdict(run: PreparedRun) -> str | None:
    return run.state.get("wrong")


# -- wal_append_256 ----------------------------------------------------------------------


def _append_hand_pwrite(run: PreparedRun) -> None:
    fd, pool, frame, pwrite = run.raw_fd, run.pool, hand_frame, os.pwrite
    n = len(pool)
    offset = 0
    for lsn in range(1, run.records + 1):
        head, payload = frame(lsn, pool[lsn % n])
        offset += pwrite(fd, head + payload, offset)
    os.fdatasync(fd)


def _append_hand_pwritev(run: PreparedRun) -> None:
    fd, pool, frame, pwritev = run.raw_fd, run.pool, hand_frame, os.pwritev
    n = len(pool)
    offset = 0
    batch: list[bytes] = []
    for lsn in range(1, run.records + 1):
        batch.extend(frame(lsn, pool[lsn % n]))
        if len(batch) == 2 * PWRITEV_BATCH:
            offset += pwritev(fd, batch, offset)
            batch = []
    if batch:
        offset += pwritev(fd, batch, offset)
    os.fdatasync(fd)


def _append_wal(run: PreparedRun) -> None:
    wal: Wal = run.state["wal"]
    pool, append = run.pool, wal.append
    n = len(pool)
    for lsn in range(1, run.records + 1):
        append(pool[lsn % n])
    wal.sync()


def _append_teardown(run: PreparedRun) -> None:
    if isinstance(run.target, PwriteBaseline):
        return

    def problem(wal: Wal) -> str | None:
        want = _expected(run)
        got = list(wal.replay())
        return None if got == want else f"{len(got)} records read back, {len(want)} written"

    _close_and_check_log(run, problem)


def _append_check(run: PreparedRun) -> str | None:
    if isinstance(run.target, PwriteBaseline):
        return _hand_file_problem(run.path, _expected(run))
    return _verdict(run)


L1 = register_workload(
    Workload(
        "L1",
        "wal_append_256",
        "200,000 log records of 256 B, then one sync",
        full_count=200_000,
        record_size=256,
        bodies={
            "hand-pwrite": _append_hand_pwrite,
            "hand-pwritev": _append_hand_pwritev,
            "wal": _append_wal,
        },
        headline="records_per_s",
        shown=("records_per_s",),
        in_default_run=False,
        quick_scale=0.02,
        setup=_open_log,
        teardown=_append_teardown,
        check=_append_check,
        note="wal_append_256 (L1, WAL.md): Wal.append per record then sync(), against "
        "hand-pwrite (struct header + zlib.crc32 + os.pwrite per record, one fdatasync) and "
        f"hand-pwritev (the same framing, one os.pwritev per {PWRITEV_BATCH} records); "
        "targets >= 4x hand-pwrite, >= 1.5x hand-pwritev.",
    )
)


# -- wal_group_commit -----------------------------------------------------------------------


def _in_threads(work: Callable[[int], None]) -> None:
    """Run ``work(0..THREADS-1)`` in THREADS threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(tid: int) -> None:
        try:
            work(tid)
        except BaseException as exc:  # re-raised below: the run is an ERROR
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _group_setup(run: PreparedRun) -> None:
    if isinstance(run.target, PwriteBaseline):
        # Each thread has a file of its own (the run's file is thread 0's).
        run.state["hand_paths"] = paths = [run.path] + [
            f"{run.path}.{tid}" for tid in range(1, THREADS)
        ]
        run.state["hand_fds"] = [run.raw_fd] + [
            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for path in paths[1:]
        ]
        return
    _open_log(run)
    run.state["commits_before"] = run.state["wal"]._commits_completed


def _group_hand(run: PreparedRun) -> None:
    fds: list[int] = run.state["hand_fds"]
    per_thread, pool = run.count, run.pool

    def work(tid: int) -> None:
        fd, payload, pwrite, fdatasync = fds[tid], pool[tid], os.pwrite, os.fdatasync
        offset = 0
        for lsn in range(1, per_thread + 1):
            head, body = hand_frame(lsn, payload)
            offset += pwrite(fd, head + body, offset)
            fdatasync(fd)

    _in_threads(work)
    run.extra_figures["records_per_fdatasync"] = 1.0


def _group_wal(run: PreparedRun) -> None:
    wal: Wal = run.state["wal"]
    per_thread, pool = run.count, run.pool

    def work(tid: int) -> None:
        payload, append, sync = pool[tid], wal.append, wal.sync
        for _ in range(per_thread):
            append(payload)
            sync()

    _in_threads(work)
    syncs = wal._commits_completed - run.state["commits_before"]
    run.extra_figures["records_per_fdatasync"] = run.records / max(1, syncs)


def _group_teardown(run: PreparedRun) -> None:
    if not isinstance(run.target, PwriteBaseline):
        pool, per_thread = run.pool, run.count

        def problem(wal: Wal) -> str | None:
            counts = dict.fromkeys(pool[:THREADS], 0)
            for _lsn, payload in wal.replay():
                if payload not in counts:
                    return "a record that no thread wrote"
                counts[payload] += 1
            bad = [n for n in counts.values() if n != per_thread]
            return f"records per thread {sorted(counts.values())}" if bad else None

        _close_and_check_log(run, problem)
        return
    for fd in run.state["hand_fds"][1:]:  # thread 0's is the run's own, closed by the run
        os.close(fd)
    try:
        run.state["wrong"] = _group_hand_problem(run) if run.problem is None else None
    finally:
        for path in run.state["hand_paths"][1:]:
            os.unlink(path)


def _group_hand_problem(run: PreparedRun) -> str | None:
    for tid, path in enumerate(run.state["hand_paths"]):
        want = [(lsn, run.pool[tid]) for lsn in range(1, run.count + 1)]
        wrong = _hand_file_problem(path, want)
        if wrong is not None:
            return f"thread {tid}'s file: {wrong}"
    return None


L2 = register_workload(
    Workload(
        "L2",
        "wal_group_commit",
        "8 threads, each 2,000 x (append 256 B + sync)",
        full_count=2_000,
        record_size=256,
        records_per_unit=THREADS,
        bodies={"hand-pwrite": _group_hand, "wal": _group_wal},
        headline="records_per_s",
        shown=("records_per_s", "records_per_fdatasync"),
        labels={"records_per_fdatasync": "records/fdatasync"},
        in_default_run=False,
        quick_scale=0.02,
        setup=_group_setup,
        teardown=_group_teardown,
        check=_verdict,
        note="wal_group_commit (L2, WAL.md): 8 threads sharing one log, each append + sync() "
        "per record, against hand-pwrite: 8 threads each os.pwrite + os.fdatasync per "
        "record on a file of its own; target >= 5x.",
    )
)


# -- wal_replay ---------------------------------------------------------------------------

# The files a replay run reads, by (directory, record size, count): written once (untimed)
# and read by every repeat and row; they go with the directory.
_REPLAY_FILES: dict[tuple[str, int, int], tuple[str, str]] = {}


def _replay_files(run: PreparedRun) -> tuple[str, str]:
    key = (run.directory, run.workload.record_size, run.records)
    files = _REPLAY_FILES.get(key)
    if files is not None and all(os.path.exists(path) for path in files):
        return files
    folder = tempfile.mkdtemp(prefix=f"wal_replay-{key[1]}-", dir=run.directory)
    log, hand = os.path.join(folder, "log"), os.path.join(folder, "hand.log")
    want = _expected(run)
    with Wal.open(log, io=SyncStorageIo()) as wal:
        for start in range(0, len(want), 4096):
            wal.append_many(payload for _lsn, payload in want[start : start + 4096])
        wal.sync()
    with open(hand, "wb") as f:
        for lsn, payload in want:
            f.writelines(hand_frame(lsn, payload))
    # Read both once, untimed, so every row starts with the page cache equally warm.
    for path in (hand, *(os.path.join(log, name) for name in sorted(os.listdir(log)))):
        with open(path, "rb") as f:
            while f.read(READ_CHUNK):
                pass
    _REPLAY_FILES[key] = (log, hand)
    return log, hand


def _replay_setup(run: PreparedRun) -> None:
    log, hand = _replay_files(run)
    run.state["hand"] = hand
    if not isinstance(run.target, PwriteBaseline):
        run.state["wal"] = Wal.open(log, io=run.target, create=False)  # type: ignore[arg-type]


def _replay_hand(run: PreparedRun) -> None:
    seen, last = 0, None
    with open(run.state["hand"], "rb") as f:
        for last in hand_parse(f.read()):  # noqa: B007 (the last one is checked)
            seen += 1
    run.state["seen"], run.state["last"] = seen, last


def _replay_wal(run: PreparedRun) -> None:
    seen, last = 0, None
    for last in run.state["wal"].replay():  # noqa: B007 (the last one is checked)
        seen += 1
    run.state["seen"], run.state["last"] = seen, last


def _replay_teardown(run: PreparedRun) -> None:
    wal: Wal | None = run.state.pop("wal", None)
    if wal is not None:
        wal.close()
    if run.problem is None and run.elapsed_s > 0:
        run.extra_figures["gb_per_s"] = run.records * run.workload.record_size / 1e9 / run.elapsed_s


def _replay_check(run: PreparedRun) -> str | None:
    """Every record seen, the last one the last written (each was checked as it was read,
    by the native reader or by hand_parse)."""
    seen, last = run.state.get("seen"), run.state.get("last")
    pool = run.pool
    want_last = (run.records, pool[run.records % len(pool)])
    if seen != run.records or last != want_last:
        got = None if last is None else last[0]
        return f"read {seen} records, the last LSN {got}; {run.records} written"
    return None


def _replay_workload(wid: str, name: str, size: int, count: int, what: str) -> Workload:
    return register_workload(
        Workload(
            wid,
            name,
            f"reading back {what}, page cache warm",
            full_count=count,
            record_size=size,
            bodies={"hand-read": _replay_hand, "wal-replay": _replay_wal},
            headline="records_per_s",
            shown=("gb_per_s", "records_per_s"),
            labels={"gb_per_s": "GB/s"},
            in_default_run=False,
            quick_scale=2048 / count,
            group="wal_replay",
            setup=_replay_setup,
            teardown=_replay_teardown,
            check=_replay_check,
            note="wal_replay (L3, L4; WAL.md): for lsn, payload in Wal.replay(), against "
            "hand-read (read the file, struct + zlib.crc32 per record); targets >= 1 GB/s "
            "of 4 KiB records, >= 3 million records/s of 256 B.",
        )
    )


L3 = _replay_workload("L3", "wal_replay_4k", 4 * KIB, 262_144, "1 GiB of 4 KiB records")
L4 = _replay_workload("L4", "wal_replay_256", 256, 4_000_000, "4,000,000 records of 256 B")


# -- implementations ------------------------------------------------------------------------


def _register_implementations() -> None:
    hand: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("hand-pwrite", ("hand-pwrite",)),
        ("hand-pwritev", ("hand-pwrite", "hand-pwritev")),
        ("hand-read", ("hand-read",)),
    )
    for name, compared in hand:
        register_implementation(
            Implementation(
                name, PwriteBaseline, name, compared_with=compared, follows_pattern=False
            )
        )
    logs: tuple[tuple[str, Callable[[], Target]], ...] = (
        ("wal-sync", SyncStorageIo),
        ("wal-uring", _standard_ring),
        ("wal-uring-sqpoll", _sqpoll_ring),
    )
    for name, create in logs:
        register_implementation(
            Implementation(
                name,
                create,
                "wal",
                compared_with=("hand-pwrite", "hand-pwritev"),
                follows_pattern=False,
            )
        )
    register_implementation(
        Implementation(
            "wal", SyncStorageIo, "wal-replay", compared_with=("hand-read",), follows_pattern=False
        )
    )


_register_implementations()
