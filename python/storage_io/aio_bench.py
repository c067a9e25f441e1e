"""The asyncio workloads of ASYNC.md, against what asyncio programs use today.

    python -m storage_io.aio_bench [--workload aio_append_4k|aio_wal_commit] [--scale 1.0]
                                   [--repeat 3] [--dir DIR] [--json]

- ``aio_append_4k``: 64 tasks, 100,000 awaited appends of 4 KiB in all, one datasync at
  the end; storage_io.aio against aiofile (caio), aiofiles (both with 64 tasks doing the
  same) and a plain synchronous ``os.pwrite`` loop writing the same records.
- ``aio_wal_commit``: 64 tasks each awaiting 1,000 durable ``AsyncWal.append`` of 256 B,
  against 64 tasks each doing ``await asyncio.to_thread(pwrite + fdatasync)`` per record;
  records per fdatasync and the p99 lag of a ticker task on the same loop beside each.

Implementations run interleaved, `--repeat` rounds, on fresh files; the table gives
medians and each one's time as a multiple of storage_io's (ratio > 1: storage_io is that
many times faster). aiofile and aiofiles are optional (``pip install storage_io[bench]``);
a missing one is listed as skipped with the reason. Every run checks its file: a wrong
size prints WRONG instead of a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable

TASKS = 64
APPEND_RECORDS = 100_000
APPEND_SIZE = 4096
WAL_RECORDS_PER_TASK = 1_000
WAL_SIZE = 256

Result = dict[str, Any]
Runner = Callable[[Path, float], Awaitable[Result]]


class Skip(Exception):
    """This implementation cannot run here; the message says why."""


class LagTicker:
    """A task waking every millisecond; the p99 of its lateness is the loop's lag."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - start - 0.001)

    def p99_ms(self) -> float:
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[int(len(ordered) * 0.99)] * 1e3


async def _with_ticker(work: Awaitable[Any]) -> float:
    ticker = LagTicker()
    task = asyncio.ensure_future(ticker.run())
    try:
        await work
    finally:
        task.cancel()
    return ticker.p99_ms()


