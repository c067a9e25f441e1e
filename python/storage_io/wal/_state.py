"""The state every layer of `Wal` shares, and the conditions that stop appends.

`Wal` is one object built from layers, each a class in a file of its own that uses only the
ones below it: this state; group commit (`_group_commit`); segment files and rotation
(`_segments`); recovery at open (`_recovery`); the public calls (`_log`). The layers share
one lock and one set of attributes, exactly as when they were one class: cutting the code
into files changed nothing about which thread holds what, or about the path of an append.
Rejected: separate objects per concern (a committer, a segment manager) with their own
state, which would have moved the locking and put an attribute hop on the hot path.

The attributes are set by `Wal._setup` and the layers; they are declared here for the type
checker only, without class-level values, so they live in the instance as before (the
append fast path reads ``self._framer`` from the instance dict, and ``Wal.__del__`` tells an
instance that never finished opening by the missing ``_lock_fd``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._native import ClosedError
from ._errors import WalPoisonedError

if TYPE_CHECKING:
    import threading
    from pathlib import Path

    from .._native import IoCompletion, IoFd, WalFramer
    from ..interface import StorageIo
    from ._recovery import WalRecovery
    from ._segments import _Segment


def _wait_for(io: StorageIo, tokens: list[int], timeout: float | None) -> list[IoCompletion]:
    """Exactly these tokens' completions (API.md, second round): other completions stay
    queued for the io's other users, so a log can share an io the caller keeps using."""
    return io.wait_for(tokens, timeout)


class _WalState:
    """The log's state (set in `Wal._setup`), and whether appends must stop."""

    io: StorageIo
    _fd: IoFd | None  # the newest segment, registered with `io`; None until there is one
    _directory: Path
    _owns_io: bool
    _lock_fd: int  # the directory lock (_lock.py)
    _segment_bytes: int
    _lock: threading.Lock
    _changed: threading.Condition
    _closed: bool
    _closing: bool
    _poison: BaseException | None
    _rotating: bool
    _stopped: bool
    _chunk_tokens: list[int]
    _inflight: tuple[list[int], int] | None
    _leader: bool
    _commits_completed: int  # also read by the bench (storage_io.bench.wal): syncs per run
    _waiting_lsns: list[int]
    _hold_expected: int
    _hold_rejoined: int
    _hold_until: float
    _segments: list[_Segment]
    _framer: WalFramer
    _durable_lsn: int
    _requested_lsn: int
    recovery: WalRecovery

    def _wait_until_appendable(self) -> None:
        while True:
            self._raise_if_unusable()
            if not self._rotating:
                return
            self._changed.wait()

    def _raise_if_unusable(self) -> None:
        if self._closed or self._closing:
            raise ClosedError("this Wal is closed")
        if self._poison is not None:
            raise self._poisoned_error() from self._poison

    def _poisoned_error(self) -> WalPoisonedError:
        return WalPoisonedError(
            f"the log is poisoned by a failed write or fdatasync ({self._poison!r}); nothing "
            "is retried: reopen it to recover what was durable"
        )

    def _poison_with(self, error: BaseException) -> None:
        if self._poison is None:
            self._poison = error
        self._update_stopped()
        self._changed.notify_all()

    def _update_stopped(self) -> None:
        self._stopped = self._closed or self._closing or self._rotating or self._poison is not None
        self._framer.blocked = self._stopped
