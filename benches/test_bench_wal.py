"""The write-ahead log's workloads (WAL.md) at reduced scale, on every implementation.

The work is `storage_io.wal_bench`'s (the functions ``python -m storage_io.wal_bench``
runs), each run checking what it wrote: a run that wrote anything else fails the test.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from storage_io import UringUnavailableError
from storage_io.wal_bench import (
    IMPLEMENTATIONS,
    Outcome,
    append_256,
    group_commit,
    prepare_replay,
    replay,
)

# 200,000 x 256 B -> 4,000; 8 x 2,000 round trips -> 8 x 40; replay of 2 MiB of 4 KiB.
SCALE = 0.02
ROUNDS = 3

RUNS = {"wal_append_256": append_256, "wal_group_commit": group_commit}
PAIRS = [(workload, name) for workload in RUNS for name in IMPLEMENTATIONS[workload]]


def _checked(outcome: Outcome) -> Outcome:
    assert outcome.wrong is None, outcome.wrong
    return outcome


@pytest.mark.parametrize(("workload", "name"), PAIRS)
def test_wal_workload(benchmark: Any, workload: str, name: str, bench_dir: Path) -> None:
    benchmark.group = workload

    def once() -> None:
        directory = tempfile.mkdtemp(dir=bench_dir)
        try:
            _checked(RUNS[workload](name, directory, SCALE))
        except UringUnavailableError as exc:
            pytest.skip(f"io_uring unavailable: {exc}")
        finally:
            shutil.rmtree(directory)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("name", IMPLEMENTATIONS["wal_replay"])
@pytest.mark.parametrize("size", [4096, 256])
def test_wal_replay(benchmark: Any, name: str, size: int, bench_dir: Path) -> None:
    benchmark.group = f"wal_replay {size} B"
    setup = prepare_replay(str(bench_dir), size, 512 if size == 4096 else 8192)
    try:
        benchmark.pedantic(lambda: _checked(replay(name, setup)), rounds=ROUNDS, iterations=1)
    except UringUnavailableError as exc:
        pytest.skip(f"io_uring unavailable: {exc}")
