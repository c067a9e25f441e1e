"""Fixtures of the pytest-benchmark suite: one fresh instance of each implementation.

Run with ``python -m pytest benches --benchmark-only``. The default ``pytest`` run does not
collect this directory (pyproject.toml: ``testpaths = ["tests"]``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_io.bench import (
    ImplementationUnavailable,
    Target,
    all_implementations,
    create_implementation,
)
from storage_io.bench.machine import MEMORY_FILESYSTEMS, filesystem_of

# The StorageIo implementations of the bench command, each once
# (their vectored rows, *-v, are the same instances driven with submit_appendv: the overhead
# tests measure both call kinds on these).
BACKENDS = tuple(i.name for i in all_implementations() if i.form == "api")


def pytest_report_header() -> str:
    """Where the files go, and a warning when that is memory rather than a disk."""
    base = tempfile.gettempdir()
    fstype, mount_point = filesystem_of(base)
    line = f"benches: files in {base} ({fstype} mounted on {mount_point or '?'})"
    if fstype in MEMORY_FILESYSTEMS:
        line += (
            f"\nWARNING: {base} is on {fstype}: fdatasync does nothing there and the figures "
            "say nothing about a disk (set TMPDIR to a directory on a real disk)"
        )
    return line


@pytest.fixture
def bench_dir() -> Iterator[Path]:
    """A fresh directory on the disk of the system temporary directory, removed afterwards.

    Not tmp_path: pytest keeps the last runs' tmp_path directories, and the workload files
    are large.
    """
    with tempfile.TemporaryDirectory(prefix="storage_io-benches-") as directory:
        yield Path(directory)


def make(name: str) -> Target:
    """A fresh instance of implementation `name`, or skip the test saying why it cannot run."""
    try:
        return create_implementation(name)
    except ImplementationUnavailable as exc:
        pytest.skip(f"{name} unavailable here: {exc}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, Target]]:
    """(name, instance) for each StorageIo implementation (not the pwrite baseline)."""
    target = make(request.param)
    try:
        yield request.param, target
    finally:
        target.close()
