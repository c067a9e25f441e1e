"""The workloads W1..W5 of docs/workloads.md at reduced scale, on every implementation.

The work is `storage_io.bench`'s (the same functions the ``bench`` command runs); only the
`execute()` phase is timed. Each round writes a new file; after the rounds every file is
checked against the bytes written, and a wrong file fails the test.

The vectored implementations (pwritev, *-v: 16 records per call) run the workloads that have
a vectored form (W1, W2, W5) and are skipped on the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage_io.bench import WORKLOADS, PreparedRun, Workload, is_vectored, prepare_run

# 5% of the docs/workloads.md counts: W1 5,000 appends, W2 100 batches, W3 51 MiB, W4 100
# round trips, W5 10,000 appends. The full counts are the bench command's job.
SCALE = 0.05
ROUNDS = 3


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: f"{w.id}-{w.name}")
def test_workload(
    benchmark: Any, workload: Workload, implementation: tuple[str, Any], bench_dir: Path
) -> None:
    name, target = implementation
    vectored = is_vectored(name)
    if vectored and not workload.has_vectored:
        pytest.skip(f"{workload.id} {workload.name} has no vectored form")
    runs: list[PreparedRun] = []

    def setup() -> tuple[tuple[PreparedRun], dict[str, Any]]:
        run = prepare_run(workload, target, str(bench_dir), SCALE, label=name, vectored=vectored)
        runs.append(run)
        return (run,), {}

    benchmark.group = f"{workload.id} {workload.name}"
    benchmark.pedantic(PreparedRun.execute, setup=setup, rounds=ROUNDS)
    outcomes = [run.finish() for run in runs]
    problems = [o.problem for o in outcomes if o.problem is not None]
    assert not problems, problems
    figures = [o.figures() for o in outcomes]
    for key in figures[0]:
        benchmark.extra_info[key] = round(sorted(f[key] for f in figures)[len(figures) // 2], 1)
