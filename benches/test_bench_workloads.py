"""The workloads W1..W5 of docs/workloads.md at reduced scale, on every implementation.

The work is `storage_io.bench`'s (the same functions the ``bench`` command runs); only the
`execute()` phase is timed. Each round writes a new file; after the rounds every file is
checked against the bytes written, and a wrong file fails the test.

The vectored implementations (pwritev, *-v: 16 records per call) run only the workloads that
have a vectored form (W1, W2, W5): the other pairs are not generated at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import make
from storage_io.bench import (
    IMPLEMENTATIONS,
    WORKLOADS,
    PreparedRun,
    Workload,
    is_vectored,
    prepare_run,
)

# 5% of the docs/workloads.md counts: W1 5,000 appends, W2 100 batches, W3 51 MiB, W4 100
# round trips, W5 10,000 appends. The full counts are the bench command's job.
SCALE = 0.05
ROUNDS = 3


PAIRS = [
    pytest.param(workload, name, id=f"{workload.id}-{workload.name}-{name}")
    for workload in WORKLOADS
    for name in IMPLEMENTATIONS
    if workload.has_vectored or not is_vectored(name)
]


@pytest.mark.parametrize(("workload", "name"), PAIRS)
def test_workload(benchmark: Any, workload: Workload, name: str, bench_dir: Path) -> None:
    target = make(name)
    try:
        _measure(benchmark, workload, name, target, bench_dir)
    finally:
        target.close()


def _measure(benchmark: Any, workload: Workload, name: str, target: Any, bench_dir: Path) -> None:
    vectored = is_vectored(name)
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
