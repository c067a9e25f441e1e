"""What the bench command prints and writes: the table, the JSON document, the chart.

The table has one line per row (runner.Row): the workload, the implementation, the calling
pattern (a column shown only when --pattern asks for more than the default), the medians of
the workload's shown figures (or the run's problem: ERROR, FAILED, WRONG), one ratio column
per baseline ("x pwrite", "x pwritev", and any a registered implementation compares with)
and the spread of the headline figure over the repeats.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

from .machine import io_uring_disabled, memlock_limit
from .model import SLIDING, lower_is_better
from .runner import Row, ratio
from .standard import VECTOR_BATCH

__all__ = ["baseline_names", "row_ratios", "table", "write_json", "write_plot"]

# The ratio columns shown whenever a workload in the table has a loop for them, whatever
# ran, so that the table of W1..W5 keeps one shape.
_BUILT_IN_BASELINES = ("pwrite", "pwritev")


def baseline_names(rows: Sequence[Row]) -> list[str]:
    """The ratio columns of the table, in order: the built-in baselines of the workloads
    that have them (the log's workloads have baselines of their own), then any other
    baseline a row compares with."""
    names = [b for b in _BUILT_IN_BASELINES if any(b in row.workload.bodies for row in rows)]
    for row in rows:
        names += [b for b in row.implementation.compared_with if b not in names]
    return names


def _baseline_row(rows: Sequence[Row], row: Row, name: str) -> Row | None:
    """The row of baseline `name` for `row`'s workload: in the same pattern if the baseline
    follows patterns, else its only row."""
    candidates = [r for r in rows if r.workload.id == row.workload.id and r.name == name]
    same = [r for r in candidates if r.pattern == row.pattern]
    chosen = same or candidates
    return chosen[0] if chosen else None


def row_ratios(rows: Sequence[Row], row: Row) -> dict[str, float | None]:
    """`row`'s ratio to each baseline it compares with, by baseline name."""
    return {
        name: ratio(row, _baseline_row(rows, row, name))
        for name in row.implementation.compared_with
    }


def _format_figures(row: Row) -> str:
    problem = row.problem
    if problem is not None:
        return problem if len(problem) <= 90 else problem[:87] + "..."
    medians = row.medians()
    parts = []
    for key in row.workload.shown:
        value = medians.get(key)  # a body of its own may not give every figure
        text = "n/a" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
        words = row.workload.label(key).split()
        if lower_is_better(key) and len(words) == 2:  # "p50 312 µs"
            parts.append(f"{words[0]} {text} {words[1]}")
        else:
            parts.append(f"{text} {' '.join(words)}")
    return "  ".join(parts)


def _show_patterns(rows: Sequence[Row]) -> bool:
    return any(row.pattern not in (None, SLIDING) for row in rows)


def _cells(rows: Sequence[Row], row: Row, baselines: list[str], patterns: bool) -> list[str]:
    ratios = row_ratios(rows, row)
    spread = row.spread()
    cells = [f"{row.workload.id} {row.workload.name}", row.name]
    if patterns:
        cells.append(row.pattern or "")
    cells.append(_format_figures(row))
    for name in baselines:
        value = ratios.get(name)
        cells.append("" if value is None else f"{value:.2f}x")
    cells.append("" if spread is None else f"±{spread * 100:.0f}%")
    return cells


def _align(lines: list[list[str]], first_right: int) -> list[str]:
    """Columns padded to their widest cell; numbers (from `first_right` on) to the right;
    a rule under the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(w) if i >= first_right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=False))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def table(rows: Sequence[Row], skipped: dict[str, str]) -> str:
    """The table the bench command prints, with its skipped implementations and notes."""
    baselines = baseline_names(rows)
    patterns = _show_patterns(rows)
    header = ["workload", "implementation"] + (["pattern"] if patterns else [])
    header += ["figure (median)"] + [f"x {name}" for name in baselines] + ["spread"]
    lines = [header] + [_cells(rows, row, baselines, patterns) for row in rows]
    out = _align(lines, header.index("figure (median)") + 1)
    for name, reason in skipped.items():
        out.append(f"skipped {name}: {reason}")
    out += _notes(rows, patterns)
    return "\n".join(out)


def _notes(rows: Sequence[Row], patterns: bool) -> list[str]:
    out = []
    if "pwrite" in baseline_names(rows):
        out.append(
            "x pwrite: how many times faster than the plain os.pwrite loop, one call per record "
            "(higher is better; W4 compares p50 latencies). x pwritev: the vectored rows "
            f"(pwritev, *-v: {VECTOR_BATCH} records per call, W2 one call per batch) against "
            "the plain os.pwritev loop. spread: half the range over the repeats."
        )
    others = [b for b in baseline_names(rows) if b not in _BUILT_IN_BASELINES]
    if others:
        figures = sorted({row.workload.label(row.workload.headline) for row in rows})
        out.append(
            f"x {', x '.join(others)}: how many times faster than that row of the same "
            f"workload, on {' / '.join(figures)} (higher is better). spread: half the range "
            "of that figure over the repeats."
        )
    if any(row.implementation.vectored for row in rows):
        out.append(
            "No vectored rows for W3 (1 MiB records, one per call already) and W4 (one "
            "record per round trip)."
        )
    if patterns:
        out.append(
            "pattern: sliding keeps a window in flight and waits for half of it; window "
            "submits a window (64 records, W3 8; W2 a batch and its datasync; W4 an append "
            "and its datasync), calls flush(), then waits for all of it; window-noflush "
            "the same without flush(). The plain os loops are the same in every pattern."
        )
    # Once each: the workloads of a group (wal_replay) share theirs.
    out += list(dict.fromkeys(row.workload.note for row in rows if row.workload.note))
    return out


def write_plot(rows: Sequence[Row], path: str) -> None:
    """A bar chart of every row's ratio to pwrite, grouped by workload."""
    # matplotlib is the optional `plot` extra: imported by name, so that type checking does
    # not need it installed.
    importlib.import_module("matplotlib").use("Agg")  # no display needed
    plt: Any = importlib.import_module("matplotlib.pyplot")

    workloads = {r.workload.id: r.workload.name for r in rows}
    series = list(dict.fromkeys((r.name, r.pattern) for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(workloads) + 2), 4.5))
    width = 0.8 / max(1, len(series))
    for n, (name, pattern) in enumerate(series):
        values = []
        for wid in workloads:
            key = (wid, name, pattern)
            row = next((r for r in rows if (r.workload.id, r.name, r.pattern) == key), None)
            value = None if row is None else row_ratios(rows, row).get("pwrite")
            values.append(float("nan") if value is None else value)
        positions = [i + (n - (len(series) - 1) / 2) * width for i in range(len(workloads))]
        label = name if pattern in (None, SLIDING) else f"{name} {pattern}"
        ax.bar(positions, values, width, label=label)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([f"{wid}\n{name}" for wid, name in workloads.items()])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("x pwrite (higher is better)")
    ax.set_title("storage_io: speed relative to a plain os.pwrite loop (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _result(rows: Sequence[Row], row: Row) -> dict[str, Any]:
    ratios = row_ratios(rows, row)
    return {
        "workload": row.workload.id,
        "name": row.workload.name,
        "description": row.workload.description,
        "implementation": row.name,
        "pattern": row.pattern,
        "status": "ok" if row.problem is None else row.problem.split(":")[0],
        "problem": row.problem,
        "headline": row.workload.headline,
        "median": row.medians(),
        "vectored": row.implementation.vectored,
        "ratio_to_pwrite": ratios.get("pwrite"),
        "ratio_to_pwritev": ratios.get("pwritev"),
        "ratios": ratios,
        "repeats": [
            {
                "elapsed_s": o.elapsed_s,
                "records": o.records,
                "bytes": o.bytes_written,
                "batches": o.batches,
                "figures": o.figures(),
                "problem": o.problem,
            }
            for o in row.outcomes
        ],
    }


def write_json(
    path: str, rows: Sequence[Row], skipped: dict[str, str], meta: dict[str, Any]
) -> None:
    """All results, every repeat, with what describes the machine and the run."""
    document = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "kernel": platform.release(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "io_uring_disabled": io_uring_disabled(),
            "rlimit_memlock": memlock_limit(),
            "vector_batch": VECTOR_BATCH,
            **meta,
        },
        "skipped": skipped,
        "results": [_result(rows, row) for row in rows],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
