"""The errors of `storage_io.wal` (re-exported there). All are `StorageIoError`s, so a
caller that catches the package's errors catches the log's too."""

from __future__ import annotations

import os

from .._native import StorageIoError


class WalError(StorageIoError):
    """A storage_io.wal error: the log cannot do what was asked (see the subclasses)."""


class WalCorruptionError(WalError):
    """A segment fails a check in a way a crash cannot explain: a bad record followed by
    valid ones, a bad record in a segment older than the newest, a gap in the LSNs, a bad
    segment header. Nothing on disk was changed. ``path`` and ``offset`` say where."""

    def __init__(self, message: str, path: str | os.PathLike[str], offset: int) -> None:
        super().__init__(message)
        self.path = os.fspath(path)
        self.offset = offset


class WalPoisonedError(WalError):
    """A write or ``fdatasync`` under the log failed earlier (its ``__cause__``); the log
    accepts nothing more. Reopen it to recover what was durable."""
