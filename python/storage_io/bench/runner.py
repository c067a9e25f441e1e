"""Running the table: which rows there are, the interleaved repeats, and the medians.

Every row (a workload on an implementation, in one calling pattern) is run `repeat` times,
interleaved with the workload's other rows (A B C A B C ...), so that a slow minute of the
shared machine or the disk falls on all of them alike. A run that goes wrong keeps its
problem (ERROR, FAILED, WRONG) instead of a figure, and the row reports the first one.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .implementations import Implementation, ImplementationUnavailable, find_implementation
from .model import Outcome, Workload, lower_is_better
from .run import run_workload

__all__ = ["Progress", "Row", "make_rows", "ratio", "run_rows"]


@dataclass
class Row:
    """One line of the table: a workload on an implementation in one pattern (None for
    the plain os loops, which no pattern changes), and the outcome of each repeat."""

    workload: Workload
    implementation: Implementation
    pattern: str | None
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.implementation.name

    def title(self) -> str:
        """What the row is, in words: "W1 append_4k uring window"."""
        pattern = "" if self.pattern is None else f" {self.pattern}"
        return f"{self.workload.id} {self.workload.name} {self.name}{pattern}"

    @property
    def problem(self) -> str | None:
        return next((o.problem for o in self.outcomes if o.problem is not None), None)

    def medians(self) -> dict[str, float]:
        if self.problem is not None or not self.outcomes:
            return {}
        per_run = [o.figures() for o in self.outcomes]
        return {key: statistics.median(f[key] for f in per_run) for key in per_run[0]}

    def spread(self) -> float | None:
        """Half the range of the headline figure over the repeats, relative to its median."""
        key = self.workload.headline
        values = [o.figures().get(key) for o in self.outcomes]
        if self.problem is not None or len(values) < 2 or None in values:
            return None
        numbers = [v for v in values if v is not None]
        middle = statistics.median(numbers)
        return (max(numbers) - min(numbers)) / 2 / middle if middle else None


def ratio(row: Row, baseline: Row | None) -> float | None:
    """How many times better than `baseline` on the workload's headline figure (for a
    latency, the ratio of the baseline's to this row's)."""
    if baseline is None:
        return None
    key = row.workload.headline
    mine = row.medians().get(key)
    theirs = baseline.medians().get(key)
    if not mine or not theirs:
        return None
    return theirs / mine if lower_is_better(key) else mine / theirs


def make_rows(
    workloads: Sequence[Workload], names: Sequence[str], patterns: Sequence[str]
) -> list[Row]:
    """The rows of the table, workload by workload: each implementation whose form the
    workload has a loop for, once per chosen pattern the workload follows (once only for
    an implementation no pattern changes)."""
    rows: list[Row] = []
    for workload in workloads:
        for name in names:
            implementation = find_implementation(name)
            if implementation.form not in workload.bodies:
                continue
            if not implementation.follows_pattern:
                rows.append(Row(workload, implementation, None))
                continue
            for pattern in patterns:
                if pattern in workload.patterns:
                    rows.append(Row(workload, implementation, pattern))
    return rows


class Progress:
    """One line on stderr, rewritten in place on a terminal; a line per step otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        line = f"[{self.done:>3}/{self.total}] {elapsed:6.1f}s  {text}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def run_rows(rows: Sequence[Row], repeat: int, directory: str, scales: dict[str, float]) -> None:
    """Run every row `repeat` times, interleaved within each workload; the outcomes go into
    the rows. KeyboardInterrupt passes through."""
    progress = Progress(len(rows) * repeat)
    try:
        for wid in dict.fromkeys(row.workload.id for row in rows):
            mine = [row for row in rows if row.workload.id == wid]
            for n in range(repeat):
                for row in mine:  # interleaved: A B C A B C ...
                    progress.step(f"{row.title()} (repeat {n + 1}/{repeat})")
                    row.outcomes.append(run_once(row, directory, scales[wid]))
    finally:
        progress.close()


def run_once(row: Row, directory: str, scale: float) -> Outcome:
    """One run of `row` on a fresh instance; a broken run is an Outcome with its problem,
    reported in the table, not a traceback."""
    workload, implementation = row.workload, row.implementation
    name = implementation.name
    try:
        target = implementation.create()
    except ImplementationUnavailable as exc:
        return Outcome(workload.id, name, 0.0, 0, 0, problem=f"ERROR: {exc}", pattern=row.pattern)
    try:
        return run_workload(
            workload,
            target,
            directory,
            scale,
            label=name,
            pattern=row.pattern or workload.patterns[0],
            form=implementation.form,
        )
    except Exception as exc:
        problem = f"ERROR: {type(exc).__name__}: {exc}"
        return Outcome(workload.id, name, 0.0, 0, 0, problem=problem, pattern=row.pattern)
    finally:
        target.close()
