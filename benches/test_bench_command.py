"""The bench command itself: its options, its rows per pattern, WRONG for a wrong file, and
the way another module adds a workload of its own (bench/__init__.py, "Adding a workload").

Tiny scales and the cheap implementations only: these check the tooling, not speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import storage_io
from storage_io import bench
from storage_io.bench import model
from storage_io.bench.loops import backend_of, drain


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench.run_bench(parser.parse_args(argv))


def test_version_option_prints_the_package_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "storage_io", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"storage_io {storage_io.__version__}"


def test_unknown_pattern_is_refused() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--pattern", "sliding,zigzag"])


def test_a_row_per_pattern_and_one_for_the_plain_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--workload", "W4", "--backend", "pwrite,sync", "--repeat", "1", "--scale", "0.005"]
    status = _run([*argv, "--pattern", "sliding,window,window-noflush", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    lines = [line for line in out.splitlines() if line.startswith("W4 sync_latency")]
    assert [line.split()[2] for line in lines] == [
        "pwrite",
        "sync",
        "sync",
        "sync",
    ]
    assert [line.split()[3] for line in lines[1:]] == ["sliding", "window", "window-noflush"]
    header = next(line for line in out.splitlines() if line.startswith("workload "))
    assert header.split()[2] == "pattern"


def test_default_table_has_no_pattern_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--workload", "W5", "--backend", "pwrite", "--repeat", "1", "--scale", "0.001"]
    assert _run([*argv, "--dir", str(tmp_path)]) == 0
    header = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("workload ")
    )
    assert header.split() == [
        "workload",
        "implementation",
        "figure",
        "(median)",
        "x",
        "pwrite",
        "x",
        "pwritev",
        "spread",
    ]


def _wrong_body(run: bench.PreparedRun) -> None:
    """Writes one byte too many: the file check must catch it."""
    io, fd = backend_of(run)
    for data in run.pool[:3]:
        io.submit_append(fd, data)
    io.submit_append(fd, b"!")
    drain(run, 4)
    run.extra_figures["appends"] = 4.0


def _plain_body(run: bench.PreparedRun) -> None:
    for data in run.pool[:3]:
        os.write(run.raw_fd, data)
    run.extra_figures["appends"] = 3.0


def _three_records_only(run: bench.PreparedRun) -> str | None:
    return bench.check_file(run.path, run.pool, 3)


def test_a_registered_workload_runs_with_its_own_figures_and_a_wrong_file_is_wrong(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(model, "_WORKLOADS", dict(model._WORKLOADS))
    bench.register_workload(
        bench.Workload(
            "X1",
            "extra_wrong",
            "three appends and a stray byte",
            full_count=1,
            record_size=64,
            bodies={"pwrite": _plain_body, "api": _wrong_body},
            headline="appends",
            shown=("appends",),
            labels={"appends": "appends (its own figure)"},
            check=_three_records_only,
            note="X1: a workload registered by a test.",
        )
    )
    with pytest.raises(ValueError, match="already registered"):
        bench.register_workload(bench.find_workload("X1"))
    argv = ["--workload", "extra_wrong", "--backend", "pwrite,sync", "--repeat", "1"]
    status = _run([*argv, "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 1, out  # a run went wrong
    rows = {line.split()[2]: line for line in out.splitlines() if line.startswith("X1 ")}
    assert "WRONG: file is 193 bytes, expected 192" in rows["sync"]
    assert "ERROR" not in rows["pwrite"] and "WRONG" not in rows["pwrite"]
    assert "X1: a workload registered by a test." in out
