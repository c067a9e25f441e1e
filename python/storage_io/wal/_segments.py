"""Segment files: their names (the first LSN, so that ``ls`` sorts them), creating one
(header written and synced, directory synced, before any record), rotating to the next when
a record does not fit, and the directory fsync that makes a new or deleted name durable.

The byte layout of a segment is native (``rust/wal``) and documented in
docs/wal-format.md; this file decides when files are created and synced.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._native import WAL_SEGMENT_HEADER_LEN, encode_segment_header
from ._group_commit import _GroupCommit
from ._state import _wait_for

if TYPE_CHECKING:
    from .._native import IoFd

DEFAULT_SEGMENT_BYTES = 64 * 2**20
# A segment must hold its header and at least one record header.
MIN_SEGMENT_BYTES = 64
SEGMENT_SUFFIX = ".wal"
SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")


@dataclass
class _Segment:
    path: Path
    first_lsn: int


def _segment_path(directory: Path, first_lsn: int) -> Path:
    return directory / f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def _list_segments(directory: Path) -> list[tuple[Path, int]]:
    found = []
    for entry in os.scandir(directory):
        match = SEGMENT_NAME.match(entry.name)
        if match:
            found.append((Path(entry.path), int(match.group(1))))
    found.sort(key=lambda item: item[1])
    return found


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _SegmentFiles(_GroupCommit):
    """The segment files of `Wal`: opening one for writing, creating the next, rotating.
    The caller holds ``_lock``."""

    def _register(self, path: Path, *, create: bool) -> IoFd:
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o644)
        try:
            return self.io.register_fd(fd)
        finally:
            os.close(fd)

    def _write_and_sync(self, fd: IoFd, data: bytes, offset: int) -> None:
        """Writes `data` (if any) and fdatasyncs, waiting; raises the first error."""
        tokens = [self.io.submit_write(fd, data, offset)] if data else []
        tokens.append(self.io.submit_datasync(fd))
        self.io.flush()
        for completion in _wait_for(self.io, tokens, None):
            if not completion.ok:
                assert completion.error is not None
                raise completion.error

    def _create_segment(self, first_lsn: int) -> None:
        """Creates the segment whose first record will be `first_lsn` and makes it the
        current one: header written and synced, directory synced, before any record."""
        salt = int.from_bytes(os.urandom(8), "little")
        path = _segment_path(self._directory, first_lsn)
        fd = self._register(path, create=True)
        try:
            self._write_and_sync(fd, encode_segment_header(first_lsn, salt), 0)
            _fsync_directory(self._directory)
        except BaseException:
            self.io.deregister_fd(fd)
            raise
        if self._fd is not None:
            self.io.deregister_fd(self._fd)
        self._fd = fd
        self._framer.start_segment(first_lsn, salt, WAL_SEGMENT_HEADER_LEN, 0)
        self._segments.append(_Segment(path, first_lsn))

    def _start_next_segment(self) -> None:
        """Makes the current segment durable, then creates the next. Other appends wait
        (``_rotating``), so a caller's records stay consecutive across the switch."""
        self._rotating = True
        self._update_stopped()
        try:
            last = self._framer.last_lsn
            self._wait_durable_locked(last, None)
            try:
                self._create_segment(last + 1)
            except Exception as exc:
                self._poison_with(exc)
                raise self._poisoned_error() from exc
        finally:
            self._rotating = False
            self._update_stopped()
            self._changed.notify_all()
