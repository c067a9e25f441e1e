"""The ``python -m storage_io bench`` command: its options and its run from start to end."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

from .implementations import (
    ImplementationUnavailable,
    all_implementations,
    create_implementation,
    find_implementation,
)
from .machine import MEMORY_FILESYSTEMS, filesystem_of
from .model import PATTERNS, SLIDING, Workload, all_workloads
from .report import table, write_json, write_plot
from .runner import Row, make_rows, run_rows
from .standard import VECTOR_BATCH

__all__ = ["add_arguments", "run_bench"]


def _parse_list(text: str, known: dict[str, str], what: str) -> list[str]:
    chosen: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key = known.get(item.lower())
        if key is None:
            allowed = ", ".join(sorted(set(known.values())))
            raise argparse.ArgumentTypeError(f"unknown {what} {item!r}; choose from {allowed}")
        if key not in chosen:
            chosen.append(key)
    if not chosen:
        raise argparse.ArgumentTypeError(f"no {what} given")
    return chosen


def _workload_list(text: str) -> list[str]:
    known = {w.id.lower(): w.id for w in all_workloads()}
    known.update({w.name.lower(): w.id for w in all_workloads()})
    return _parse_list(text, known, "workload")


def _implementation_list(text: str) -> list[str]:
    return _parse_list(text, {i.name: i.name for i in all_implementations()}, "implementation")


def _pattern_list(text: str) -> list[str]:
    return _parse_list(text, {p: p for p in PATTERNS}, "pattern")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the bench command."""
    workloads = all_workloads()
    names = [i.name for i in all_implementations()]
    parser.add_argument(
        "--workload",
        type=_workload_list,
        default=[w.id for w in workloads if w.in_default_run],
        metavar="LIST",
        help="comma-separated workloads, by id or name "
        + "("
        + ", ".join(f"{w.id}={w.name}" for w in workloads)
        + "); default: "
        + ",".join(w.id for w in workloads if w.in_default_run),
    )
    parser.add_argument(
        "--backend",
        type=_implementation_list,
        default=names,
        metavar="LIST",
        help=f"comma-separated implementations ({', '.join(names)}); default: all. "
        "pwrite is the baseline of the 'x pwrite' column. The vectored forms (pwritev: "
        f"os.pwritev; *-v: submit_appendv; {VECTOR_BATCH} records per call, W2 one call per "
        "batch) run only on the workloads that have one, W1, W2 and W5, and are also "
        "compared with pwritev in the 'x pwritev' column. Implementations that cannot run "
        "here are reported as skipped, with the reason",
    )
    parser.add_argument(
        "--pattern",
        type=_pattern_list,
        default=[SLIDING],
        metavar="LIST",
        help="comma-separated calling patterns of the submission API loops, a row each: "
        "sliding (a window in flight, wait for half of it when full), window (submit a "
        "window, flush(), wait for all of it; W2: a batch and its datasync, W4: an append "
        "and its datasync), window-noflush (the same without flush()); default: sliding. "
        "The plain os loops (pwrite, pwritev) are the same in every pattern",
    )
    _add_run_arguments(parser)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=3,
        metavar="N",
        help="runs of each workload on each implementation, interleaved; the table shows "
        "medians (default: 3)",
    )
    parser.add_argument(
        "--scale",
        type=_positive_float,
        default=None,
        metavar="F",
        help="multiply every workload's operation count of docs/workloads.md by F (--scale 1: "
        "the full counts). Default: the full counts for W1, W4 and W5; W2 at 0.15 (300 "
        "batches), whose time is that of the disk's flushes, and W3 at 0.25 (256 MiB): so "
        "that the default run (3 repeats, all 8 implementations, 96 runs) stays under two "
        "minutes on a 2-core machine even when its flushes are slow",
    )
    parser.add_argument(
        "--dir",
        default=None,
        metavar="DIR",
        help="where the files go: a fresh directory is made inside DIR and removed "
        "afterwards (default: the system temporary directory, "
        f"{tempfile.gettempdir()}). Use a directory on the disk you care about, not tmpfs",
    )
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="write all results, every repeat, as JSON"
    )
    parser.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="draw the ratios to pwrite as a bar chart (needs matplotlib: "
        "pip install 'storage_io[plot]')",
    )