def _share(total: int) -> list[int]:
    """`total` split over TASKS tasks."""
    return [total // TASKS + (1 if t < total % TASKS else 0) for t in range(TASKS)]


# -- aio_append_4k ---------------------------------------------------------------------------


def _append_count(scale: float) -> int:
    return max(TASKS, int(APPEND_RECORDS * scale))


async def append_storage_io(path: Path, scale: float, backend: str = "auto") -> Result:
    from storage_io import open_storage_io
    from storage_io.aio import AsyncStorageIo

    record = b"r" * APPEND_SIZE
    async with AsyncStorageIo(open_storage_io(backend=backend)) as aio:
        # Passed in, so not closed by aclose: closed below.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fd = aio.register_fd(descriptor)
        os.close(descriptor)

        async def appender(count: int) -> None:
            for _ in range(count):
                await aio.append(fd, record)

        start = time.perf_counter()
        await asyncio.gather(*(appender(n) for n in _share(_append_count(scale))))
        await aio.datasync(fd)
        seconds = time.perf_counter() - start
        name = aio.backend
        await aio.deregister_fd(fd)
    aio.io.close()
    return {"seconds": seconds, "backend": name}


async def append_aiofile(path: Path, scale: float) -> Result:
    try:
        from aiofile import AIOFile
    except ImportError as exc:
        raise Skip(f"aiofile is not installed ({exc}); pip install storage_io[bench]") from None
    record = b"r" * APPEND_SIZE
    async with AIOFile(str(path), "wb") as afp:
        position = 0

        async def appender(count: int) -> None:
            nonlocal position
            for _ in range(count):
                offset = position
                position += APPEND_SIZE
                await afp.write(record, offset=offset)

        start = time.perf_counter()
        await asyncio.gather(*(appender(n) for n in _share(_append_count(scale))))
        await afp.fdsync()
        seconds = time.perf_counter() - start
    return {"seconds": seconds}


async def append_aiofiles(path: Path, scale: float) -> Result:
    try:
        import aiofiles  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise Skip(f"aiofiles is not installed ({exc}); pip install storage_io[bench]") from None
    record = b"r" * APPEND_SIZE
    async with aiofiles.open(path, "wb") as afp:

        async def appender(count: int) -> None:
            for _ in range(count):
                await afp.write(record)

        start = time.perf_counter()
        await asyncio.gather(*(appender(n) for n in _share(_append_count(scale))))
        await afp.flush()
        await asyncio.get_running_loop().run_in_executor(None, os.fdatasync, afp.fileno())
        seconds = time.perf_counter() - start
    return {"seconds": seconds}


async def append_pwrite_loop(path: Path, scale: float) -> Result:
    """The plain synchronous loop (no tasks: what the records cost without asyncio)."""
    record = b"r" * APPEND_SIZE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pwrite = os.pwrite
        start = time.perf_counter()
        for index in range(_append_count(scale)):
            pwrite(descriptor, record, index * APPEND_SIZE)
        os.fdatasync(descriptor)
        seconds = time.perf_counter() - start
    finally:
        os.close(descriptor)
    return {"seconds": seconds}


def _check_append(path: Path, scale: float) -> str | None:
    expected = _append_count(scale) * APPEND_SIZE
    size = path.stat().st_size
    return None if size == expected else f"file is {size} bytes, expected {expected}"


# -- aio_wal_commit --------------------------------------------------------------------------


def _wal_per_task(scale: float) -> int:
    return max(1, int(WAL_RECORDS_PER_TASK * scale))


async def wal_storage_io(path: Path, scale: float, backend: str = "auto") -> Result:
    from storage_io import open_storage_io
    from storage_io.aio import AsyncWal

    payload = b"w" * WAL_SIZE
    io = open_storage_io(backend=backend)
    try:
        async with await AsyncWal.open(path, io=io) as wal:
            per_task = _wal_per_task(scale)

            async def durable_appender() -> None:
                for _ in range(per_task):
                    lsn = await wal.append(payload)
                    if wal.durable_lsn < lsn:
                        raise AssertionError(f"append returned {lsn} before it was durable")

            start = time.perf_counter()
            lag = await _with_ticker(asyncio.gather(*(durable_appender() for _ in range(TASKS))))
            seconds = time.perf_counter() - start
            records = wal.last_lsn
            commits = wal.commits_observed
    finally:
        io.close()
    return {
        "seconds": seconds,
        "backend": io.backend,
        "records": records,
        "records_per_fdatasync": records / max(1, commits),
        "loop_lag_p99_ms": lag,
    }


def _pwrite_and_sync(descriptor: int, data: bytes, offset: int) -> None:
    os.pwrite(descriptor, data, offset)
    os.fdatasync(descriptor)


async def wal_to_thread(path: Path, scale: float) -> Result:
    """What a careful asyncio program does today: each durable append on a thread."""
    payload = b"w" * WAL_SIZE
    path.mkdir(exist_ok=True)
    descriptor = os.open(path / "log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    position = 0
    try:

        async def durable_appender() -> None:
            nonlocal position
            for _ in range(_wal_per_task(scale)):
                offset = position
                position += WAL_SIZE
                await asyncio.to_thread(_pwrite_and_sync, descriptor, payload, offset)

        start = time.perf_counter()
        lag = await _with_ticker(asyncio.gather(*(durable_appender() for _ in range(TASKS))))
        seconds = time.perf_counter() - start
    finally:
        os.close(descriptor)
    records = TASKS * _wal_per_task(scale)
    return {
        "seconds": seconds,
        "records": records,
        "records_per_fdatasync": 1.0,
        "loop_lag_p99_ms": lag,
    }


def _check_wal(path: Path, scale: float) -> str | None:
    expected = TASKS * _wal_per_task(scale)
    log = path / "log"
    if log.exists():
        size = log.stat().st_size
        want = expected * WAL_SIZE
        return None if size == want else f"file is {size} bytes, expected {want}"
    from storage_io.wal import Wal

    with Wal.open(path, create=False) as wal:
        count = sum(1 for _ in wal.replay())
    return None if count == expected else f"{count} records replayed, expected {expected}"


# -- the runner ------------------------------------------------------------------------------

WORKLOADS: dict[str, tuple[list[tuple[str, Runner]], Callable[[Path, float], str | None]]] = {
    "aio_append_4k": (
        [
            ("storage_io.aio", append_storage_io),
            ("storage_io.aio sync", lambda p, s: append_storage_io(p, s, "sync")),
            ("aiofile (caio)", append_aiofile),
            ("aiofiles", append_aiofiles),
            ("os.pwrite loop", append_pwrite_loop),
        ],
        _check_append,
    ),
    "aio_wal_commit": (
        [
            ("storage_io AsyncWal", wal_storage_io),
            ("storage_io AsyncWal sync", lambda p, s: wal_storage_io(p, s, "sync")),
            ("to_thread(pwrite+fdatasync)", wal_to_thread),
        ],
        _check_wal,
    ),
}


def _run_once(runner: Runner, path: Path, scale: float, uvloop: bool) -> Result:
    loop: asyncio.AbstractEventLoop
    if uvloop:
        import uvloop as module

        loop = module.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(runner(path, scale))
    finally:
        loop.close()


def run_workload(
    name: str, scale: float, repeat: int, directory: Path, uvloop: bool
) -> list[Result]:
    implementations, check = WORKLOADS[name]
    samples: dict[str, list[Result]] = {label: [] for label, _ in implementations}
    skipped: dict[str, str] = {}
    wrong: dict[str, str] = {}
    for round_index in range(repeat):
        for label, runner in implementations:
            if label in skipped or label in wrong:
                continue
            with tempfile.TemporaryDirectory(dir=directory) as scratch:
                path = Path(scratch) / "target"
                try:
                    result = _run_once(runner, path, scale, uvloop)
                except Skip as reason:
                    skipped[label] = str(reason)
                    continue
                problem = check(path, scale)
            if problem:
                wrong[label] = problem
                continue
            samples[label].append(result)
        print(f"  {name}: round {round_index + 1}/{repeat} done", file=sys.stderr)
    return _summarise(name, implementations, samples, skipped, wrong)


def _summarise(
    name: str,
    implementations: list[tuple[str, Runner]],
    samples: dict[str, list[Result]],
    skipped: dict[str, str],
    wrong: dict[str, str],
) -> list[Result]:
    rows: list[Result] = []
    reference = statistics.median(r["seconds"] for r in samples[implementations[0][0]])
    for label, _ in implementations:
        row: Result = {"workload": name, "implementation": label}
        if label in skipped:
            row["skipped"] = skipped[label]
        elif label in wrong:
            row["wrong"] = wrong[label]
        else:
            results = samples[label]
            median = statistics.median(r["seconds"] for r in results)
            row.update(
                median_s=median,
                runs=[round(r["seconds"], 4) for r in results],
                times_storage_io=median / reference,
            )
            for key in ("backend", "records_per_fdatasync", "loop_lag_p99_ms"):
                if key in results[0]:
                    values = [r[key] for r in results]
                    row[key] = values[0] if key == "backend" else statistics.median(values)
        rows.append(row)
    return rows


def _print_table(rows: list[Result]) -> None:
    for row in rows:
        label = f"{row['workload']:15} {row['implementation']:28}"
        if "skipped" in row:
            print(f"{label} skipped: {row['skipped']}")
            continue
        if "wrong" in row:
            print(f"{label} WRONG: {row['wrong']}")
            continue
        extra = ""
        if "records_per_fdatasync" in row:
            extra += f"  records/fdatasync {row['records_per_fdatasync']:.1f}"
        if "loop_lag_p99_ms" in row:
            extra += f"  loop lag p99 {row['loop_lag_p99_ms']:.2f} ms"
        if "backend" in row:
            extra += f"  [{row['backend']}]"
        print(
            f"{label} median {row['median_s']:.3f} s  x{row['times_storage_io']:.2f} of "
            f"storage_io{extra}  runs {row['runs']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage_io.aio_bench", description=__doc__)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full counts")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians of these)")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    directory = args.dir or Path(tempfile.gettempdir())
    rows: list[Result] = []
    for name in args.workload or sorted(WORKLOADS):
        rows += run_workload(name, args.scale, args.repeat, directory, args.uvloop)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
