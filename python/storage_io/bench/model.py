"""What a workload is, what one run of it measured, and the registry of workloads.

Nothing here runs I/O: the shapes every other part of the bench shares (`Workload`,
`Outcome`), the calling patterns, the records a workload writes and the check that a file
holds exactly those records.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .run import PreparedRun

__all__ = [
    "KIB",
    "MIB",
    "PATTERNS",
    "SLIDING",
    "WINDOW",
    "WINDOW_NOFLUSH",
    "Body",
    "Outcome",
    "Workload",
    "all_workloads",
    "check_file",
    "find_workload",
    "record_pool",
    "register_workload",
]

KIB = 1024
MIB = 1024 * KIB

# How a program drives the backend (--pattern). The bench measured only the first for a
# long time, and a user who writes one of the other two loops got other figures (issue 12):
# - sliding: keep up to a window of submissions in flight, wait for half of it when full;
# - window: submit a window, flush(), wait until all of it has completed, repeat;
# - window-noflush: the same without the flush() (wait() flushes by itself).
SLIDING = "sliding"
WINDOW = "window"
WINDOW_NOFLUSH = "window-noflush"
PATTERNS = (SLIDING, WINDOW, WINDOW_NOFLUSH)

# Submissions per round trip of the window patterns for small records: the loop issue 12
# measured ("submit a window of 64, flush(), wait until all 64 are done").
PATTERN_WINDOW = 64

# The figures the built-in workloads give, with the words the table shows. A figure whose
# key ends in "_us" is a latency: lower is better, and its ratio is taken the other way up.
FIGURE_LABELS = {
    "records_per_s": "records/s",
    "batches_per_s": "batches/s",
    "mib_per_s": "MiB/s",
    "p50_us": "p50 µs",
    "p99_us": "p99 µs",
}


def lower_is_better(figure: str) -> bool:
    """Whether a smaller value of `figure` is the better one (latencies)."""
    return figure.endswith("_us")


@dataclass
class Outcome:
    """What one run of one workload on one implementation measured."""

    workload: str
    implementation: str
    elapsed_s: float
    records: int
    bytes_written: int
    batches: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    problem: str | None = None  # None when every completion was ok and the file is right
    vectored: bool = False  # the workload's vectored form (os.pwritev / submit_appendv)
    pattern: str | None = None  # the calling pattern; None for the plain os loops
    extra_figures: dict[str, float] = field(default_factory=dict)  # set by a workload's body

    @property
    def ok(self) -> bool:
        return self.problem is None

    def figures(self) -> dict[str, float]:
        """The figures this run gives, by name (empty when the run went wrong)."""
        if self.problem is not None:
            return {}
        out: dict[str, float] = {}
        if self.latencies_ns:
            samples = sorted(self.latencies_ns)
            out["p50_us"] = _percentile(samples, 0.50) / 1000
            out["p99_us"] = _percentile(samples, 0.99) / 1000
        else:
            seconds = max(self.elapsed_s, 1e-9)
            out["records_per_s"] = self.records / seconds
            out["mib_per_s"] = self.bytes_written / MIB / seconds
            if self.batches:
                out["batches_per_s"] = self.batches / seconds
        out.update(self.extra_figures)
        return out


def _percentile(sorted_samples: Sequence[int], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(q * len(sorted_samples)))
    return float(sorted_samples[rank - 1])


# A workload's timed work on one form of implementation: the hot loop a user would write.
Body = Callable[["PreparedRun"], None]
# An untimed step around the body (setup, teardown), or the file check (None: the file is
# right; else what is wrong with it).
Hook = Callable[["PreparedRun"], None]
Check = Callable[["PreparedRun"], str | None]


@dataclass(frozen=True)
class Workload:
    """One workload: what it writes, the loop for each form of implementation, what the
    table shows.

    `bodies` maps a *form* to the timed loop: ``"pwrite"`` (the plain os loop),
    ``"api"`` (one ``submit_*`` per record), ``"pwritev"`` and ``"apiv"`` (the vectored
    forms), or any form an implementation registered elsewhere names
    (`Implementation.form`). The workload runs on exactly the implementations whose form
    it has a body for.
    """

    id: str
    name: str
    description: str
    full_count: int  # operations (or batches, W2) at scale 1: the docs/workloads.md count
    record_size: int
    bodies: Mapping[str, Body]
    headline: str  # the figure ratios are quoted on
    shown: tuple[str, ...]  # the figures the table shows, in order
    records_per_unit: int = 1  # records per counted operation (16 for a W2 batch)
    window: int = 192  # submissions in flight before the sliding loop waits
    pattern_window: int = PATTERN_WINDOW  # submissions per round trip of the window patterns
    default_scale: float = 1.0
    patterns: tuple[str, ...] = (SLIDING,)  # the calling patterns its "api" loops honour
    labels: Mapping[str, str] = field(default_factory=dict)  # table words of its own figures
    note: str = ""  # a line under the table when the workload ran
    setup: Hook | None = None  # untimed, after the file is opened and registered
    teardown: Hook | None = None  # untimed, before the file is checked
    check: Check | None = None  # None: the file must hold the records of the pool, cycled
    # Whether ``python -m storage_io bench`` without --workload runs it (W1..W5: the
    # README's first command, about two minutes); the others are asked for by name.
    in_default_run: bool = True
    # The scale of the single untimed pass CI makes over benches/ (quick, not a figure).
    quick_scale: float = 0.05

    @property
    def has_vectored(self) -> bool:
        """Whether the workload has a vectored form (rows pwritev, *-v)."""
        return "pwritev" in self.bodies and "apiv" in self.bodies

    def label(self, figure: str) -> str:
        """The words the table shows for `figure`."""
        return self.labels.get(figure) or FIGURE_LABELS.get(figure, figure)


_WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    """Add `workload` to the ones the bench command and ``benches/`` run; returns it.

    Its id and name must be new (case-insensitively: the command line takes either), its
    headline among its shown figures.
    """
    taken = {key.lower() for w in _WORKLOADS.values() for key in (w.id, w.name)}
    for key in (workload.id, workload.name):
        if key.lower() in taken:
            raise ValueError(f"workload id or name {key!r} is already registered")
    if workload.headline not in workload.shown:
        raise ValueError(f"{workload.id}: headline {workload.headline!r} is not shown")
    if not workload.bodies:
        raise ValueError(f"{workload.id}: no body for any form of implementation")
    unknown = [p for p in workload.patterns if p not in PATTERNS]
    if unknown or SLIDING not in workload.patterns:
        raise ValueError(f"{workload.id}: patterns must include {SLIDING!r}, within {PATTERNS}")
    _WORKLOADS[workload.id] = workload
    return workload


def all_workloads() -> tuple[Workload, ...]:
    """Every registered workload, in the order of registration (W1..W5 first)."""
    return tuple(_WORKLOADS.values())


def find_workload(key: str) -> Workload:
    """The workload whose id or name is `key` (any case); KeyError if none."""
    wanted = key.lower()
    for workload in _WORKLOADS.values():
        if wanted in (workload.id.lower(), workload.name.lower()):
            return workload
    raise KeyError(key)


def record_pool(size: int) -> tuple[bytes, ...]:
    """The distinct records a workload cycles through (record i is ``pool[i % len(pool)]``).

    Several different records, so that a misplaced, reordered or interleaved record shows in
    the file check; few enough that they stay in the CPU cache, as a record a program has
    just produced would be.
    """
    count = 61 if size <= 64 * KIB else 7
    rng = random.Random(size)
    return tuple(rng.randbytes(size) for _ in range(count))


def check_file(path: str, pool: Sequence[bytes], count: int) -> str | None:
    """None if `path` holds exactly `count` records of `pool`, cycled; else what is wrong."""
    cycle = b"".join(pool)
    expected = count * len(pool[0])
    size = os.stat(path).st_size
    if size != expected:
        return f"file is {size} bytes, expected {expected}"
    offset = 0
    with open(path, "rb", buffering=0) as f:
        while offset < expected:
            want = cycle[: min(len(cycle), expected - offset)]
            got = f.read(len(want))
            if got != want:
                at = next(
                    (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), len(got)
                )
                return f"file differs from the bytes written at offset {offset + at}"
            offset += len(want)
    return None
