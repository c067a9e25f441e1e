"""The write-ahead log's benchmark workloads (WAL.md), against what users write by hand.

``python -m storage_io.wal_bench`` runs them and prints medians and ratios; every ratio is
between figures measured in the same run, implementations interleaved within each repeat.
Files go to a fresh temporary directory (``--dir`` to choose; it must be on a real disk,
not tmpfs) and are removed after each run; the filesystem is synced (untimed) after each
removal so no run pays for the previous one's writeback. Each run checks what it wrote
(every record read back and compared): a run that wrote anything else reports WRONG, not a
figure.

Workloads and implementations:

- ``wal_append_256``: 200,000 records of 256 B, then one sync.
  ``hand-pwrite`` frames each record in Python (``struct`` header, ``zlib.crc32``) and
  ``os.pwrite``s it, one ``os.fdatasync`` at the end; ``hand-pwritev`` the same, one
  ``os.pwritev`` per 64 records; ``wal-<backend>`` is ``Wal.append`` per record then
  ``Wal.sync()``.
- ``wal_group_commit``: 8 threads, each 2,000 x (append 256 B + sync).
  ``hand-pwrite``: 8 threads, each ``os.pwrite`` + ``os.fdatasync`` per record on its own
  file; ``wal-<backend>``: one log shared by the 8 threads. Records per fdatasync reported.
- ``wal_replay``: reading back 1 GiB of 4 KiB records and 4,000,000 records of 256 B, page
  cache warm (the setup writes them, untimed). ``hand-read`` reads a hand-framed file and
  checks each record with ``struct`` and ``zlib.crc32``; ``wal-<backend>`` iterates
  ``Wal.replay()``.

``<backend>`` is ``sync`` (`SyncStorageIo`), ``uring`` (`UringStorageIo`, STANDARD ring)
or ``uring-sqpoll`` (SQPOLL).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable

from . import IoUringConfig, RingMode, SyncStorageIo, UringStorageIo
from .interface import StorageIo
from .wal import Wal

__all__ = ["IMPLEMENTATIONS", "WORKLOADS", "main", "run_bench"]

HAND_HEADER = struct.Struct("<IQ")  # payload length, LSN; a CRC32 u32 in front
HAND_CRC = struct.Struct("<I")
PWRITEV_BATCH = 64
THREADS = 8


def payloads(size: int, count: int = 16) -> tuple[bytes, ...]:
    """A few distinct payloads, used in rotation: record i is ``pool[i % len(pool)]``."""
    return tuple(bytes((i * 7 + j) & 0xFF for j in range(size)) for i in range(count))


def hand_frame(lsn: int, payload: bytes) -> tuple[bytes, bytes]:
    """What a user writes by hand: header (CRC32 of length+LSN+payload, length, LSN)."""
    head = HAND_HEADER.pack(len(payload), lsn)
    return HAND_CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + head, payload


def hand_parse(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Read hand-framed records back, checking each; raise ValueError at a bad one."""
    at, end = 0, len(data)
    unpack_crc, unpack_head = HAND_CRC.unpack_from, HAND_HEADER.unpack_from
    while at < end:
        (crc,) = unpack_crc(data, at)
        length, lsn = unpack_head(data, at + 4)
        start = at + 16
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(data[at + 4 : start])) != crc:
            raise ValueError(f"bad record at {at}")
        yield lsn, payload
        at = start + length


# -- implementations ------------------------------------------------------------------


def open_io(name: str) -> StorageIo:
    if name == "wal-sync":
        return SyncStorageIo()
    mode = RingMode.SQPOLL if name == "wal-uring-sqpoll" else RingMode.STANDARD
    return UringStorageIo(config=IoUringConfig(mode=mode))  # type: ignore[abstract]


@dataclass
class Outcome:
    seconds: float
    wrong: str | None = None
    extra: dict[str, float] | None = None


