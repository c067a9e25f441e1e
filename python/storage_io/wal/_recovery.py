"""Recovery at open: the native scan of every segment (``recover_segments``, rust/wal)
says which records are valid and whether the newest segment ends in a torn tail; this layer
cuts that tail (or deletes a newest segment too short to hold its header, which a crash
while creating it leaves), syncs what was found, and sets the log up to append after the
last valid record. Corruption the scan finds is raised from it as `WalCorruptionError`,
before anything here changes the disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._native import WalFramer, recover_segments
from ._group_commit import HANDOFF_BYTES
from ._segments import SEGMENT_NAME, _fsync_directory, _list_segments, _Segment, _SegmentFiles


@dataclass(frozen=True)
class WalRecovery:
    """What `Wal.open` found: the records and segment files it recovered, and the bytes of
    a torn tail it cut off (0 if none)."""

    records: int
    segments: int
    truncated_bytes: int


class _Recovery(_SegmentFiles):
    """What `Wal.open` does to the files it finds, after the lock is taken."""

    def _recover(self) -> None:
        files = _list_segments(self._directory)
        rows, torn = recover_segments([(str(p), lsn) for p, lsn in files])
        truncated, next_first = self._cut_torn_tail(torn)
        self._segments = [_Segment(Path(row[0]), row[1]) for row in rows]
        records = sum(row[3] for row in rows)
        self.recovery = WalRecovery(records, len(rows), truncated)
        if not rows:
            self._framer = WalFramer(self._segment_bytes, next_first, HANDOFF_BYTES)
            self._durable_lsn = next_first - 1
            self._requested_lsn = self._durable_lsn
            self._create_segment(next_first)
            return
        _path, first_lsn, salt, count, end, _length = rows[-1]
        last_lsn = first_lsn + count - 1
        self._framer = WalFramer(self._segment_bytes, last_lsn + 1, HANDOFF_BYTES)
        self._framer.start_segment(first_lsn, salt, end, count)
        self._fd = self._register(self._segments[-1].path, create=False)
        # After a process crash the recovered records may sit in the page cache only: they
        # count as durable once synced (and the newest segment's name with them).
        self._write_and_sync(self._fd, b"", 0)
        _fsync_directory(self._directory)
        self._durable_lsn = last_lsn
        self._requested_lsn = last_lsn

    def _cut_torn_tail(self, torn: tuple[Any, ...] | None) -> tuple[int, int]:
        """Performs the cut recovery prescribed; returns (bytes cut, LSN a new first segment
        would start at)."""
        if torn is None:
            return 0, 1
        if torn[0] == "cut":
            _kind, path, at, length = torn
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, at)
                os.fsync(fd)
            finally:
                os.close(fd)
            return length - at, 1
        _kind, path, length = torn
        name = SEGMENT_NAME.match(Path(path).name)
        os.unlink(path)
        _fsync_directory(self._directory)
        return length, int(name.group(1)) if name else 1
