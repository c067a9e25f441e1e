"""The pieces every workload's loop is made of: collecting completions, retrying after
back-pressure, waiting for a round trip, finishing a short ``os.pwrite``.

Called once per window or per refused submission, never once per record, so they cost the
per-record loops nothing; a workload module of its own (bench/wal.py, bench/aio.py) uses
them too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import BufferExhaustedError, QueueFullError
from .implementations import Backend, PwriteBaseline

if TYPE_CHECKING:
    from .._native import IoCompletion, IoFd
    from .run import PreparedRun

__all__ = [
    "BACKPRESSURE",
    "DRAIN_TIMEOUT_S",
    "backend_of",
    "collect",
    "commit",
    "drain",
    "pwrite_all",
    "reap",
    "retry",
]

# How long a wait for completions lasts before declaring them lost (a lost completion must
# end the run with an error, never hang the benchmark).
DRAIN_TIMEOUT_S = 60.0

# The refusal a submission may meet under load (guarantee 7, docs/contract.md): wait, then
# retry.
BACKPRESSURE = (QueueFullError, BufferExhaustedError)


def backend_of(run: PreparedRun) -> tuple[Backend, IoFd]:
    """The backend and registered file of a run driven through the submission API."""
    assert not isinstance(run.target, PwriteBaseline) and run.handle is not None
    return run.target, run.handle


def collect(run: PreparedRun, completions: list[IoCompletion]) -> int:
    """Note the failed ones among `completions`; return how many there are."""
    failures = run.failures
    for c in completions:
        if not c.ok:
            failures.append(c)
    return len(completions)


def retry(run: PreparedRun, submit: Callable[..., int], *args: Any) -> int:
    """Submit after back-pressure refused it: wait for completions, try again. Returns how
    many completions were collected meanwhile."""
    io, _ = backend_of(run)
    collected = 0
    while True:
        got = io.wait(1, DRAIN_TIMEOUT_S)
        if not got:
            raise TimeoutError("submission refused and no completion arrived")
        collected += collect(run, got)
        try:
            submit(*args)
            return collected
        except BACKPRESSURE:
            continue


def drain(run: PreparedRun, pending: int) -> None:
    """Wait until all `pending` submissions have completed."""
    io, _ = backend_of(run)
    while pending > 0:
        got = io.wait(pending, DRAIN_TIMEOUT_S)
        if not got:
            raise TimeoutError(f"{pending} completion(s) never arrived")
        pending -= collect(run, got)
    if pending < 0:
        raise RuntimeError(f"{-pending} more completion(s) than submissions")


def reap(run: PreparedRun, count: int) -> int:
    """Wait for `count` completions, note the failed ones; return how many came back."""
    return collect(run, backend_of(run)[0].wait(count))


def commit(run: PreparedRun, token: int, pending: int) -> int:
    """Wait until the datasync `token` has completed (the next batch starts only then);
    return how many operations are still pending."""
    wait = backend_of(run)[0].wait
    while True:
        got = wait(pending, DRAIN_TIMEOUT_S)
        if not got:
            raise TimeoutError("a datasync never completed")
        pending -= collect(run, got)
        if any(c.token == token for c in got):
            return pending


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Finish a short os.pwrite, as a careful plain loop would."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