def _append_hand(directory: str, count: int, pool: tuple[bytes, ...], vectored: bool) -> Outcome:
    path = os.path.join(directory, "hand.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        started = time.perf_counter()
        offset = 0
        pwrite, frame = os.pwrite, hand_frame
        if not vectored:
            for lsn in range(1, count + 1):
                head, payload = frame(lsn, pool[lsn % len(pool)])
                offset += pwrite(fd, head + payload, offset)
        else:
            batch: list[bytes] = []
            for lsn in range(1, count + 1):
                batch.extend(frame(lsn, pool[lsn % len(pool)]))
                if len(batch) == 2 * PWRITEV_BATCH:
                    offset += os.pwritev(fd, batch, offset)
                    batch = []
            if batch:
                offset += os.pwritev(fd, batch, offset)
        os.fdatasync(fd)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        got = list(hand_parse(f.read()))
    want = [(lsn, pool[lsn % len(pool)]) for lsn in range(1, count + 1)]
    return Outcome(seconds, None if got == want else "records read back differ")


def _check_log(directory: str, want: Callable[[int], bytes], count: int) -> str | None:
    with Wal.open(directory, io=SyncStorageIo(), create=False) as wal:
        got = 0
        for lsn, payload in wal.replay():
            if payload != want(lsn):
                return f"record {lsn} differs"
            got += 1
    return None if got == count else f"{got} records read back, {count} written"


def append_256(name: str, directory: str, scale: float) -> Outcome:
    count = max(1, int(200_000 * scale))
    pool = payloads(256)
    if name.startswith("hand"):
        return _append_hand(directory, count, pool, vectored=name == "hand-pwritev")
    io = open_io(name)
    log = os.path.join(directory, "log")
    try:
        wal = Wal.open(log, io=io)
        started = time.perf_counter()
        append = wal.append
        for lsn in range(1, count + 1):
            append(pool[lsn % len(pool)])
        wal.sync()
        seconds = time.perf_counter() - started
        wal.close()
    finally:
        io.close()
    return Outcome(seconds, _check_log(log, lambda lsn: pool[lsn % len(pool)], count))


def _run_threads(work: Callable[[int], None]) -> float:
    errors: list[BaseException] = []

    def guarded(tid: int) -> None:
        try:
            work(tid)
        except BaseException as exc:  # reported as WRONG by the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def group_commit(name: str, directory: str, scale: float) -> Outcome:
    per_thread = max(1, int(2_000 * scale))
    pool = payloads(256, THREADS)
    if name.startswith("hand"):
        return _group_commit_hand(directory, per_thread, pool)
    io = open_io(name)
    log = os.path.join(directory, "log")
    try:
        wal = Wal.open(log, io=io)
        syncs_before = _datasyncs(wal)

        def work(tid: int) -> None:
            payload = pool[tid]
            for _ in range(per_thread):
                wal.append(payload)
                wal.sync()

        seconds = _run_threads(work)
        syncs = _datasyncs(wal) - syncs_before
        wal.close()
    finally:
        io.close()
    total = per_thread * THREADS
    wrong = _check_group_log(log, pool, per_thread)
    return Outcome(seconds, wrong, {"records_per_fdatasync": total / max(1, syncs)})


def _datasyncs(wal: Wal) -> int:
    return int(wal._commits_completed)


def _check_group_log(log: str, pool: tuple[bytes, ...], per_thread: int) -> str | None:
    counts = dict.fromkeys(pool, 0)
    with Wal.open(log, io=SyncStorageIo(), create=False) as wal:
        for _lsn, payload in wal.replay():
            if payload not in counts:
                return "a record that no thread wrote"
            counts[payload] += 1
    bad = [n for n in counts.values() if n != per_thread]
    return f"per-thread record counts {sorted(counts.values())}" if bad else None


def _group_commit_hand(directory: str, per_thread: int, pool: tuple[bytes, ...]) -> Outcome:
    paths = [os.path.join(directory, f"hand{t}.log") for t in range(THREADS)]

    def work(tid: int) -> None:
        fd = os.open(paths[tid], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for lsn in range(1, per_thread + 1):
                head, payload = hand_frame(lsn, pool[tid])
                offset += os.pwrite(fd, head + payload, offset)
                os.fdatasync(fd)
        finally:
            os.close(fd)

    seconds = _run_threads(work)
    for tid, path in enumerate(paths):
        with open(path, "rb") as f:
            got = list(hand_parse(f.read()))
        if got != [(lsn, pool[tid]) for lsn in range(1, per_thread + 1)]:
            return Outcome(seconds, f"thread {tid}'s file differs")
    return Outcome(seconds, None, {"records_per_fdatasync": 1.0})


# -- replay ---------------------------------------------------------------------------


@dataclass
class ReplaySetup:
    """The files a replay run reads, written once per size (untimed)."""

    log: str
    hand: str
    count: int
    size: int


def prepare_replay(directory: str, size: int, count: int) -> ReplaySetup:
    pool = payloads(size)
    log = os.path.join(directory, f"log{size}")
    with Wal.open(log) as wal:
        step = 4096
        for start in range(1, count + 1, step):
            wal.append_many(
                pool[lsn % len(pool)] for lsn in range(start, min(count, start + step - 1) + 1)
            )
        wal.sync()
    hand = os.path.join(directory, f"hand{size}.log")
    with open(hand, "wb") as f:
        for lsn in range(1, count + 1):
            head, payload = hand_frame(lsn, pool[lsn % len(pool)])
            f.write(head)
            f.write(payload)
    return ReplaySetup(log, hand, count, size)


def replay(name: str, setup: ReplaySetup) -> Outcome:
    pool = payloads(setup.size)
    n = len(pool)
    seen = 0
    if name == "hand-read":
        started = time.perf_counter()
        with open(setup.hand, "rb") as f:
            for lsn, payload in hand_parse(f.read()):  # noqa: B007 (the last one is checked)
                seen += 1
        seconds = time.perf_counter() - started
    else:
        io = open_io(name)
        try:
            with Wal.open(setup.log, io=io, create=False) as wal:
                started = time.perf_counter()
                for lsn, payload in wal.replay():  # noqa: B007 (the last one is checked)
                    seen += 1
                seconds = time.perf_counter() - started
        finally:
            io.close()
    # Untimed: the last record and the count say the read was whole and in order.
    wrong = None
    if seen != setup.count or lsn != setup.count or payload != pool[lsn % n]:
        wrong = f"read {seen} records, the last LSN {lsn}"
    gb = setup.count * setup.size / 1e9
    return Outcome(seconds, wrong, {"GB/s": gb / seconds, "records/s": setup.count / seconds})


# -- the command ------------------------------------------------------------------------

WORKLOADS = ("wal_append_256", "wal_group_commit", "wal_replay")
IMPLEMENTATIONS = {
    "wal_append_256": ("hand-pwrite", "hand-pwritev", "wal-sync", "wal-uring", "wal-uring-sqpoll"),
    "wal_group_commit": ("hand-pwrite", "wal-sync", "wal-uring", "wal-uring-sqpoll"),
    "wal_replay": ("hand-read", "wal-uring"),
}
BASELINES = {
    "wal_append_256": ("hand-pwrite", "hand-pwritev"),
    "wal_group_commit": ("hand-pwrite",),
    "wal_replay": ("hand-read",),
}


def _fresh_dir(base: str) -> str:
    return tempfile.mkdtemp(prefix="wal_bench_", dir=base)


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()  # untimed: the next run does not pay for freeing these blocks


def _measure(
    workload: str, names: list[str], repeat: int, base: str, scale: float
) -> dict[str, list[Outcome]]:
    results: dict[str, list[Outcome]] = {n: [] for n in names}
    if workload == "wal_replay":
        return _measure_replay(names, repeat, base, scale)
    run = append_256 if workload == "wal_append_256" else group_commit
    for _ in range(repeat):
        for name in names:  # interleaved: A B C, A B C, ...
            directory = _fresh_dir(base)
            try:
                results[name].append(run(name, directory, scale))
            finally:
                _remove(directory)
    return results


def _measure_replay(
    names: list[str], repeat: int, base: str, scale: float
) -> dict[str, list[Outcome]]:
    results: dict[str, list[Outcome]] = {}
    for size, count in ((4096, 262_144), (256, 4_000_000)):
        directory = _fresh_dir(base)
        try:
            setup = prepare_replay(directory, size, max(1, int(count * scale)))
            for _ in range(repeat):
                for name in names:
                    results.setdefault(f"{name} {size} B", []).append(replay(name, setup))
        finally:
            _remove(directory)
    return results


def _figure(workload: str, outcomes: list[Outcome]) -> str:
    median = statistics.median(o.seconds for o in outcomes)
    extra = outcomes[0].extra or {}
    if workload == "wal_replay":
        gbs = statistics.median(o.extra["GB/s"] for o in outcomes if o.extra)
        rps = statistics.median(o.extra["records/s"] for o in outcomes if o.extra)
        return f"{median:.3f} s  {gbs:.2f} GB/s  {rps / 1e6:.2f} M records/s"
    if "records_per_fdatasync" in extra:
        rpf = statistics.median(
            o.extra["records_per_fdatasync"] for o in outcomes if o.extra is not None
        )
        return f"{median:.3f} s  {rpf:.1f} records/fdatasync"
    return f"{median:.3f} s"


def run_bench(args: argparse.Namespace) -> int:
    base = args.dir or tempfile.gettempdir()
    status = 0
    print(f"storage_io.wal_bench: {args.repeat} repeats, scale {args.scale}, in {base}")
    for workload in args.workload:
        names = list(IMPLEMENTATIONS[workload])
        results = _measure(workload, names, args.repeat, base, args.scale)
        medians = {
            name: statistics.median(o.seconds for o in outs)
            for name, outs in results.items()
            if not any(o.wrong for o in outs)
        }
        print(f"\n{workload}")
        for name, outs in results.items():
            wrong = next((o.wrong for o in outs if o.wrong), None)
            if wrong:
                status = 1
                print(f"  {name:24} WRONG: {wrong}")
                continue
            head, _, suffix = name.partition(" ")
            ratios = []
            for base_name in BASELINES[workload]:
                key = f"{base_name} {suffix}".strip()
                if key in medians and base_name != head:
                    ratios.append(f"{medians[key] / medians[name]:.2f}x {base_name}")
            print(f"  {name:24} {_figure(workload, outs):52} {'  '.join(ratios)}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage_io.wal_bench", description=__doc__)
    parser.add_argument(
        "--workload",
        type=lambda s: [w.strip() for w in s.split(",")],
        default=list(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (median); >= 3")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the counts")
    parser.add_argument("--dir", default=None, help="where the files go (a real disk)")
    args = parser.parse_args(argv)
    unknown = [w for w in args.workload if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r}: choose from {', '.join(WORKLOADS)}")
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
