"""One contract suite (docs/contract.md), run against every backend.

`backend_kind` is "sync", "uring" (RingMode.STANDARD) or "uring-sqpoll" (RingMode.SQPOLL).
io_uring cases skip, with the reason the backend gives, only when the ring cannot be set up
(`UringUnavailableError`) or when SQPOLL was asked for and not granted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Let tests import the shared helpers as a plain module.
sys.path.insert(0, str(Path(__file__).parent))

from _support import skip_or_fail  # noqa: E402
from storage_io import (  # noqa: E402
    IoUringConfig,
    RingMode,
    SyncStorageIo,
    UringStorageIo,
    UringUnavailableError,
)

BACKENDS = ("sync", "uring", "uring-sqpoll")
URING_BACKENDS = ("uring", "uring-sqpoll")


def build_backend(kind: str, **config: Any) -> Any:
    """Construct one backend; `config` (IoUringConfig fields) is ignored by the sync backend."""
    if kind == "sync":
        return SyncStorageIo()
    mode = RingMode.SQPOLL if kind == "uring-sqpoll" else RingMode.STANDARD
    try:
        io = UringStorageIo(config=IoUringConfig(mode=mode, **config))
    except UringUnavailableError as exc:
        skip_or_fail(f"io_uring unavailable: {exc}")
    if kind == "uring-sqpoll" and io.backend != "uring-sqpoll":
        reason = io.fallback_reason
        io.close()
        assert reason, f"asked for SQPOLL, got {io.backend!r} without a fallback_reason"
        skip_or_fail(f"SQPOLL not granted: {reason}")
    if kind == "uring":
        assert io.backend == "uring", f"asked for STANDARD, got {io.backend!r}"
    return io


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=URING_BACKENDS)
def uring_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _closing_factory(kind: str) -> Any:
    """A factory of `kind` backends (IoUringConfig fields as keywords) that closes every
    instance it made when the fixture using it ends."""
    made: list = []

    def factory(**config: Any) -> Any:
        io = build_backend(kind, **config)
        made.append(io)
        return io

    yield factory
    for io in made:
        io.close()


@pytest.fixture
def make_io(backend_kind: str) -> Any:
    """Factory: `make_io(buffer_size=4096, ...)` builds the parametrized backend; every
    instance is closed at teardown."""
    yield from _closing_factory(backend_kind)


@pytest.fixture
def io(make_io: Callable[..., Any]) -> Any:
    """The parametrized backend with the default configuration."""
    return make_io()


@pytest.fixture
def uring_io(uring_kind: str) -> Any:
    io = build_backend(uring_kind)
    yield io
    io.close()


@pytest.fixture
def make_uring_io(uring_kind: str) -> Any:
    """As `make_io`, for the io_uring backends only (both ring modes)."""
    yield from _closing_factory(uring_kind)
