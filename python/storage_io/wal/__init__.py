"""`storage_io.wal`: a durable write-ahead log on any `StorageIo`.

    with Wal.open("/var/lib/app/log") as wal:
        lsn = wal.append(b"record")      # framed and numbered, not yet on disk
        wal.sync()                       # durable: one fdatasync for everything appended
        for lsn, payload in wal.replay():
            ...

The log is a directory of segment files named by the LSN of their first record
(``00000000000000000001.wal``), each a header and framed records (docs/wal-format.md).
Framing, CRC32C and the segment scans are native (``rust/wal``); this module is the
orchestration: group commit over the `StorageIo`, recovery at open, rotation, the lock.

How a commit works. Appends are framed into a native buffer; every megabyte of framed bytes
is handed to the `StorageIo` at once (``submit_write``, not waited for), so the disk works
while the caller appends. A commit writes what is left with one ``submit_write``, then one
``submit_datasync``, and the log waits for exactly those tokens (``io.wait_for``). At most
one commit is in flight: commits asked for meanwhile are merged into the next one, issued
as soon as the one in flight completes. One waiting thread (the leader) waits on the
`StorageIo` without holding the log's lock; the others sleep until `durable_lsn` passes
their LSN. That is group commit: many waiters share one ``fdatasync``.

Rotation. When a record does not fit the current segment, the appending thread makes the
segment durable, then creates the next one: header written and synced, directory synced,
before any record goes in. So a crash can leave an unfinished record only at the end of the
newest segment, which is what lets recovery tell a torn tail from corruption.

Fail closed. Any failed write or ``fdatasync`` poisons the log: nothing is retried (a second
``fdatasync`` after a writeback error may report success for lost data); every later
`append`, `commit`, `sync` raises `WalPoisonedError`, whose ``__cause__`` is the first
error. Reopening the directory recovers what was durable.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import math
import operator
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._native import (
    WAL_SEGMENT_HEADER_LEN,
    BufferExhaustedError,
    ClosedError,
    QueueFullError,
    StorageIoError,
    WalFramer,
    WalReplay,
    encode_segment_header,
    recover_segments,
)
from ..selection import open_storage_io

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Buffer, Self

    from .._native import IoCompletion, IoFd
    from ..interface import StorageIo

__all__ = [
    "Wal",
    "WalCorruptionError",
    "WalError",
    "WalPoisonedError",
    "WalRecovery",
]

DEFAULT_SEGMENT_BYTES = 64 * 2**20
# A segment must hold its header and at least one record header.
MIN_SEGMENT_BYTES = 64
# Framed bytes handed to the StorageIo as appends go, without waiting: large enough that a
# write costs the kernel little per byte, small enough that the disk starts early.
HANDOFF_BYTES = 1 << 20
# How long a commit may wait for the threads the previous one released to ask again
# (see Wal._holding): a fraction of an fdatasync (~0.3-1 ms here), several times the time a
# thread takes to wake, append and sync.
GROUP_HOLD_S = 0.0003
SEGMENT_SUFFIX = ".wal"
SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
LOCK_NAME = "LOCK"


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


@dataclass(frozen=True)
class WalRecovery:
    """What `Wal.open` found: the records and segment files it recovered, and the bytes of
    a torn tail it cut off (0 if none)."""

    records: int
    segments: int
    truncated_bytes: int


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


def _lock_directory(directory: Path) -> int:
    """Take the log's lock: an flock on its LOCK file, which conflicts across processes and
    between two opens in one process (each open has its own open file description)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WalError(
            f"the log in {directory} is already open (in this or another process): close "
            "that Wal first"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_segment_bytes(segment_bytes: object) -> int:
    if type(segment_bytes) is not int:
        try:
            segment_bytes = operator.index(segment_bytes)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"segment_bytes must be an int, not {type(segment_bytes).__name__}"
            ) from None
    if not MIN_SEGMENT_BYTES <= segment_bytes < 2**63:
        raise ValueError(
            f"segment_bytes must be in {MIN_SEGMENT_BYTES}..{2**63 - 1}, got {segment_bytes}"
        )
    return segment_bytes


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be None or a number, not {type(timeout).__name__}")
    if not 0 <= timeout < math.inf:
        raise ValueError(f"timeout must be None or a finite number of seconds >= 0, got {timeout}")
    return float(timeout)


