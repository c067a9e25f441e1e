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
    IMPLEMENTATIONS,
    ImplementationUnavailable,
    create_implementation,
    is_vectored,
)

# The StorageIo implementations, each once (their vectored rows, *-v, are the same instances
# driven with submit_appendv: the overhead tests measure both call kinds on these).
BACKENDS = tuple(name for name in IMPLEMENTATIONS if name != "pwrite" and not is_vectored(name))


@pytest.fixture
def bench_dir() -> Iterator[Path]:
    """A fresh directory on the disk of the system temporary directory, removed afterwards.

    Not tmp_path: pytest keeps the last runs' tmp_path directories, and the workload files
    are large.
    """
    with tempfile.TemporaryDirectory(prefix="storage_io-benches-") as directory:
        yield Path(directory)


def make(name: str):  # type: ignore[no-untyped-def]
    """A fresh instance of implementation `name`, or skip the test saying why it cannot run."""
    try:
        return create_implementation(name)
    except ImplementationUnavailable as exc:
        pytest.skip(f"{name} unavailable here: {exc}")


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> Iterator[tuple[str, object]]:
    """(name, instance) for each implementation, the pwrite baseline and the vectored forms
    (pwritev, *-v) included; pass ``vectored=is_vectored(name)`` to run the latter."""
    target = make(request.param)
    try:
        yield request.param, target
    finally:
        target.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, object]]:
    """(name, instance) for each StorageIo implementation (not the pwrite baseline)."""
    target = make(request.param)
    try:
        yield request.param, target
    finally:
        target.close()
