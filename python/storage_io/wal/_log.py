"""`Wal`: the public calls of the log (open, append, commit, wait, read, trim, close).

The machinery is in the layers it inherits (see _state.py); this file is what a user calls,
with the docstrings that are the contract.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .._native import ClosedError, WalReplay
from ..selection import open_storage_io
from ._arguments import _as_lsn, _check_segment_bytes, _check_timeout
from ._errors import WalPoisonedError
from ._group_commit import HANDOFF_BYTES
from ._lock import _lock_directory
from ._recovery import _Recovery
from ._segments import DEFAULT_SEGMENT_BYTES, _fsync_directory, _list_segments
from ._state import _wait_for

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

    from typing_extensions import Buffer

    from ..interface import StorageIo


class Wal(_Recovery):
    """A durable write-ahead log in a directory; open it with `Wal.open`.

    `append` numbers and frames a record (LSNs 1, 2, 3, ...) without waiting for the disk;
    `commit` asks for everything appended so far to be made durable and `wait_durable`
    waits for it (`sync` does both); `durable_lsn` says how far the disk is. Many threads
    may append, commit and wait at once; they share ``fdatasync``s. `replay` reads the
    durable records back. See the docstring of the package (``help(storage_io.wal)``) for
    how it works and docs/wal-format.md for the files.
    """

    io: StorageIo
    """The `StorageIo` the log writes through (its own unless one was passed to `open`)."""

    def __init__(self) -> None:
        raise TypeError("use Wal.open(directory, ...) to open or create a log")

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        io: StorageIo | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        create: bool = True,
    ) -> Wal:
        """Open the log in `directory`, recovering it, or create a new one there.

        Recovery checks every record of every segment. A torn tail (a record at the end of
        the newest segment that fails its check, with no valid record after it: what a
        crash mid-write leaves) is cut off and synced, and `recovery` says how many bytes;
        any other failed check raises `WalCorruptionError` and changes nothing. What is
        recovered is synced before it counts as durable.

        `io`: the `StorageIo` to write through; by default the log opens one with
        `open_storage_io()` and closes it in `close()`; one you pass stays yours and stays
        open. `segment_bytes`: the size a segment file grows to before the next one starts
        (a record larger than that gets a segment of its own). `create`: make the directory
        and the log if missing; with False, a directory without a log raises
        `FileNotFoundError`. A log open elsewhere (this process or another) raises `WalError`.
        """
        segment_bytes = _check_segment_bytes(segment_bytes)
        path = Path(os.fspath(directory))
        if not path.is_dir() or not _list_segments(path):
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no write-ahead log here", str(path))
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                _fsync_directory(path.parent)
        lock_fd = _lock_directory(path)
        owns_io = io is None
        wal = cls.__new__(cls)
        wal._fd = None
        try:
            if io is None:
                io = open_storage_io()
            wal._setup(path, io, owns_io, lock_fd, segment_bytes)
        except BaseException:
            wal._closed = True  # so that __del__ does not close the lock descriptor again
            if wal._fd is not None and io is not None and not io.closed:
                io.deregister_fd(wal._fd)  # leave nothing registered in an io the caller keeps
            os.close(lock_fd)
            if owns_io and io is not None:
                io.close()
            raise
        return wal

    def _setup(
        self, directory: Path, io: StorageIo, owns_io: bool, lock_fd: int, segment_bytes: int
    ) -> None:
        self.io = io
        self._directory = directory
        self._owns_io = owns_io
        self._lock_fd = lock_fd
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._closing = False  # close() is waiting for the last commit: no more appends
        self._poison: BaseException | None = None
        self._rotating = False
        # Closed, closing, rotating or poisoned: appends take the slow path that says which.
        self._stopped = False
        self._chunk_tokens: list[int] = []  # handed-off writes not yet part of a commit
        self._inflight: tuple[list[int], int] | None = None  # (tokens, LSN it covers)
        self._leader = False
        self._commits_completed = 0
        # Group commit (see _holding): LSNs threads wait for, and the hold after a commit.
        self._waiting_lsns: list[int] = []
        self._hold_expected = 0
        self._hold_rejoined = 0
        self._hold_until = 0.0
        self._recover()

    # -- appending ----------------------------------------------------------------------

    def append(self, payload: Buffer) -> int:
        """Put one record at the end of the log and return its LSN.

        `payload` is any bytes-like object of any length, 0 included; it is copied before
        the call returns. Does not wait for the disk (except, once per segment, to make the
        full segment durable before starting the next). Raises `WalPoisonedError` after a
        failed write, `ClosedError` after `close()`, `TypeError` for a payload that is not
        bytes-like, `ValueError` for one over 4 GiB - 1.
        """
        # The common case takes no lock of ours: the native framer numbers and frames the
        # record atomically (under the GIL), or declines it (0) when the log is closed,
        # poisoned, rotating or busy, or the payload is not `bytes`; negative means framed,
        # with a megabyte of framed bytes to hand to the io.
        lsn: int = self._framer.append(payload)
        if lsn > 0:
            return lsn
        return self._append_slowly(payload, lsn)

    def _append_slowly(self, payload: Buffer, lsn: int) -> int:
        with self._lock:
            if lsn < 0:
                self._hand_off(self._chunk_tokens)
                return -lsn
            if self._stopped:
                self._wait_until_appendable()
            lsn = self._framer.append_locked(payload)
            if not lsn:
                self._start_next_segment()
                lsn = self._framer.append_locked(payload)
            if lsn < 0:
                self._hand_off(self._chunk_tokens)
            return abs(lsn)

    def append_many(self, payloads: Iterable[Buffer]) -> int:
        """Append every record of `payloads` (consecutive LSNs, no other thread's record
        between them) and return the last LSN, or `last_lsn` if there were none.

        As `append` for each record; if one is refused (not bytes-like, too large), the
        records before it stay appended and the error is raised.
        """
        with self._lock:
            if self._stopped:
                self._wait_until_appendable()
            records = iter(payloads)
            self._framer.blocked = True  # no other thread's record in between
            try:
                while True:
                    last, leftover, exhausted = self._framer.append_many(records)
                    if leftover is not None:
                        self._start_next_segment()
                        self._framer.blocked = True
                        last = abs(self._framer.append_locked(leftover))
                    if self._framer.pending_len >= HANDOFF_BYTES:
                        self._hand_off(self._chunk_tokens)
                    if exhausted:
                        return last
            finally:
                self._update_stopped()

    # -- committing ---------------------------------------------------------------------

    def commit(self) -> int:
        """Ask for every record appended so far to be made durable; return the LSN this
        covers (`last_lsn`). Does not block: the write and ``fdatasync`` go to the
        `StorageIo` now, or, while one commit is in flight, as one commit right after it
        (group commit). Raises `WalPoisonedError` after a failed write, `ClosedError`
        after `close()`."""
        with self._lock:
            self._raise_if_unusable()
            last: int = self._framer.last_lsn
            self._request(last)
            return last

    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool:
        """Block until `durable_lsn` >= `lsn`, without holding the GIL; return True, or
        False if `timeout` seconds pass first.

        Asks for a commit covering `lsn` first if none has been asked for. Raises
        `WalPoisonedError` if `lsn` can no longer become durable (a failed write or
        fdatasync), `ValueError` for an LSN above `last_lsn` (or negative), `ClosedError`
        after `close()`.
        """
        lsn = _as_lsn(lsn)
        timeout = _check_timeout(timeout)
        with self._lock:
            if self._closed:
                raise ClosedError("this Wal is closed")
            if lsn > self._framer.last_lsn:
                raise ValueError(
                    f"lsn {lsn} has not been handed out: the last LSN is {self._framer.last_lsn}"
                )
            deadline = None if timeout is None else time.monotonic() + timeout
            return self._wait_durable_locked(lsn, deadline)

    def sync(self) -> int:
        """`commit()`, then `wait_durable()` for it; return the LSN now durable."""
        with self._lock:
            self._raise_if_unusable()
            lsn: int = self._framer.last_lsn
            self._request(lsn, may_hold=True, rejoining=True)
            self._wait_durable_locked(lsn, None)
            return lsn

    def poll(self) -> int:
        """Advance the log without blocking; return `durable_lsn`.

        For event loops (``storage_io.aio.AsyncWal`` calls it when the `StorageIo`'s
        completion eventfd fires): if the commit in flight has completed, collects it
        (``io.wait_for(tokens, timeout=0)``) and advances
        `durable_lsn`; then, if a commit has been asked for and none is in flight, starts
        it (``submit_write``,
        ``submit_datasync``, ``flush``). Never waits for the disk. If a thread is already
        waiting on the commit in flight, leaves it to that thread. Raises
        `WalPoisonedError` once a write or fdatasync has failed, `ClosedError` after
        `close()`.
        """
        with self._lock:
            if self._closed:
                raise ClosedError("this Wal is closed")
            if self._inflight is not None and not self._leader:
                self._collect_commit(0)
            if (
                self._inflight is None
                and self._poison is None
                and self._requested_lsn > self._durable_lsn
            ):
                self._start_commit()
            if self._poison is not None:
                raise self._poisoned_error() from self._poison
            return self._durable_lsn

    # -- state --------------------------------------------------------------------------

    @property
    def durable_lsn(self) -> int:
        """Every record up to this LSN is on disk and survives a crash or power loss.

        Reading it also collects a commit that has completed, if no thread is waiting for
        it (without blocking), so that ``commit()`` followed by reading `durable_lsn` sees
        the log advance."""
        if self._inflight is not None and not self._leader and self._lock.acquire(False):
            try:
                if self._inflight is not None and not self._leader and not self._closed:
                    self._collect_commit(0)
            except WalPoisonedError:
                pass  # recorded; the calls that must fail will raise it
            finally:
                self._lock.release()
        return self._durable_lsn

    @property
    def last_lsn(self) -> int:
        """The last LSN handed out (0 for an empty log)."""
        return self._framer.last_lsn  # type: ignore[no-any-return]

    @property
    def first_lsn(self) -> int:
        """The oldest LSN still kept (after `truncate_before`); `last_lsn + 1` if none."""
        with self._lock:
            return self._segments[0].first_lsn

    @property
    def backend(self) -> str:
        """The backend string of the `StorageIo` underneath (``"uring"``, ``"sync"``...)."""
        return self.io.backend

    # -- reading and trimming -----------------------------------------------------------

    def replay(self, from_lsn: int | None = None) -> Iterator[tuple[int, bytes]]:
        """An iterator of ``(lsn, payload)`` in LSN order, from `from_lsn` (default
        `first_lsn`) up to `durable_lsn` as it is now, when the iteration starts.

        Never yields a record that is not durable; every record is checked as it is read
        (`WalCorruptionError` if one fails). Its files are opened here, so a later
        `truncate_before` does not cut it short. Raises `ValueError` for a `from_lsn`
        below `first_lsn` (those records were deleted), `ClosedError` after `close()`.
        """
        with self._lock:
            if self._closed:
                raise ClosedError("this Wal is closed")
            first = self._segments[0].first_lsn
            start = first if from_lsn is None else _as_lsn(from_lsn, "from_lsn")
            if start < first:
                raise ValueError(
                    f"from_lsn {start} is below first_lsn {first}: truncate_before deleted it"
                )
            until = self._durable_lsn
            segments = self._segments
            wanted = [
                (str(s.path), s.first_lsn)
                for i, s in enumerate(segments)
                if s.first_lsn <= until
                and (i + 1 == len(segments) or segments[i + 1].first_lsn > start)
            ]
            if start > until:
                wanted = []
            # The native reader hands out records in batches (lists); flattened in C.
            return itertools.chain.from_iterable(WalReplay(wanted, start, until))

    def truncate_before(self, lsn: int) -> None:
        """Delete the segment files whose records all have LSNs below `lsn`; never a record
        at or above it. The segment being appended to is always kept, so `first_lsn` may
        stay below `lsn`. Durable when it returns (directory synced). Raises `ValueError`
        for an LSN above `last_lsn + 1`, `ClosedError` after `close()`."""
        lsn = _as_lsn(lsn)
        with self._lock:
            if self._closed:
                raise ClosedError("this Wal is closed")
            if lsn > self._framer.last_lsn + 1:
                raise ValueError(
                    f"lsn {lsn} is beyond the log: the last LSN is {self._framer.last_lsn}"
                )
            segments = self._segments
            doomed = 0
            # Every segment but the newest is wholly durable (rotation syncs it first).
            while doomed + 1 < len(segments) and segments[doomed + 1].first_lsn <= lsn:
                doomed += 1
            if not doomed:
                return
            for segment in segments[:doomed]:
                os.unlink(segment.path)
            self._segments = segments[doomed:]
            _fsync_directory(self._directory)

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Commit and wait for everything appended, then release the files, the lock, and
        the `StorageIo` if the log opened it. A second call does nothing; other calls
        afterwards raise `ClosedError`. If the log is poisoned, the resources are released
        all the same and `WalPoisonedError` is raised (the records after `durable_lsn` are
        not on disk)."""
        error: BaseException | None = None
        with self._lock:
            if self._closed:
                return
            while self._rotating:
                self._changed.wait()
            self._closing = True
            self._update_stopped()  # from here on no record can join the last commit
            try:
                if self._poison is None:
                    self._wait_durable_locked(self._framer.last_lsn, None)
            except WalPoisonedError as exc:
                error = exc
            if (
                self._poison is not None
                and error is None
                and self._framer.last_lsn > self._durable_lsn
            ):
                error = self._poisoned_error()
                error.__cause__ = self._poison
            while self._leader:
                self._changed.wait()
            self._closed = True
            self._update_stopped()
            self._release()
            self._changed.notify_all()
        if error is not None:
            raise error

    def _release(self) -> None:
        outstanding = list(self._chunk_tokens)
        if self._inflight is not None:
            outstanding += self._inflight[0]
        self._chunk_tokens = []
        self._inflight = None
        try:
            if outstanding and not self.io.closed:
                # Ours: leave none of them in the queue of an io the caller keeps.
                _wait_for(self.io, outstanding, None)
            if self._fd is not None and not self.io.closed:
                self.io.deregister_fd(self._fd)
        finally:
            self._fd = None
            os.close(self._lock_fd)
            if self._owns_io:
                self.io.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except WalPoisonedError:
            if exc_type is None:
                raise  # otherwise the error already propagating says more

    def __del__(self) -> None:
        # A log dropped without close() must not keep its directory locked for the rest
        # of the process. What was not durable stays that way (close() is the way to
        # commit); the owned io is finalized by itself.
        if not getattr(self, "_closed", True) and hasattr(self, "_lock_fd"):
            self._closed = True
            try:
                os.close(self._lock_fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("poisoned" if self._poison else "open")
        return (
            f"<Wal {str(self._directory)!r} {state} last_lsn={self.last_lsn} "
            f"durable_lsn={self._durable_lsn} backend={self.io.backend!r}>"
        )
