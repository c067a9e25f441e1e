"""Per-call overhead of each ``submit_*`` call, per backend, against plain ``os`` calls.

A round times CALLS submissions of one kind; the completions of the previous round are
collected (and checked) in the untimed setup, so the figure is the cost of the submit calls
themselves. ``extra_info["per_call_ns"]`` is the median round divided by CALLS; for the
vectored calls (``submit_appendv`` of VECTOR records of 256 B, against ``os.pwritev``)
``extra_info["per_record_ns"]`` is that divided by VECTOR as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CALLS = 64  # submissions per timed round: well inside the ring and the buffer pool
ROUNDS = 500
SYNC_ROUNDS = 50  # a datasync costs a device flush: fewer rounds keep the suite short
RECORD = bytes(range(256))  # 256 bytes
SLOTS = 256  # submit_write cycles over this many 256-byte slots: the file stays small
VECTOR = 16  # records per vectored call (the bench command's VECTOR_BATCH)
RECORDS = tuple(bytes([i]) * 256 for i in range(VECTOR))  # one vectored call's records


def _register(io: Any, directory: Path) -> Any:
    fd = os.open(directory / "overhead.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return io.register_fd(fd)
    finally:
        os.close(fd)


class _Drain:
    """The untimed setup of every round: collect everything outstanding, check it."""

    def __init__(self, io: Any) -> None:
        self.io = io
        self.completed = 0
        self.failed: list[Any] = []

    def __call__(self) -> None:
        io = self.io
        while io.pending_count():
            got = io.wait(io.pending_count(), 30.0)
            assert got, "completions never arrived"
            self.completed += len(got)
            self.failed += [c for c in got if not c.ok]


def _record_per_call(benchmark: Any, records_per_call: int = 1) -> None:
    stats = getattr(benchmark, "stats", None)  # after the rounds, from their statistics
    if stats is not None:
        per_call = stats.stats.median / CALLS * 1e9
        benchmark.extra_info["per_call_ns"] = round(per_call, 1)
        if records_per_call > 1:
            benchmark.extra_info["per_record_ns"] = round(per_call / records_per_call, 1)
    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark.extra_info["records_per_call"] = records_per_call


def _run(
    benchmark: Any,
    io: Any,
    target: Any,
    group: str,
    rounds: int = ROUNDS,
    records_per_call: int = 1,
) -> None:
    drain = _Drain(io)
    benchmark.group = group
    benchmark.pedantic(target, setup=drain, rounds=rounds)
    drain()
    _record_per_call(benchmark, records_per_call)
    assert not drain.failed, drain.failed[:3]
    # With --benchmark-disable, pedantic() runs the target once instead of `rounds` times.
    assert drain.completed == CALLS * (1 if benchmark.disabled else rounds)


def test_submit_append_256b(benchmark: Any, backend: tuple[str, Any], bench_dir: Path) -> None:
    _, io = backend
    handle = _register(io, bench_dir)
    submit = io.submit_append
    loop = range(CALLS)

    def appends() -> None:
        for _ in loop:
            submit(handle, RECORD)

    _run(benchmark, io, appends, "submit_append 256 B")
    io.deregister_fd(handle)
    rounds = 1 if benchmark.disabled else ROUNDS  # as in _run
    assert (bench_dir / "overhead.dat").stat().st_size == CALLS * rounds * len(RECORD)


def test_submit_appendv_16x256b(benchmark: Any, backend: tuple[str, Any], bench_dir: Path) -> None:
    _, io = backend
    handle = _register(io, bench_dir)
    submit = io.submit_appendv
    loop = range(CALLS)

    def appends() -> None:
        for _ in loop:
            submit(handle, RECORDS)

    _run(benchmark, io, appends, "submit_appendv 16 x 256 B", records_per_call=VECTOR)
    io.deregister_fd(handle)
    path = bench_dir / "overhead.dat"
    call = b"".join(RECORDS)
    rounds = 1 if benchmark.disabled else ROUNDS  # as in _run
    assert path.stat().st_size == CALLS * rounds * len(call)
    with open(path, "rb") as f:  # every call's bytes, back to back
        while chunk := f.read(len(call) * 1024):
            assert chunk == call * (len(chunk) // len(call))


def test_submit_write_256b(benchmark: Any, backend: tuple[str, Any], bench_dir: Path) -> None:
    _, io = backend
    handle = _register(io, bench_dir)
    submit = io.submit_write
    offsets = [(i % SLOTS) * len(RECORD) for i in range(CALLS)]

    def writes() -> None:
        for offset in offsets:
            submit(handle, RECORD, offset)

    _run(benchmark, io, writes, "submit_write 256 B")
    io.deregister_fd(handle)


def test_submit_datasync(benchmark: Any, backend: tuple[str, Any], bench_dir: Path) -> None:
    _, io = backend
    handle = _register(io, bench_dir)
    submit = io.submit_datasync
    loop = range(CALLS)

    def datasyncs() -> None:
        for _ in loop:
            submit(handle)

    _run(benchmark, io, datasyncs, "submit_datasync", SYNC_ROUNDS)
    io.deregister_fd(handle)


@pytest.mark.parametrize(
    "kind", ["pwrite_append", "pwritev_append", "pwrite_at_offset", "fdatasync"]
)
def test_os_baseline(benchmark: Any, kind: str, bench_dir: Path) -> None:
    """The same rounds done with plain os calls: the floor each submit_* is compared with."""
    fd = os.open(bench_dir / "baseline.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pwrite = os.pwrite
    pwritev = os.pwritev
    fdatasync = os.fdatasync
    position = [0]
    offsets = [(i % SLOTS) * len(RECORD) for i in range(CALLS)]
    loop = range(CALLS)

    def pwrite_append() -> None:
        pos = position[0]
        for _ in loop:
            pos += pwrite(fd, RECORD, pos)
        position[0] = pos

    def pwritev_append() -> None:
        pos = position[0]
        for _ in loop:
            pos += pwritev(fd, RECORDS, pos)
        position[0] = pos

    def pwrite_at_offset() -> None:
        for offset in offsets:
            pwrite(fd, RECORD, offset)

    def datasyncs() -> None:
        for _ in loop:
            fdatasync(fd)

    target = {
        "pwrite_append": pwrite_append,
        "pwritev_append": pwritev_append,
        "pwrite_at_offset": pwrite_at_offset,
        "fdatasync": datasyncs,
    }[kind]
    benchmark.group = {
        "pwrite_append": "submit_append 256 B",
        "pwritev_append": "submit_appendv 16 x 256 B",
        "pwrite_at_offset": "submit_write 256 B",
        "fdatasync": "submit_datasync",
    }[kind]
    try:
        benchmark.pedantic(target, rounds=SYNC_ROUNDS if kind == "fdatasync" else ROUNDS)
    finally:
        os.close(fd)
    _record_per_call(benchmark, VECTOR if kind == "pwritev_append" else 1)
