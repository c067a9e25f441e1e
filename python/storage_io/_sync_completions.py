"""Handing completions back under `SyncStorageIo`: flush, poll, wait, wait_for.

Every operation completes in the order it finished into one list, `_ready` (an append is
all the regular-file submit path can afford). A `wait_for()` claims its tokens: the ready
completions are then indexed by token (`_ready_by_token`), the claimed ones stay there for
their claimant, and `poll_completions()`/`wait()` hand back only the unclaimed ones, oldest
first, so no completion is handed back twice or lost between two waiting threads. Waiters
sleep on the instance's condition variable, which releases the lock: the other threads'
calls go on meanwhile, and a closing instance wakes them.

`_CompletionHandBack` is a part of `SyncStorageIo`, not a class of its own, for the same
reason as the stream workers: the submit path appends to `_ready` directly.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ._native import IoCompletion
from ._sync_arguments import _as_min_complete, _as_tokens, _deadline, _remaining
from .interface import StorageIo

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._native import ClosedError


class _CompletionHandBack(StorageIo):
    """The completion queue of `SyncStorageIo` and the calls that hand it back (mixed into
    the backend class; the state is the instance's). A `StorageIo`, so that help() shows the
    contract's documentation for the methods it implements."""

    if TYPE_CHECKING:
        # The instance state these methods use: it lives in SyncStorageIo's __slots__.
        _lock: threading.Lock
        _cond: threading.Condition
        _closed: bool
        _next_token: int
        _flushed_upto: int
        _ready: list[IoCompletion]
        _ready_by_token: dict[int, IoCompletion]
        _in_flight: set[int]
        _claimed: set[int]
        _waiters: int

        def _closed_error(self) -> ClosedError: ...
    else:
        # No slots of its own, so that a SyncStorageIo still has no __dict__. Hidden from
        # the type checker, which would otherwise hold the assignments below to this
        # class's (empty) slots rather than to those of SyncStorageIo.
        __slots__ = ()

    def _complete_inline(self, result: int, data: bytes | None) -> int:
        """Issue a token for an operation that already ran and queue its completion."""
        token = self._next_token
        self._next_token = token + 1
        if data is None:
            self._ready.append(IoCompletion(token, result))
        else:
            self._ready.append(IoCompletion(token, result, data))
        if self._waiters:
            self._cond.notify_all()
        return token

    def flush(self) -> int:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            # Submissions ran (or were queued to a stream worker) when they were made, so
            # there is nothing to hand over; the count is that of both backends: the
            # submit_* calls since the last flush/poll/wait/wait_for.
            submitted = self._next_token - self._flushed_upto
            self._flushed_upto = self._next_token
            return submitted

    def _index_ready(self) -> dict[int, IoCompletion]:
        """Move the newest completions into the by-token index (order kept: the index holds
        the older ones) and return it."""
        index = self._ready_by_token
        if self._ready:
            for completion in self._ready:
                index[completion.token] = completion
            self._ready = []
        return index

    def _take_unclaimed(self) -> list[IoCompletion]:
        """Hand back every ready completion that no wait_for() is waiting for, oldest
        first."""
        if not self._claimed:
            ready = self._ready
            self._ready = []
            if self._ready_by_token:
                ready[:0] = self._ready_by_token.values()
                self._ready_by_token = {}
            return ready
        claimed = self._claimed
        index = self._index_ready()
        self._ready_by_token = {t: c for t, c in index.items() if t in claimed}
        return [c for t, c in index.items() if t not in claimed]

    def poll_completions(self) -> list[IoCompletion]:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._flushed_upto = self._next_token
            return self._take_unclaimed()

    def wait(self, min_complete: int = 1, timeout: float | None = None) -> list[IoCompletion]:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            min_complete = _as_min_complete(min_complete)
            deadline = _deadline(timeout)
            self._flushed_upto = self._next_token
            if not self._in_flight:
                # Nothing runs in a worker: every operation outstanding is ready already.
                return self._take_unclaimed()
            self._waiters += 1
            try:
                while True:
                    claimed = self._claimed
                    if claimed:
                        index = self._index_ready()
                        ready = len(index)
                        unclaimed_ready = ready - sum(1 for t in claimed if t in index)
                    else:
                        ready = unclaimed_ready = len(self._ready) + len(self._ready_by_token)
                    outstanding = ready + len(self._in_flight) - len(claimed)
                    if unclaimed_ready >= min(min_complete, outstanding):
                        return self._take_unclaimed()
                    remaining = _remaining(deadline)
                    if remaining is not None and remaining <= 0:
                        return self._take_unclaimed()
                    self._cond.wait(remaining)
                    if self._closed:
                        raise self._closed_error()
            finally:
                self._waiters -= 1

    def wait_for(self, tokens: Iterable[int], timeout: float | None = None) -> list[IoCompletion]:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            wanted = _as_tokens(tokens)
            deadline = _deadline(timeout)
            self._flushed_upto = self._next_token
            index = self._index_ready()
            # Each token in turn, the first that cannot be waited for named, for whichever
            # reason: the order the io_uring backend checks them in.
            seen: set[int] = set()
            for token in wanted:
                if token not in index and token not in self._in_flight:
                    raise ValueError(
                        f"token {token} is not outstanding on this instance (never returned "
                        "by submit_*, or already handed back)"
                    )
                if token in seen:
                    raise ValueError(f"token {token} appears more than once in tokens")
                seen.add(token)
                if token in self._claimed:
                    raise ValueError(
                        f"token {token} is already being waited for by another wait_for()"
                    )
            self._claimed.update(wanted)
            try:
                while True:
                    index = self._index_ready()
                    missing = sum(1 for t in wanted if t not in index)
                    if not missing:
                        return [index.pop(t) for t in wanted]
                    remaining = _remaining(deadline)
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(
                            f"wait_for: {missing} of {len(wanted)} tokens still not complete "
                            f"after {timeout} s"
                        )
                    self._cond.wait(remaining)
                    if self._closed:
                        raise self._closed_error()
            finally:
                self._claimed.difference_update(wanted)
                if self._waiters:
                    # Released tokens (a timeout) count for wait() again.
                    self._cond.notify_all()

    def pending_count(self) -> int:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            return len(self._ready) + len(self._ready_by_token) + len(self._in_flight)
