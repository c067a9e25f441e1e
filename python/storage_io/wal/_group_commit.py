"""Group commit: framed bytes handed to the `StorageIo`, commits started and collected,
one leader waiting on the io for many threads, and the hold that keeps the threads a commit
released in one group.

The mechanism is described in the package docstring ("How a commit works"); `_holding`
says why a commit may wait a moment before it starts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._native import BufferExhaustedError, QueueFullError
from ._errors import WalPoisonedError
from ._state import _wait_for, _WalState

if TYPE_CHECKING:
    from .._native import IoCompletion

# Framed bytes handed to the StorageIo as appends go, without waiting: large enough that a
# write costs the kernel little per byte, small enough that the disk starts early.
HANDOFF_BYTES = 1 << 20
# How long a commit may wait for the threads the previous one released to ask again
# (see Wal._holding): a fraction of an fdatasync (~0.3-1 ms here), several times the time a
# thread takes to wake, append and sync.
GROUP_HOLD_S = 0.0003


class _GroupCommit(_WalState):
    """The commit machinery of `Wal`: everything that writes records and fdatasyncs them.
    Every method is called with ``_lock`` held; `_start_commit` and `_collect_commit` let
    go of it while they submit to or wait on the io."""

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
