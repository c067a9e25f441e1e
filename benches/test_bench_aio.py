"""The asyncio workloads (bench/aio.py) in the bench command: reachable by their names, out
of the default run (as the log's, bench/wal.py), their own figures (records per fdatasync,
the loop's lag), an optional baseline that is not installed reported as skipped with the
reason, and a file or log that does not hold exactly the records written reported as WRONG.

Their timed runs at reduced scale, on every implementation, are test_bench_workloads.py's
(generated from the registry). Tiny scales here: these check the tooling.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from storage_io import SyncStorageIo, bench
from storage_io.aio import AsyncWal
from storage_io.bench import aio as aio_workloads
from storage_io.bench import implementations


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def _rows(out: str, workload_id: str) -> dict[str, str]:
    lines = [line for line in out.splitlines() if line.startswith(workload_id + " ")]
    return {line.split()[2]: line for line in lines}


def test_the_names_of_issues_10_and_11_pick_their_workloads_and_the_default_leaves_them_out() -> (
    None
):
    assert _parse(["--workload", "aio_append_4k,aio_wal_commit"]).workload == ["A1", "A2"]
    log = "wal_append_256,wal_group_commit,wal_replay,wal_replay_256"
    assert _parse(["--workload", log]).workload == ["WAL1", "WAL2", "WAL3", "WAL4"]
    assert _parse([]).workload == ["W1", "W2", "W3", "W4", "W5"]


def test_a_missing_optional_baseline_is_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = implementations.Implementation(
        "aiofiles",
        aio_workloads._optional("storage_io_no_such_module"),
        "aiofiles",
        follows_pattern=False,
    )
    monkeypatch.setitem(implementations._IMPLEMENTATIONS, "aiofiles", missing)
    argv = ["--workload", "aio_append_4k", "--backend", "pwrite,aio-sync,aiofiles"]
    status = bench.run_bench(
        _parse([*argv, "--repeat", "1", "--scale", "0.005", "--dir", str(tmp_path)])
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "skipped aiofiles: storage_io_no_such_module is not installed" in out
    assert "pip install 'storage_io[bench]'" in out
    assert set(_rows(out, "A1")) == {"pwrite", "aio-sync"}, out


def test_commit_reports_records_per_fdatasync_and_loop_lag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--workload", "aio_wal_commit", "--backend", "asyncwal-sync,to-thread"]
    status = bench.run_bench(
        _parse([*argv, "--repeat", "1", "--scale", "0.003", "--dir", str(tmp_path)])
    )
    out = capsys.readouterr().out
    assert status == 0, out
    rows = _rows(out, "A2")
    assert set(rows) == {"asyncwal-sync", "to-thread"}, out
    assert "1.0 records/fdatasync" in rows["to-thread"]
    assert all("lag-p99" in row and "records/fdatasync" in row for row in rows.values())
    assert all("own-lag-p99" in row and "own-lag-max" in row for row in rows.values())
    assert os.listdir(tmp_path) == []


def _one_record_too_many(original: bench.Body) -> bench.Body:
    def body(run: bench.PreparedRun) -> None:
        original(run)
        if "wal" in run.state:

            async def append_one() -> int:
                return await run.state["wal"].append(run.pool[0])

            assert run.state["loop"].run_until_complete(append_one()) == run.records + 1
        else:  # a whole record more at the end of the file
            with open(run.path, "ab") as f:
                f.write(run.pool[0])

    return body


@pytest.mark.parametrize(
    ("workload", "name"),
    [
        (aio_workloads.A1, "aio-sync"),
        (aio_workloads.A1, "pwrite"),
        (aio_workloads.A2, "asyncwal-sync"),
        (aio_workloads.A2, "to-thread"),
    ],
)
def test_a_stray_record_is_wrong(workload: bench.Workload, name: str, tmp_path: Path) -> None:
    form = bench.find_implementation(name).form
    bodies = dict(workload.bodies, **{form: _one_record_too_many(workload.bodies[form])})
    broken = dataclasses.replace(workload, bodies=bodies)
    target = bench.create_implementation(name)
    try:
        outcome = bench.run_workload(broken, target, str(tmp_path), 0.002, label=name, form=form)
    finally:
        target.close()
    assert outcome.problem is not None and outcome.problem.startswith("WRONG"), outcome
    assert os.listdir(tmp_path) == []


def test_a_torn_record_is_wrong(tmp_path: Path) -> None:
    pool = bench.record_pool(4096)
    path = tmp_path / "file"
    path.write_bytes(pool[1] + pool[0][:2048] + pool[2][2048:])
    want = collections.Counter({0: 1, 1: 1})
    problem = aio_workloads._records_problem(str(path), pool, want)
    assert problem == "the record at offset 4096 is none of the records written"


@pytest.mark.parametrize("backend", ["sync", "uring"])
def test_loop_lag_through_rotations(
    benchmark: Any, backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1 ms ticker on the loop while 64 tasks do durable AsyncWal appends through segment
    rotations: its lag (p99, and p99 and max less the loop thread's CPU waits) is recorded
    in the benchmark's extra_info and printed; the contract's targets are an own p99 of
    1 ms and an own max of 5 ms. Reported, not asserted: time belongs to benches."""
    io: Any = SyncStorageIo() if backend == "sync" else aio_workloads._standard_ring()
    figures: dict[str, float] = {}

    async def durable_appends(directory: Path) -> None:
        async with await AsyncWal.open(directory, io=io, segment_bytes=1 << 20) as wal:
            ticker = aio_workloads.LagTicker()
            ticking = asyncio.ensure_future(ticker.run())

            async def appender() -> None:
                for _ in range(200):
                    await wal.append(b"r" * 256)

            await asyncio.gather(*(appender() for _ in range(aio_workloads.TASKS)))
            ticking.cancel()
        figures.update(
            lag_p99_us=ticker.p99_us(ticker.lags_s),
            own_lag_p99_us=ticker.p99_us(ticker.own_lags_s),
            own_lag_max_us=max(ticker.own_lags_s, default=0.0) * 1e6,
            ticks=len(ticker.lags_s),
        )

    runs = iter(range(1_000_000))

    def one_run() -> None:
        asyncio.run(durable_appends(tmp_path / f"log{next(runs)}"))

    try:
        benchmark.pedantic(one_run, rounds=3, iterations=1)
    finally:
        io.close()
    benchmark.extra_info.update(figures)
    with capsys.disabled():
        print(
            f"\n{backend}: loop lag through rotations, last round: p99 "
            f"{figures['lag_p99_us']:,.0f} µs, own p99 {figures['own_lag_p99_us']:,.0f} µs, "
            f"own max {figures['own_lag_max_us']:,.0f} µs over {figures['ticks']:.0f} ticks"
        )
    assert figures["ticks"] > 0
