"""The registered workloads (W1..W5 of docs/workloads.md, and any a module adds) at reduced
scale, on every implementation, in every calling pattern the workload follows.

The work is `storage_io.bench`'s (the same functions the ``bench`` command runs); only the
`execute()` phase is timed. Each round writes a new file; after the rounds every file is
checked against the bytes written, and a wrong file fails the test.

Only the pairs that exist are generated: the vectored implementations (pwritev, *-v: 16
records per call) on the workloads that have a vectored form (W1, W2, W5), the plain os
loops (pwrite, pwritev) once per workload (no pattern changes them), the submission API
loops once per pattern (sliding, window, window-noflush), as the bench command's rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import make
from storage_io.bench import (
    PreparedRun,
    Target,
    Workload,
    all_implementations,
    all_workloads,
    prepare_run,
)

# Each workload's quick_scale: for W1..W5 5% of the docs/workloads.md counts (W1 5,000
# appends, W2 100 batches, W3 51 MiB, W4 100 round trips, W5 10,000 appends); for WAL1..WAL4
# 2% or 2,048 records, for A1 and A2 2% and 1%. The full counts are the bench command's job.
ROUNDS = 3


def _cases() -> list[Any]:
    cases = []
    for workload in all_workloads():
        for implementation in all_implementations():
            if implementation.form not in workload.bodies:
                continue
            patterns = workload.patterns if implementation.follows_pattern else (None,)
            for pattern in patterns:
                suffix = "" if pattern is None else f"-{pattern}"
                case_id = f"{workload.id}-{workload.name}-{implementation.name}{suffix}"
                cases.append(pytest.param(workload, implementation.name, pattern, id=case_id))
    return cases


@pytest.mark.parametrize(("workload", "name", "pattern"), _cases())
def test_workload(
    benchmark: Any, workload: Workload, name: str, pattern: str | None, bench_dir: Path
) -> None:
    target = make(name)
    try:
        _measure(benchmark, workload, name, pattern, target, bench_dir)
    finally:
        target.close()


def _measure(
    benchmark: Any,
    workload: Workload,
    name: str,
    pattern: str | None,
    target: Target,
    bench_dir: Path,
) -> None:
    form = next(i.form for i in all_implementations() if i.name == name)
    runs: list[PreparedRun] = []

    def setup() -> tuple[tuple[PreparedRun], dict[str, Any]]:
        run = prepare_run(
            workload,
            target,
            str(bench_dir),
            workload.quick_scale,
            label=name,
            pattern=pattern or workload.patterns[0],
            form=form,
        )
        runs.append(run)
        return (run,), {}

    benchmark.group = f"{workload.id} {workload.name}" + (f" {pattern}" if pattern else "")
    benchmark.pedantic(PreparedRun.execute, setup=setup, rounds=ROUNDS)
    outcomes = [run.finish() for run in runs]
    problems = [o.problem for o in outcomes if o.problem is not None]
    assert not problems, problems
    figures = [o.figures() for o in outcomes]
    for key in figures[0]:
        benchmark.extra_info[key] = round(sorted(f[key] for f in figures)[len(figures) // 2], 1)