def _available(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Which implementations can run here: each is created once to find out, then closed
    (every run gets a fresh instance). Returns (available names, skipped name -> reason)."""
    available: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            create_implementation(name).close()
        except ImplementationUnavailable as exc:
            skipped[name] = str(exc)
        else:
            available.append(name)
    return available, skipped


def _memory_warning(fstype: str) -> str | None:
    if fstype not in MEMORY_FILESYSTEMS:
        return None
    return (
        f"WARNING: this directory is on {fstype} (memory): fdatasync does nothing there and "
        "the figures say nothing about a disk. Pass --dir on a real disk."
    )


def _check_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the options that argparse cannot see, or None."""
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return (
            "--plot needs matplotlib, which is not installed: "
            "pip install 'storage_io[plot]' (or pip install matplotlib)"
        )
    base = args.dir if args.dir is not None else tempfile.gettempdir()
    if not os.path.isdir(base):
        return f"--dir {base}: not a directory"
    return None


def run_bench(args: argparse.Namespace) -> int:
    """The bench command; returns the process exit code."""
    wrong = _check_options(args)
    if wrong is not None:
        print(wrong, file=sys.stderr)
        return 2
    workloads = [w for w in all_workloads() if w.id in args.workload]
    base = args.dir if args.dir is not None else tempfile.gettempdir()
    fstype, mount_point = filesystem_of(base)
    # Only the implementations some chosen workload runs on: a missing optional baseline of
    # one workload is no news in a run of the others.
    wanted = [
        name
        for name in args.backend
        if any(find_implementation(name).form in w.bodies for w in workloads)
    ]
    available, skipped = _available(wanted)
    directory = tempfile.mkdtemp(prefix="storage_io-bench-", dir=base)
    print(f"storage_io bench: files in {directory} ({fstype} mounted on {mount_point or '?'})")
    warning = _memory_warning(fstype)
    if warning is not None:
        print(warning)
    scales = {w.id: (w.default_scale if args.scale is None else args.scale) for w in workloads}
    _print_plan(workloads, scales, available, args)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")

    rows = make_rows(workloads, available, args.pattern)
    started = time.monotonic()
    try:
        run_rows(rows, args.repeat, directory, scales)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    duration = time.monotonic() - started
    _report(args, rows, skipped, duration, warning)
    meta = {"directory": directory, "filesystem": fstype, "duration_s": duration}
    _write_files(args, rows, skipped, dict(meta, scales=scales))
    return 1 if any(row.problem for row in rows) else 0


def _print_plan(
    workloads: Sequence[Workload],
    scales: dict[str, float],
    available: Sequence[str],
    args: argparse.Namespace,
) -> None:
    patterns = "" if args.pattern == [SLIDING] else f"; patterns: {', '.join(args.pattern)}"
    print(
        "workloads: "
        + ", ".join(f"{w.id} x{scales[w.id]:g}" for w in workloads)
        + f"; implementations: {', '.join(available) or 'none'}; repeats: {args.repeat}"
        + patterns
    )


def _report(
    args: argparse.Namespace,
    rows: list[Row],
    skipped: dict[str, str],
    duration: float,
    warning: str | None,
) -> None:
    print()
    print(table(rows, skipped))
    if warning is not None:  # again under the table, where the figures are read
        print(warning)
    print(f"\n{len(rows) * args.repeat} runs in {duration:.1f}s")


def _write_files(
    args: argparse.Namespace, rows: list[Row], skipped: dict[str, str], meta: dict[str, object]
) -> None:
    if args.json:
        meta = dict(meta, repeat=args.repeat, patterns=args.pattern)
        write_json(args.json, rows, skipped, meta)
        print(f"results written to {args.json}")
    if args.plot:
        write_plot(rows, args.plot)
        print(f"chart written to {args.plot}")
