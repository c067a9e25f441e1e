"""The write-ahead log's workloads (bench/wal.py) in the bench command: reachable by the
names WAL.md and issue 10 use, out of the default run, with their own figures, and a wrong
log or hand-framed file reported as WRONG.

Their timed runs at reduced scale, on every implementation, are test_bench_workloads.py's
(generated from the registry like W1..W5). Tiny scales here: these check the tooling.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pytest

from storage_io import bench
from storage_io.bench import wal as wal_workloads


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def _rows(out: str, workload_id: str) -> dict[str, str]:
    lines = [line for line in out.splitlines() if line.startswith(workload_id + " ")]
    return {line.split()[2]: line for line in lines}


def test_the_names_of_issue_10_pick_the_log_workloads_and_the_default_leaves_them_out() -> None:
    args = _parse(["--workload", "wal_append_256,wal_group_commit,wal_replay"])
    assert args.workload == ["L1", "L2", "L3", "L4"]
    assert _parse(["--workload", "WAL_REPLAY,W1"]).workload == ["L3", "L4", "W1"]
    assert _parse([]).workload == ["W1", "W2", "W3", "W4", "W5"]


def test_group_commit_reports_records_per_fdatasync_and_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--workload", "wal_group_commit", "--backend", "hand-pwrite,wal-sync"]
    status = bench.run_bench(
        _parse([*argv, "--repeat", "1", "--scale", "0.005", "--dir", str(tmp_path)])
    )
    out = capsys.readouterr().out
    assert status == 0, out
    rows = _rows(out, "L2")
    assert set(rows) == {"hand-pwrite", "wal-sync"}, out
    assert "1.0 records/fdatasync" in rows["hand-pwrite"]
    assert "records/fdatasync" in rows["wal-sync"]
    header = next(line for line in out.splitlines() if line.startswith("workload "))
    assert "hand-pwrite" in header.split()
    assert os.listdir(tmp_path) == []  # logs and hand files removed


def test_replay_reports_gb_per_s_for_both_record_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--workload", "wal_replay", "--backend", "hand-read,wal", "--repeat", "2"]
    status = bench.run_bench(_parse([*argv, "--scale", "0.001", "--dir", str(tmp_path)]))
    out = capsys.readouterr().out
    assert status == 0, out
    for wid in ("L3", "L4"):
        rows = _rows(out, wid)
        assert set(rows) == {"hand-read", "wal"}, out
        assert all("GB/s" in row and "records/s" in row for row in rows.values()), out


def _write_one_record_too_many(original: bench.Body) -> bench.Body:
    def body(run: bench.PreparedRun) -> None:
        original(run)
        if run.raw_fd >= 0:
            head, payload = wal_workloads.hand_frame(run.records + 1, run.pool[0])
            os.write(run.raw_fd, head + payload)
        else:
            run.state["wal"].append(run.pool[0])
            run.state["wal"].sync()

    return body


@pytest.mark.parametrize("name", ["hand-pwrite", "hand-pwritev", "wal-sync"])
def test_a_stray_record_is_wrong(name: str, tmp_path: Path) -> None:
    workload = wal_workloads.L1
    form = bench.find_implementation(name).form
    bodies = dict(workload.bodies, **{form: _write_one_record_too_many(workload.bodies[form])})
    broken = dataclasses.replace(workload, bodies=bodies)
    target = bench.create_implementation(name)
    try:
        outcome = bench.run_workload(broken, target, str(tmp_path), 0.001, label=name, form=form)
    finally:
        target.close()
    assert outcome.problem is not None and outcome.problem.startswith("WRONG"), outcome
    assert os.listdir(tmp_path) == []