def _as_lsn(lsn: object, name: str = "lsn") -> int:
    try:
        value = operator.index(lsn)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(lsn).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _wait_for(io: StorageIo, tokens: list[int], timeout: float | None) -> list[IoCompletion]:
    """Exactly these tokens' completions (API.md, second round): other completions stay
    queued for the io's other users, so a log can share an io the caller keeps using."""
    return io.wait_for(tokens, timeout)


class Wal:
    """A durable write-ahead log in a directory; open it with `Wal.open`.

    `append` numbers and frames a record (LSNs 1, 2, 3, ...) without waiting for the disk;
    `commit` asks for everything appended so far to be made durable and `wait_durable`
    waits for it (`sync` does both); `durable_lsn` says how far the disk is. Many threads
    may append, commit and wait at once; they share ``fdatasync``s. `replay` reads the
    durable records back. See the module docstring for how it works and
    docs/wal-format.md for the files.
    """

    io: StorageIo
    """The `StorageIo` the log writes through (its own unless one was passed to `open`)."""
    _fd: IoFd | None

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

    def _hand_off(self, tokens: list[int]) -> None:
        """Submits the framed bytes not handed off yet as one write; its token joins
        `tokens`. Poisons the log if the submission fails."""
        if not self._framer.pending_len:
            return
        offset, data = self._framer.take_pending()
        try:
            tokens.append(self._submit_write(data, offset))
            self.io.flush()  # a STANDARD ring starts I/O only at flush, poll or wait
        except Exception as exc:
            self._poison_with(exc)
            raise self._poisoned_error() from exc

    def _submit_write(self, data: bytes, offset: int) -> int:
        assert self._fd is not None
        while True:
            try:
                return self.io.submit_write(self._fd, data, offset)
            except (QueueFullError, BufferExhaustedError):
                # Back-pressure: make room by collecting our oldest write, then retry.
                if not self._chunk_tokens:
                    raise
                oldest = self._chunk_tokens.pop(0)
                (completion,) = _wait_for(self.io, [oldest], None)
                if not completion.ok:
                    assert completion.error is not None
                    raise completion.error from None

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

    def _request(self, lsn: int, *, may_hold: bool = False, rejoining: bool = False) -> None:
        """A commit covering `lsn` is wanted: start it now unless one is in flight, or
        (`may_hold`: the caller will wait for it) while the group-commit hold lasts."""
        if lsn <= self._durable_lsn:
            return
        if lsn > self._requested_lsn:
            self._requested_lsn = lsn
        if self._inflight is not None and not self._leader:
            self._collect_commit(0)
            if lsn <= self._durable_lsn:
                return  # the commit just collected covered it
        if self._inflight is None and self._poison is None:
            if may_hold and self._holding(rejoining):
                return
            self._start_commit()

    def _holding(self, rejoining: bool) -> bool:
        """Whether the next commit should wait for the threads the last one released.

        When a commit releases several waiting threads, each of them usually appends its
        next record and syncs at once (a thread per client, a record per request). Started
        right away, the next commit would carry only the first of them, and the rest would
        wait for it to finish before theirs starts: the threads split into two cohorts
        taking turns, half the records per fdatasync. So the next commit waits until they
        have all asked again, or `GROUP_HOLD_S` has passed, whichever comes first. Only
        callers that then wait for the commit hold it (`sync`, `wait_durable`); `commit()`
        and `poll()` never do.
        """
        if not self._hold_expected:
            return False
        if rejoining:
            self._hold_rejoined += 1
        if self._hold_rejoined >= self._hold_expected or time.monotonic() >= self._hold_until:
            self._hold_expected = 0
            return False
        return True

    def _start_commit(self) -> None:
        """One write of the framed bytes not yet written, one fdatasync; not waited for.

        The datasync is submitted without the lock: on the sync backend the submission is
        the fdatasync itself, and the records appended meanwhile then make the next
        commit's group. Until it is submitted the commit counts as led (`_leader`), so
        nobody collects it with its datasync missing. Callers re-check the state after."""
        fd = self._fd
        assert fd is not None
        covers = self._framer.last_lsn
        tokens = self._chunk_tokens
        self._chunk_tokens = []
        self._inflight = (tokens, covers)  # even if the submission below fails: collected
        self._hand_off(tokens)
        failure: Exception | None = None
        self._leader = True
        self._lock.release()
        try:
            tokens.append(self.io.submit_datasync(fd))
            self.io.flush()
        except Exception as exc:
            failure = exc
        finally:
            self._lock.acquire()
            self._leader = False
            self._changed.notify_all()
        if failure is not None:
            self._poison_with(failure)
            raise self._poisoned_error() from failure

    def _collect_commit(self, timeout: float | None) -> bool:
        """Waits up to `timeout` for the commit in flight, as the leader, without holding
        the lock; then records its outcome and starts the next commit if one is wanted.
        Returns False on timeout. The caller holds the lock and no other thread leads."""
        assert self._inflight is not None and not self._leader
        tokens, covers = self._inflight
        self._leader = True
        completions: list[IoCompletion] | None = None
        failure: Exception | None = None
        if timeout != 0:
            self._lock.release()
        try:
            completions = _wait_for(self.io, tokens, timeout)
        except TimeoutError:
            pass
        except Exception as exc:
            failure = exc
        finally:
            if timeout != 0:
                self._lock.acquire()
            self._leader = False
            self._changed.notify_all()
        if failure is not None:
            self._inflight = None
            self._poison_with(failure)
        if completions is None:
            return False
        self._inflight = None
        for completion in completions:
            if not completion.ok:
                assert completion.error is not None
                self._poison_with(completion.error)
                return True
        self._durable_lsn = max(self._durable_lsn, covers)
        self._commits_completed += 1
        released = sum(1 for waiting in self._waiting_lsns if waiting <= covers)
        if released >= 2:
            self._hold_expected, self._hold_rejoined = released, 0
            self._hold_until = time.monotonic() + GROUP_HOLD_S
        # A commit asked for and not held by a waiter (who starts it when the hold ends)
        # starts now: a plain commit() must not depend on anyone calling again.
        still_waiting = len(self._waiting_lsns) > released
        held = released >= 2 and still_waiting
        if self._requested_lsn > self._durable_lsn and self._poison is None and not held:
            try:
                self._start_commit()
            except WalPoisonedError:
                pass  # recorded: the waiters see the poison
        return True

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

    def _wait_durable_locked(self, lsn: int, deadline: float | None) -> bool:
        self._waiting_lsns.append(lsn)
        try:
            return self._wait_durable_loop(lsn, deadline)
        finally:
            self._waiting_lsns.remove(lsn)

    def _wait_durable_loop(self, lsn: int, deadline: float | None) -> bool:
        while self._durable_lsn < lsn:
            self._request(self._framer.last_lsn, may_hold=True)  # may collect the one in flight
            if self._durable_lsn >= lsn:
                break
            if self._poison is not None:
                raise self._poisoned_error() from self._poison
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._inflight is not None and not self._leader:
                self._collect_commit(remaining)
            elif remaining != 0:
                if self._inflight is None:  # held: wake up when the hold ends
                    held = max(0.0, self._hold_until - time.monotonic())
                    remaining = held if remaining is None else min(remaining, held)
                self._changed.wait(remaining)
            if self._durable_lsn >= lsn:
                break
            if self._poison is not None:
                raise self._poisoned_error() from self._poison
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

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
