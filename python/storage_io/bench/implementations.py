"""The implementations a workload is measured on, and the registry of them.

Built in, in this order (the table's order):

- ``pwrite``: a plain Python loop of ``os.pwrite`` / ``os.fdatasync``, the baseline every
  ratio is quoted against;
- ``sync``: `SyncStorageIo`; ``uring``: `UringStorageIo` in `RingMode.STANDARD`;
  ``uring-sqpoll``: `UringStorageIo` in `RingMode.SQPOLL`; all driven the way a user would
  write it, one ``submit_*`` call per record;
- ``pwritev``: a plain loop of ``os.pwritev`` (VECTOR_BATCH records per call), the baseline
  of the vectored rows;
- ``sync-v``, ``uring-v``, ``uring-sqpoll-v``: the same backends driven with
  ``submit_appendv``.

An implementation is a way to make a fresh target (a backend, or the `PwriteBaseline`
marker) plus the *form* of loop that drives it; a workload holds one loop per form
(`Workload.bodies`). Another module adds its own with `register_implementation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .. import IoUringConfig, RingMode, SyncStorageIo, UringStorageIo

if TYPE_CHECKING:
    from .._native import IoCompletion, IoFd

__all__ = [
    "Backend",
    "Implementation",
    "ImplementationUnavailable",
    "PwriteBaseline",
    "Target",
    "all_implementations",
    "create_implementation",
    "find_implementation",
    "is_vectored",
    "register_implementation",
]


class Backend(Protocol):
    """The part of the `StorageIo` interface the workloads use."""

    @property
    def backend(self) -> str: ...

    @property
    def fallback_reason(self) -> str | None: ...

    def register_fd(self, file: int) -> IoFd: ...

    def deregister_fd(self, fd: IoFd) -> None: ...

    def submit_write(self, fd: IoFd, data: bytes, offset: int) -> int: ...

    def submit_append(self, fd: IoFd, data: bytes) -> int: ...

    def submit_appendv(self, fd: IoFd, buffers: Sequence[bytes]) -> int: ...

    def submit_datasync(self, fd: IoFd) -> int: ...

    def flush(self) -> int: ...

    def wait(self, min_complete: int = 1, timeout: float | None = None) -> list[IoCompletion]: ...

    def pending_count(self) -> int: ...

    def close(self) -> None: ...


class PwriteBaseline:
    """The baseline implementation: not a backend, a marker that makes the workloads run a
    plain ``os.pwrite`` (vectored runs: ``os.pwritev``) / ``os.fdatasync`` loop instead of
    the submission API."""

    backend = "pwrite"
    fallback_reason: str | None = None

    def close(self) -> None:
        pass


Target = Backend | PwriteBaseline


class ImplementationUnavailable(Exception):
    """An implementation cannot be created here; the message says why."""


@dataclass(frozen=True)
class Implementation:
    """A named way to run a workload: how to make a fresh target, which loop drives it.

    `form` picks the workload's body (`Workload.bodies`); `compared_with` names the baseline
    implementations whose ratio columns ("x pwrite", ...) this row fills; `follows_pattern`
    says whether --pattern changes its loop (the plain os loops have no window to flush).
    """

    name: str
    create: Callable[[], Target]  # raises ImplementationUnavailable when it cannot run here
    form: str
    compared_with: tuple[str, ...] = ("pwrite",)
    follows_pattern: bool = True

    @property
    def vectored(self) -> bool:
        return self.form in ("pwritev", "apiv")


_IMPLEMENTATIONS: dict[str, Implementation] = {}


def register_implementation(implementation: Implementation) -> Implementation:
    """Add `implementation` to the ones the bench command offers (--backend); returns it."""
    if implementation.name in _IMPLEMENTATIONS:
        raise ValueError(f"implementation {implementation.name!r} is already registered")
    _IMPLEMENTATIONS[implementation.name] = implementation
    return implementation


def all_implementations() -> tuple[Implementation, ...]:
    """Every registered implementation, in the order of registration."""
    return tuple(_IMPLEMENTATIONS.values())


def find_implementation(name: str) -> Implementation:
    """The implementation called `name`; ValueError naming the known ones if none."""
    try:
        return _IMPLEMENTATIONS[name]
    except KeyError:
        known = ", ".join(_IMPLEMENTATIONS)
        raise ValueError(f"unknown implementation {name!r}; known: {known}") from None


def is_vectored(name: str) -> bool:
    """Whether implementation `name` drives the workloads with vectored calls."""
    implementation = _IMPLEMENTATIONS.get(name)
    return implementation is not None and implementation.vectored


def create_implementation(name: str) -> Target:
    """A fresh instance of the implementation called `name`.

    A vectored name (``pwritev``, ``*-v``) gives the same kind of instance as its plain
    form; the implementation's `form` says how to drive it.

    Raises `ImplementationUnavailable` with the reason when it cannot run here (no io_uring,
    or SQPOLL asked for but not granted: measuring standard mode under the SQPOLL name would
    mislabel the figure).
    """
    return find_implementation(name).create()


def _uring(mode: RingMode, name: str) -> UringStorageIo:
    try:
        io = UringStorageIo(config=IoUringConfig(mode=mode))
    except Exception as exc:  # UringUnavailableError, OSError: all mean "not here"
        raise ImplementationUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if io.backend != name:
        reason = io.fallback_reason or f"got {io.backend!r}"
        io.close()
        raise ImplementationUnavailable(f"SQPOLL not granted: {reason}")
    return io


def _standard_ring() -> Target:
    return _uring(RingMode.STANDARD, "uring")


def _sqpoll_ring() -> Target:
    return _uring(RingMode.SQPOLL, "uring-sqpoll")


_CREATE: dict[str, Callable[[], Target]] = {
    "pwrite": PwriteBaseline,
    "sync": SyncStorageIo,
    "uring": _standard_ring,
    "uring-sqpoll": _sqpoll_ring,
}


def _register_built_ins() -> None:
    """The one-call-per-record implementations, then their vectored forms (same order)."""
    for name, create in _CREATE.items():
        plain_os = name == "pwrite"
        form = "pwrite" if plain_os else "api"
        register_implementation(Implementation(name, create, form, follows_pattern=not plain_os))
    for name, create in _CREATE.items():
        plain_os = name == "pwrite"
        register_implementation(
            Implementation(
                "pwritev" if plain_os else name + "-v",
                create,
                "pwritev" if plain_os else "apiv",
                compared_with=("pwrite", "pwritev"),
                follows_pattern=not plain_os,
            )
        )


_register_built_ins()
