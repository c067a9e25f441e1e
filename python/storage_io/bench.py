"""The benchmark workloads and the ``python -m storage_io bench`` command.

The five workloads of docs/workloads.md (W1..W5) live here, once: the ``bench`` command and
the pytest-benchmark suite in ``benches/`` both run these functions, so every figure the
project quotes measures the same work.

Each workload is measured on an *implementation*:

- ``pwrite``: a plain Python loop of ``os.pwrite`` / ``os.fdatasync``, the baseline every
  ratio is quoted against;
- ``sync``: `SyncStorageIo`;
- ``uring``: `UringStorageIo` in `RingMode.STANDARD`;
- ``uring-sqpoll``: `UringStorageIo` in `RingMode.SQPOLL`.

The backends are driven the way a user would write it: one ``submit_*`` call per record,
completions collected with ``wait()`` whenever a few hundred are outstanding, every
completion checked.

Where a workload has a vectored form (W1, W2, W5: many small records to one file), its best
form is measured as separate rows, next to the one-call-per-record rows, never instead:

- ``pwritev``: a plain Python loop of ``os.pwritev``, `VECTOR_BATCH` records per call (W2:
  one call per batch of 16, then ``os.fdatasync``), the baseline of the vectored rows;
- ``sync-v``, ``uring-v``, ``uring-sqpoll-v``: the same backends driven with
  ``submit_appendv``, `VECTOR_BATCH` records per call (W2: one ``submit_appendv`` of the
  batch, then ``submit_datasync``).

W3 (1 MiB records: the per-call cost is already negligible) and W4 (one record per round
trip) have no vectored rows.

After each run the file is read back and compared with the bytes that were written; a run
that wrote anything else is reported as WRONG, with no figure.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

from . import (
    BufferExhaustedError,
    IoUringConfig,
    QueueFullError,
    RingMode,
    SyncStorageIo,
    UringStorageIo,
)

if TYPE_CHECKING:
    from ._native import IoCompletion, IoFd

__all__ = [
    "IMPLEMENTATIONS",
    "WORKLOADS",
    "ImplementationUnavailable",
    "Outcome",
    "PreparedRun",
    "PwriteBaseline",
    "VECTORED",
    "Workload",
    "append_4k",
    "create_implementation",
    "group_commit",
    "add_arguments",
    "is_vectored",
    "prepare_run",
    "run_bench",
    "run_workload",
    "seq_1m",
    "small_256",
    "sync_latency",
]

KIB = 1024
MIB = 1024 * KIB

# Submissions allowed in flight before the loop waits for some to complete. A user keeps
# this bounded to stay inside the ring (256 entries) and the buffer pool (256 x 64 KiB by
# default): "a few hundred" for small records, a handful of 1 MiB writes.
SMALL_RECORD_WINDOW = 192
LARGE_RECORD_WINDOW = 8

# Records per call of the vectored rows (pwritev, *-v) of W1 and W5; W2's vectored call
# is its batch of GROUP_COMMIT_BATCH, also 16. 16 x 4 KiB = 64 KiB, exactly one registered
# buffer of the default pool (W1); 16 x 256 B = 4 KiB (W5). Larger calls raise every
# vectored row of W5, os.pwritev's too (64 per call: about 2x here), and change little on
# W1, whose time is the page cache's.
VECTOR_BATCH = 16
# Vectored submissions allowed in flight before the loop waits: 64 x 16 records (4 MiB of
# W1), inside the ring and the buffer pool. 16 to 128 measured the same within the noise.
VECTOR_WINDOW = 64

# How long the final drain waits for completions before declaring them lost (a lost
# completion must end the run with an error, never hang the benchmark).
DRAIN_TIMEOUT_S = 60.0

# The refusal a submission may meet under load (guarantee 7, README): wait, then retry.
_BACKPRESSURE = (QueueFullError, BufferExhaustedError)


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


Target = Union[Backend, PwriteBaseline]


class ImplementationUnavailable(Exception):
    """An implementation cannot be created here; the message says why."""


# The one-call-per-record implementations, then their vectored forms (same order).
IMPLEMENTATIONS = (
    "pwrite",
    "sync",
    "uring",
    "uring-sqpoll",
    "pwritev",
    "sync-v",
    "uring-v",
    "uring-sqpoll-v",
)
VECTORED = ("pwritev", "sync-v", "uring-v", "uring-sqpoll-v")


def is_vectored(name: str) -> bool:
    """Whether implementation `name` drives the workloads with vectored calls."""
    return name in VECTORED


def create_implementation(name: str) -> Target:
    """A fresh instance of the implementation called `name` (one of `IMPLEMENTATIONS`).

    A vectored name (``pwritev``, ``*-v``) gives the same instance as its plain form; pass
    ``vectored=is_vectored(name)`` to `run_workload` / `prepare_run` to drive it vectored.

    Raises `ImplementationUnavailable` with the reason when it cannot run here (no io_uring,
    or SQPOLL asked for but not granted: measuring standard mode under the SQPOLL name would
    mislabel the figure).
    """
    if name == "pwritev":
        name = "pwrite"
    elif name in VECTORED:
        name = name[: -len("-v")]
    if name == "pwrite":
        return PwriteBaseline()
    if name == "sync":
        return SyncStorageIo()
    if name in ("uring", "uring-sqpoll"):
        mode = RingMode.SQPOLL if name == "uring-sqpoll" else RingMode.STANDARD
        try:
            io = UringStorageIo(config=IoUringConfig(mode=mode))
        except Exception as exc:  # UringUnavailableError, OSError: all mean "not here"
            raise ImplementationUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if io.backend != name:
            reason = io.fallback_reason or f"got {io.backend!r}"
            io.close()
            raise ImplementationUnavailable(f"SQPOLL not granted: {reason}")
        return io
    raise ValueError(f"unknown implementation {name!r}; known: {', '.join(IMPLEMENTATIONS)}")


# -- records ---------------------------------------------------------------------------


def record_pool(size: int) -> tuple[bytes, ...]:
    """The distinct records a workload cycles through (record i is ``pool[i % len(pool)]``).

    Several different records, so that a misplaced, reordered or interleaved record shows in
    the file check; few enough that they stay in the CPU cache, as a record a program has
    just produced would be.
    """
    count = 61 if size <= 64 * KIB else 7
    rng = random.Random(size)
    return tuple(rng.randbytes(size) for _ in range(count))


def check_file(path: str, pool: Sequence[bytes], count: int) -> str | None:
    """None if `path` holds exactly `count` records of `pool`, cycled; else what is wrong."""
    cycle = b"".join(pool)
    expected = count * len(pool[0])
    size = os.stat(path).st_size
    if size != expected:
        return f"file is {size} bytes, expected {expected}"
    offset = 0
    with open(path, "rb", buffering=0) as f:
        while offset < expected:
            want = cycle[: min(len(cycle), expected - offset)]
            got = f.read(len(want))
            if got != want:
                at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(got))
                return f"file differs from the bytes written at offset {offset + at}"
            offset += len(want)
    return None


# -- workloads -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of one workload on one implementation measured."""

    workload: str
    implementation: str
    elapsed_s: float
    records: int
    bytes_written: int
    batches: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    problem: str | None = None  # None when every completion was ok and the file is right
    vectored: bool = False  # the workload's vectored form (os.pwritev / submit_appendv)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def figures(self) -> dict[str, float]:
        """The figures this run gives, by name (empty when the run went wrong)."""
        if self.problem is not None:
            return {}
        out: dict[str, float] = {}
        if self.latencies_ns:
            samples = sorted(self.latencies_ns)
            out["p50_us"] = _percentile(samples, 0.50) / 1000
            out["p99_us"] = _percentile(samples, 0.99) / 1000
            return out
        seconds = max(self.elapsed_s, 1e-9)
        out["records_per_s"] = self.records / seconds
        out["mib_per_s"] = self.bytes_written / MIB / seconds
        if self.batches:
            out["batches_per_s"] = self.batches / seconds
        return out


def _percentile(sorted_samples: Sequence[int], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(q * len(sorted_samples)))
    return float(sorted_samples[rank - 1])


class PreparedRun:
    """One run, split into its phases so that only the work itself is timed.

    Construction opens a new file and registers it (untimed); `execute()` is the timed
    work; `finish()` deregisters, checks the file, removes it and returns the `Outcome`.
    With `vectored`, the workload's vectored form runs (``os.pwritev`` / ``submit_appendv``);
    a workload without one raises ValueError.
    """

    def __init__(
        self,
        workload: Workload,
        target: Target,
        directory: str,
        scale: float,
        label: str = "",
        vectored: bool = False,
    ) -> None:
        if vectored and not workload.has_vectored:
            raise ValueError(f"{workload.id} {workload.name} has no vectored form")
        self.workload = workload
        self.target = target
        self.vectored = vectored
        if label:
            self.implementation = label
        elif vectored:
            self.implementation = "pwritev" if target.backend == "pwrite" else target.backend + "-v"
        else:
            self.implementation = target.backend
        self.count = max(1, round(workload.full_count * scale))
        self.pool = record_pool(workload.record_size)
        self.failures: list[IoCompletion] = []
        self.latencies_ns: list[int] = []
        self.problem: str | None = None
        self.elapsed_s = 0.0
        handle, self.path = tempfile.mkstemp(
            prefix=f"{workload.id}-{self.implementation}-", suffix=".dat", dir=directory
        )
        self.raw_fd = -1
        self.handle: IoFd | None = None
        if isinstance(target, PwriteBaseline):
            self.raw_fd = handle
        else:
            try:
                self.handle = target.register_fd(handle)
            finally:
                os.close(handle)

    @property
    def records(self) -> int:
        """How many records the run writes."""
        return self.count * self.workload.records_per_unit

    def execute(self) -> None:
        """The timed work. Sets `problem` instead of raising when an operation fails."""
        workload = self.workload
        if isinstance(self.target, PwriteBaseline):
            body = workload.pwritev_body if self.vectored else workload.pwrite_body
        else:
            body = workload.apiv_body if self.vectored else workload.api_body
        assert body is not None  # checked at construction
        start = time.perf_counter()
        try:
            body(self)
        except Exception as exc:
            self.problem = f"ERROR: {type(exc).__name__}: {exc}"
        self.elapsed_s = time.perf_counter() - start

    def finish(self) -> Outcome:
        """Release the file, check its bytes, remove it; return what was measured."""
        try:
            if self.raw_fd >= 0:
                os.close(self.raw_fd)
                self.raw_fd = -1
            elif self.handle is not None and not isinstance(self.target, PwriteBaseline):
                left = self.target.pending_count()
                if self.problem is None and left:
                    self.problem = f"ERROR: pending_count() is {left} after every completion"
                self.target.deregister_fd(self.handle)
                self.handle = None
            if self.problem is None and self.failures:
                first = self.failures[0]
                self.problem = (
                    f"FAILED: {len(self.failures)} completion(s) not ok, first: token "
                    f"{first.token} result {first.result} ({first.error})"
                )
            if self.problem is None:
                wrong = check_file(self.path, self.pool, self.records)
                if wrong is not None:
                    self.problem = f"WRONG: {wrong}"
        finally:
            os.unlink(self.path)
            # Freeing the file's blocks (and trimming them, on a disk mounted with discard)
            # happens at the filesystem's next journal commit, which would otherwise be the
            # next run's fdatasync: that run would pay for this one. Commit it now, untimed.
            os.sync()
        return Outcome(
            workload=self.workload.id,
            implementation=self.implementation,
            elapsed_s=self.elapsed_s,
            records=self.records,
            bytes_written=self.records * self.workload.record_size,
            batches=self.count if self.workload.records_per_unit > 1 else 0,
            latencies_ns=self.latencies_ns,
            problem=self.problem,
            vectored=self.vectored,
        )


Body = Callable[[PreparedRun], None]


@dataclass(frozen=True)
class Workload:
    """One workload of docs/workloads.md."""

    id: str
    name: str
    description: str
    full_count: int  # operations (or batches, W2) at scale 1: the docs/workloads.md count
    record_size: int
    pwrite_body: Body
    api_body: Body
    headline: str  # the figure ratios are quoted on
    records_per_unit: int = 1  # records per counted operation (16 for a W2 batch)
    window: int = SMALL_RECORD_WINDOW  # submissions in flight before the loop waits
    default_scale: float = 1.0
    # The vectored form (None: the workload has none): os.pwritev and submit_appendv.
    pwritev_body: Body | None = None
    apiv_body: Body | None = None

    @property
    def has_vectored(self) -> bool:
        """Whether the workload has a vectored form (rows pwritev, *-v)."""
        return self.pwritev_body is not None and self.apiv_body is not None

    def __call__(self, io: Target, directory: str, scale: float, vectored: bool = False) -> Outcome:
        return run_workload(self, io, directory, scale, vectored=vectored)


def prepare_run(
    workload: Workload,
    io: Target,
    directory: str,
    scale: float,
    label: str = "",
    vectored: bool = False,
) -> PreparedRun:
    """A run of `workload` on `io` with a new file in `directory`, ready to `execute()`."""
    return PreparedRun(workload, io, directory, scale, label, vectored)


def run_workload(
    workload: Workload,
    io: Target,
    directory: str,
    scale: float,
    label: str = "",
    vectored: bool = False,
) -> Outcome:
    """Run `workload` once on `io` (a backend or `PwriteBaseline`) at `scale` x its
    docs/workloads.md operation count, with a new file in `directory`; check and remove it.
    With `vectored`, its vectored form (``os.pwritev`` / ``submit_appendv``)."""
    run = PreparedRun(workload, io, directory, scale, label, vectored)
    run.execute()
    return run.finish()


# The bodies. Each is the hot loop a user would write; locals are bound outside the loop so
# that the loop measures the call being benchmarked, not attribute lookups.


def _backend(run: PreparedRun) -> tuple[Backend, IoFd]:
    assert not isinstance(run.target, PwriteBaseline) and run.handle is not None
    return run.target, run.handle


def _collect(run: PreparedRun, completions: list[IoCompletion]) -> int:
    """Note the failed ones among `completions`; return how many there are."""
    failures = run.failures
    for c in completions:
        if not c.ok:
            failures.append(c)
    return len(completions)


def _retry(run: PreparedRun, submit: Callable[..., int], *args: Any) -> int:
    """Submit after back-pressure refused it: wait for completions, try again. Returns how
    many completions were collected meanwhile."""
    io, _ = _backend(run)
    collected = 0
    while True:
        got = io.wait(1, DRAIN_TIMEOUT_S)
        if not got:
            raise TimeoutError("submission refused and no completion arrived")
        collected += _collect(run, got)
        try:
            submit(*args)
            return collected
        except _BACKPRESSURE:
            continue


def _drain(run: PreparedRun, pending: int) -> None:
    """Wait until all `pending` submissions have completed."""
    io, _ = _backend(run)
    while pending > 0:
        got = io.wait(pending, DRAIN_TIMEOUT_S)
        if not got:
            raise TimeoutError(f"{pending} completion(s) never arrived")
        pending -= _collect(run, got)
    if pending < 0:
        raise RuntimeError(f"{-pending} more completion(s) than submissions")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Finish a short os.pwrite, as a careful plain loop would."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _stream_pwrite(run: PreparedRun) -> None:
    fd = run.raw_fd
    size = run.workload.record_size
    pwrite = os.pwrite
    position = 0
    for data in itertools.islice(itertools.cycle(run.pool), run.count):
        written = pwrite(fd, data, position)
        if written != size:
            _pwrite_all(fd, data[written:], position + written)
        position += size
    os.fdatasync(fd)


def _submit_stream(
    run: PreparedRun, submit: Callable[..., int], fd: IoFd, items: Iterable[Any], window: int
) -> None:
    """Submit each item with `submit(fd, item)`, keeping at most `window` in flight (waiting
    for half of them when full), then one datasync, then drain."""
    io, _ = _backend(run)
    chunk = max(1, window // 2)
    pending = 0
    for item in items:
        try:
            submit(fd, item)
        except _BACKPRESSURE:
            pending -= _retry(run, submit, fd, item)
        pending += 1
        if pending >= window:
            pending -= _reap(run, chunk)
    io.submit_datasync(fd)
    _drain(run, pending + 1)


def _reap(run: PreparedRun, count: int) -> int:
    """Wait for `count` completions, note the failed ones; return how many came back.
    Called once per half window, so it costs the per-record loop nothing."""
    return _collect(run, _backend(run)[0].wait(count))


def _append_stream_api(run: PreparedRun) -> None:
    io, fd = _backend(run)
    records = itertools.islice(itertools.cycle(run.pool), run.count)
    _submit_stream(run, io.submit_append, fd, records, run.workload.window)


def _write_stream_api(run: PreparedRun) -> None:
    io, fd = _backend(run)
    # Its own loop rather than _submit_stream's: the offset is a second argument, and
    # packing it with the record would add a tuple per call to the timed path.
    submit = io.submit_write
    size = run.workload.record_size
    high = run.workload.window
    chunk = max(1, high // 2)
    pending = 0
    offset = 0
    for data in itertools.islice(itertools.cycle(run.pool), run.count):
        try:
            submit(fd, data, offset)
        except _BACKPRESSURE:
            pending -= _retry(run, submit, fd, data, offset)
        offset += size
        pending += 1
        if pending >= high:
            pending -= _reap(run, chunk)
    io.submit_datasync(fd)
    _drain(run, pending + 1)


GROUP_COMMIT_BATCH = 16


def _group_commit_pwrite(run: PreparedRun) -> None:
    fd = run.raw_fd
    size = run.workload.record_size
    pwrite = os.pwrite
    fdatasync = os.fdatasync
    records = itertools.cycle(run.pool)
    position = 0
    for _ in range(run.count):
        for data in itertools.islice(records, GROUP_COMMIT_BATCH):
            written = pwrite(fd, data, position)
            if written != size:
                _pwrite_all(fd, data[written:], position + written)
            position += size
        fdatasync(fd)


def _group_commit_api(run: PreparedRun) -> None:
    io, fd = _backend(run)
    submit = io.submit_append
    datasync = io.submit_datasync
    records = itertools.cycle(run.pool)
    pending = 0
    for _ in range(run.count):
        for data in itertools.islice(records, GROUP_COMMIT_BATCH):
            try:
                submit(fd, data)
            except _BACKPRESSURE:
                pending -= _retry(run, submit, fd, data)
            pending += 1
        pending = _commit(run, datasync(fd), pending + 1)
    _drain(run, pending)


def _commit(run: PreparedRun, token: int, pending: int) -> int:
    """Wait until the datasync `token` has completed (the next batch starts only then);
    return how many operations are still pending."""
    wait = _backend(run)[0].wait
    while True:
        got = wait(pending, DRAIN_TIMEOUT_S)
        if not got:
            raise TimeoutError("a datasync never completed")
        pending -= _collect(run, got)
        if any(c.token == token for c in got):
            return pending


def _latency_pwrite(run: PreparedRun) -> None:
    fd = run.raw_fd
    size = run.workload.record_size
    pwrite = os.pwrite
    fdatasync = os.fdatasync
    clock = time.perf_counter_ns
    samples = run.latencies_ns
    record = samples.append
    position = 0
    for data in itertools.islice(itertools.cycle(run.pool), run.count):
        start = clock()
        written = pwrite(fd, data, position)
        if written != size:
            _pwrite_all(fd, data[written:], position + written)
        fdatasync(fd)
        record(clock() - start)
        position += size


def _latency_api(run: PreparedRun) -> None:
    io, fd = _backend(run)
    submit = io.submit_append
    datasync = io.submit_datasync
    wait = io.wait
    clock = time.perf_counter_ns
    record = run.latencies_ns.append
    for data in itertools.islice(itertools.cycle(run.pool), run.count):
        start = clock()
        submit(fd, data)
        datasync(fd)
        outstanding = 2
        while outstanding:
            got = wait(outstanding, DRAIN_TIMEOUT_S)
            if not got:
                raise TimeoutError("an append or datasync never completed")
            outstanding -= _collect(run, got)
        record(clock() - start)


# The vectored forms. The records are the same stream as above (record i is
# pool[i % len(pool)]); a call carries VECTOR_BATCH of them (W2: its batch of 16), as a
# tuple prepared before the loop, as a program that gathers its records would hand them over.


def _vector_calls(run: PreparedRun, per_call: int, calls: int) -> Iterator[tuple[bytes, ...]]:
    """The record tuples of `calls` calls of `per_call` records each, then one call with the
    `run.records - calls * per_call` records left over, if any."""
    pool = run.pool
    cycle_len = len(pool) * per_call // math.gcd(len(pool), per_call)  # records until repeat
    groups = tuple(
        tuple(pool[(start + i) % len(pool)] for i in range(per_call))
        for start in range(0, cycle_len, per_call)
    )
    yield from itertools.islice(itertools.cycle(groups), calls)
    done = calls * per_call
    if done < run.records:
        yield tuple(pool[i % len(pool)] for i in range(done, run.records))


def _pwritev_all(fd: int, batch: tuple[bytes, ...], written: int, offset: int) -> None:
    """Finish a short os.pwritev, as a careful plain loop would."""
    _pwrite_all(fd, b"".join(batch)[written:], offset + written)


def _stream_pwritev(run: PreparedRun) -> None:
    fd = run.raw_fd
    size = run.workload.record_size
    pwritev = os.pwritev
    position = 0
    for batch in _vector_calls(run, VECTOR_BATCH, run.records // VECTOR_BATCH):
        length = len(batch) * size
        written = pwritev(fd, batch, position)
        if written != length:
            _pwritev_all(fd, batch, written, position)
        position += length
    os.fdatasync(fd)


def _append_stream_apiv(run: PreparedRun) -> None:
    io, fd = _backend(run)
    batches = _vector_calls(run, VECTOR_BATCH, run.records // VECTOR_BATCH)
    _submit_stream(run, io.submit_appendv, fd, batches, VECTOR_WINDOW)


def _group_commit_pwritev(run: PreparedRun) -> None:
    fd = run.raw_fd
    length = GROUP_COMMIT_BATCH * run.workload.record_size
    pwritev = os.pwritev
    fdatasync = os.fdatasync
    position = 0
    for batch in _vector_calls(run, GROUP_COMMIT_BATCH, run.count):
        written = pwritev(fd, batch, position)
        if written != length:
            _pwritev_all(fd, batch, written, position)
        position += length
        fdatasync(fd)


def _group_commit_apiv(run: PreparedRun) -> None:
    io, fd = _backend(run)
    submit = io.submit_appendv
    datasync = io.submit_datasync
    pending = 0
    for batch in _vector_calls(run, GROUP_COMMIT_BATCH, run.count):
        try:
            submit(fd, batch)
        except _BACKPRESSURE:
            pending -= _retry(run, submit, fd, batch)
        pending = _commit(run, datasync(fd), pending + 2)
    _drain(run, pending)


W1 = Workload(
    "W1",
    "append_4k",
    "100,000 appends of 4 KiB to a new file, one fdatasync at the end",
    full_count=100_000,
    record_size=4 * KIB,
    pwrite_body=_stream_pwrite,
    api_body=_append_stream_api,
    headline="records_per_s",
    pwritev_body=_stream_pwritev,
    apiv_body=_append_stream_apiv,
)
W2 = Workload(
    "W2",
    "group_commit",
    "2,000 batches of 16 appends of 4 KiB, each batch then one fdatasync that completes "
    "before the next batch starts",
    full_count=2_000,
    record_size=4 * KIB,
    pwrite_body=_group_commit_pwrite,
    api_body=_group_commit_api,
    headline="batches_per_s",
    records_per_unit=GROUP_COMMIT_BATCH,
    default_scale=0.15,
    pwritev_body=_group_commit_pwritev,
    apiv_body=_group_commit_apiv,
)
W3 = Workload(
    "W3",
    "seq_1m",
    "1 GiB as 1 MiB writes at increasing offsets, one fdatasync at the end",
    full_count=1024,
    record_size=MIB,
    pwrite_body=_stream_pwrite,
    api_body=_write_stream_api,
    headline="mib_per_s",
    window=LARGE_RECORD_WINDOW,
    default_scale=0.25,
)
W4 = Workload(
    "W4",
    "sync_latency",
    "2,000 times: append 4 KiB, fdatasync, wait for both",
    full_count=2_000,
    record_size=4 * KIB,
    pwrite_body=_latency_pwrite,
    api_body=_latency_api,
    headline="p50_us",
)
W5 = Workload(
    "W5",
    "small_256",
    "200,000 appends of 256 bytes, one fdatasync at the end",
    full_count=200_000,
    record_size=256,
    pwrite_body=_stream_pwrite,
    api_body=_append_stream_api,
    headline="records_per_s",
    pwritev_body=_stream_pwritev,
    apiv_body=_append_stream_apiv,
)

WORKLOADS: tuple[Workload, ...] = (W1, W2, W3, W4, W5)


def append_4k(io: Target, directory: str, scale: float = 1.0, vectored: bool = False) -> Outcome:
    """W1: 100,000 x scale appends of 4 KiB, one fdatasync at the end (`vectored`: 16 per
    call)."""
    return run_workload(W1, io, directory, scale, vectored=vectored)


def group_commit(io: Target, directory: str, scale: float = 1.0, vectored: bool = False) -> Outcome:
    """W2: 2,000 x scale batches of 16 appends of 4 KiB, each followed by a datasync that
    completes before the next batch (`vectored`: the batch in one call)."""
    return run_workload(W2, io, directory, scale, vectored=vectored)


def seq_1m(io: Target, directory: str, scale: float = 1.0) -> Outcome:
    """W3: 1 GiB x scale as 1 MiB writes at increasing offsets, one fdatasync at the end."""
    return run_workload(W3, io, directory, scale)


def sync_latency(io: Target, directory: str, scale: float = 1.0) -> Outcome:
    """W4: 2,000 x scale times append 4 KiB + fdatasync, waiting for both; latencies."""
    return run_workload(W4, io, directory, scale)


def small_256(io: Target, directory: str, scale: float = 1.0, vectored: bool = False) -> Outcome:
    """W5: 200,000 x scale appends of 256 bytes, one fdatasync at the end (`vectored`: 16
    per call)."""
    return run_workload(W5, io, directory, scale, vectored=vectored)


# -- the bench command -----------------------------------------------------------------

_FIGURE_LABELS = {
    "records_per_s": "records/s",
    "batches_per_s": "batches/s",
    "mib_per_s": "MiB/s",
    "p50_us": "p50 µs",
    "p99_us": "p99 µs",
}
_SHOWN = {
    "W1": ("records_per_s", "mib_per_s"),
    "W2": ("batches_per_s", "records_per_s"),
    "W3": ("mib_per_s",),
    "W4": ("p50_us", "p99_us"),
    "W5": ("records_per_s", "mib_per_s"),
}


def _parse_list(text: str, known: dict[str, str], what: str) -> list[str]:
    chosen: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key = known.get(item.lower())
        if key is None:
            allowed = ", ".join(sorted(set(known.values())))
            raise argparse.ArgumentTypeError(f"unknown {what} {item!r}; choose from {allowed}")
        if key not in chosen:
            chosen.append(key)
    if not chosen:
        raise argparse.ArgumentTypeError(f"no {what} given")
    return chosen


def _workload_list(text: str) -> list[str]:
    known = {w.id.lower(): w.id for w in WORKLOADS}
    known.update({w.name.lower(): w.id for w in WORKLOADS})
    return _parse_list(text, known, "workload")


def _implementation_list(text: str) -> list[str]:
    return _parse_list(text, {name: name for name in IMPLEMENTATIONS}, "implementation")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the bench command."""
    parser.add_argument(
        "--workload",
        type=_workload_list,
        default=[w.id for w in WORKLOADS],
        metavar="LIST",
        help="comma-separated workloads, by id or name "
        + "("
        + ", ".join(f"{w.id}={w.name}" for w in WORKLOADS)
        + "); default: all",
    )
    parser.add_argument(
        "--backend",
        type=_implementation_list,
        default=list(IMPLEMENTATIONS),
        metavar="LIST",
        help=f"comma-separated implementations ({', '.join(IMPLEMENTATIONS)}); default: all. "
        "pwrite is the baseline of the 'x pwrite' column. The vectored forms (pwritev: "
        f"os.pwritev; *-v: submit_appendv; {VECTOR_BATCH} records per call, W2 one call per "
        "batch) run only on the workloads that have one, W1, W2 and W5, and are also "
        "compared with pwritev in the 'x pwritev' column. Implementations that cannot run "
        "here are reported as skipped, with the reason",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=3,
        metavar="N",
        help="runs of each workload on each implementation, interleaved; the table shows "
        "medians (default: 3)",
    )
    parser.add_argument(
        "--scale",
        type=_positive_float,
        default=None,
        metavar="F",
        help="multiply every workload's operation count of docs/workloads.md by F (--scale 1: "
        "the full counts). Default: the full counts for W1, W4 and W5; W2 at 0.15 (300 "
        "batches), whose time is that of the disk's flushes, and W3 at 0.25 (256 MiB): so "
        "that the default run (3 repeats, all 8 implementations, 96 runs) stays under two "
        "minutes on a 2-core machine even when its flushes are slow",
    )
    parser.add_argument(
        "--dir",
        default=None,
        metavar="DIR",
        help="where the files go: a fresh directory is made inside DIR and removed "
        "afterwards (default: the system temporary directory, "
        f"{tempfile.gettempdir()}). Use a directory on the disk you care about, not tmpfs",
    )
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="write all results, every repeat, as JSON"
    )
    parser.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="draw the ratios to pwrite as a bar chart (needs matplotlib: "
        "pip install 'storage_io[plot]')",
    )


def filesystem_of(path: str) -> tuple[str, str]:
    """(filesystem type, mount point) of `path`, from /proc/mounts; ("unknown", "") if not
    found."""
    real = os.path.realpath(path)
    best = ("unknown", "")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            lines = mounts.readlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].encode().decode("unicode_escape")  # "\040" is a space
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[1]):
            best = (parts[2], mount_point)
    return best


class _Progress:
    """One line on stderr, rewritten in place on a terminal; a line per step otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        line = f"[{self.done:>3}/{self.total}] {elapsed:6.1f}s  {text}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


@dataclass
class _Row:
    workload: Workload
    implementation: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        return next((o.problem for o in self.outcomes if o.problem is not None), None)

    def medians(self) -> dict[str, float]:
        if self.problem is not None or not self.outcomes:
            return {}
        per_run = [o.figures() for o in self.outcomes]
        return {key: statistics.median(f[key] for f in per_run) for key in per_run[0]}

    def spread(self) -> float | None:
        """Half the range of the headline figure over the repeats, relative to its median."""
        key = self.workload.headline
        values = [o.figures().get(key) for o in self.outcomes]
        if self.problem is not None or len(values) < 2 or None in values:
            return None
        numbers = [v for v in values if v is not None]
        middle = statistics.median(numbers)
        return (max(numbers) - min(numbers)) / 2 / middle if middle else None


def _ratio(row: _Row, baseline: _Row | None) -> float | None:
    """How many times faster than `baseline` (pwrite or pwritev; for W4, the ratio of p50
    latencies)."""
    if baseline is None:
        return None
    mine = row.medians().get(row.workload.headline)
    theirs = baseline.medians().get(row.workload.headline)
    if not mine or not theirs:
        return None
    return theirs / mine if row.workload.headline.endswith("_us") else mine / theirs


def _format_figures(row: _Row) -> str:
    problem = row.problem
    if problem is not None:
        return problem if len(problem) <= 90 else problem[:87] + "..."
    medians = row.medians()
    parts = []
    for key in _SHOWN[row.workload.id]:
        value = medians[key]
        text = f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
        label = _FIGURE_LABELS[key]
        if key.endswith("_us"):  # "p50 312 µs"
            quantile, unit = label.split()
            parts.append(f"{quantile} {text} {unit}")
        else:
            parts.append(f"{text} {label}")
    return "  ".join(parts)


def _baselines(rows: list[_Row], name: str) -> dict[str, _Row]:
    return {r.workload.id: r for r in rows if r.implementation == name}


def _vector_ratio(row: _Row, vector_baselines: dict[str, _Row]) -> float | None:
    """The 'x pwritev' figure: only for the vectored rows (pwritev itself included)."""
    if not is_vectored(row.implementation):
        return None
    return _ratio(row, vector_baselines.get(row.workload.id))


def _table(rows: list[_Row], skipped: dict[str, str]) -> str:
    baselines = _baselines(rows, "pwrite")
    vector_baselines = _baselines(rows, "pwritev")
    header = ("workload", "implementation", "figure (median)", "x pwrite", "x pwritev", "spread")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        ratio = _ratio(row, baselines.get(row.workload.id))
        vector_ratio = _vector_ratio(row, vector_baselines)
        spread = row.spread()
        lines.append(
            (
                f"{row.workload.id} {row.workload.name}",
                row.implementation,
                _format_figures(row),
                "" if ratio is None else f"{ratio:.2f}x",
                "" if vector_ratio is None else f"{vector_ratio:.2f}x",
                "" if spread is None else f"±{spread * 100:.0f}%",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(w) if i >= 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    for name, reason in skipped.items():
        out.append(f"skipped {name}: {reason}")
    out.append(
        "x pwrite: how many times faster than the plain os.pwrite loop, one call per record "
        "(higher is better; W4 compares p50 latencies). x pwritev: the vectored rows "
        f"(pwritev, *-v: {VECTOR_BATCH} records per call, W2 one call per batch) against "
        "the plain os.pwritev loop. spread: half the range over the repeats."
    )
    if any(is_vectored(r.implementation) for r in rows):
        out.append(
            "No vectored rows for W3 (1 MiB records, one per call already) and W4 (one "
            "record per round trip)."
        )
    return "\n".join(out)


def _plot(rows: list[_Row], path: str) -> None:
    # matplotlib is the optional `plot` extra: imported by name, so that type checking does
    # not need it installed.
    importlib.import_module("matplotlib").use("Agg")  # no display needed
    plt: Any = importlib.import_module("matplotlib.pyplot")

    baselines = _baselines(rows, "pwrite")
    workloads = list(dict.fromkeys(r.workload.id for r in rows))
    names = list(dict.fromkeys(r.implementation for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(workloads) + 2), 4.5))
    width = 0.8 / max(1, len(names))
    for n, name in enumerate(names):
        values = []
        for wid in workloads:
            row = next((r for r in rows if r.workload.id == wid and r.implementation == name), None)
            ratio = None if row is None else _ratio(row, baselines.get(wid))
            values.append(float("nan") if ratio is None else ratio)
        positions = [i + (n - (len(names) - 1) / 2) * width for i in range(len(workloads))]
        ax.bar(positions, values, width, label=name)
    labels = [f"{wid}\n{next(w.name for w in WORKLOADS if w.id == wid)}" for wid in workloads]
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(labels)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("x pwrite (higher is better)")
    ax.set_title("storage_io: speed relative to a plain os.pwrite loop (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _memlock_limit() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // KIB} KiB"


def _io_uring_disabled() -> str | None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def run_bench(args: argparse.Namespace) -> int:
    """The bench command; returns the process exit code."""
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(
            "--plot needs matplotlib, which is not installed: "
            "pip install 'storage_io[plot]' (or pip install matplotlib)",
            file=sys.stderr,
        )
        return 2
    workloads = [w for w in WORKLOADS if w.id in args.workload]
    base = args.dir if args.dir is not None else tempfile.gettempdir()
    if not os.path.isdir(base):
        print(f"--dir {base}: not a directory", file=sys.stderr)
        return 2
    fstype, mount_point = filesystem_of(base)

    # Which implementations can run here: each is created once to find out, then closed;
    # every run gets a fresh instance.
    available: list[str] = []
    skipped: dict[str, str] = {}
    for name in args.backend:
        try:
            create_implementation(name).close()
        except ImplementationUnavailable as exc:
            skipped[name] = str(exc)
        else:
            available.append(name)

    directory = tempfile.mkdtemp(prefix="storage_io-bench-", dir=base)
    print(f"storage_io bench: files in {directory} ({fstype} mounted on {mount_point or '?'})")
    if fstype == "tmpfs":
        print(
            "WARNING: this directory is on tmpfs (memory): fdatasync does nothing there and "
            "the figures say nothing about a disk. Pass --dir on a real disk."
        )
    scales = {w.id: (w.default_scale if args.scale is None else args.scale) for w in workloads}
    print(
        "workloads: "
        + ", ".join(f"{w.id} x{scales[w.id]:g}" for w in workloads)
        + f"; implementations: {', '.join(available) or 'none'}; repeats: {args.repeat}"
    )
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")

    rows = {
        (w.id, name): _Row(w, name)
        for w in workloads
        for name in available
        if w.has_vectored or not is_vectored(name)
    }
    progress = _Progress(len(rows) * args.repeat)
    started = time.monotonic()
    try:
        for workload in workloads:
            names = [name for (wid, name) in rows if wid == workload.id]
            for repeat in range(args.repeat):
                for name in names:  # interleaved: A B C A B C ...
                    progress.step(
                        f"{workload.id} {workload.name} {name} (repeat {repeat + 1}/{args.repeat})"
                    )
                    rows[(workload.id, name)].outcomes.append(
                        _run_once(workload, name, directory, scales[workload.id])
                    )
    except KeyboardInterrupt:
        progress.close()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        progress.close()
        shutil.rmtree(directory, ignore_errors=True)
    duration = time.monotonic() - started

    ordered = list(rows.values())
    print()
    print(_table(ordered, skipped))
    print(f"\n{len(ordered) * args.repeat} runs in {duration:.1f}s")

    if args.json:
        _write_json(args, ordered, skipped, directory, fstype, scales, duration)
        print(f"results written to {args.json}")
    if args.plot:
        _plot(ordered, args.plot)
        print(f"chart written to {args.plot}")
    return 1 if any(row.problem for row in ordered) else 0


def _run_once(workload: Workload, name: str, directory: str, scale: float) -> Outcome:
    try:
        target = create_implementation(name)
    except ImplementationUnavailable as exc:
        return Outcome(workload.id, name, 0.0, 0, 0, problem=f"ERROR: {exc}")
    try:
        return run_workload(
            workload, target, directory, scale, label=name, vectored=is_vectored(name)
        )
    except Exception as exc:  # a broken run is reported in the table, not a traceback
        return Outcome(workload.id, name, 0.0, 0, 0, problem=f"ERROR: {type(exc).__name__}: {exc}")
    finally:
        target.close()


def _write_json(
    args: argparse.Namespace,
    rows: list[_Row],
    skipped: dict[str, str],
    directory: str,
    fstype: str,
    scales: dict[str, float],
    duration: float,
) -> None:
    baselines = _baselines(rows, "pwrite")
    vector_baselines = _baselines(rows, "pwritev")
    document = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "directory": directory,
            "filesystem": fstype,
            "kernel": platform.release(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "io_uring_disabled": _io_uring_disabled(),
            "rlimit_memlock": _memlock_limit(),
            "repeat": args.repeat,
            "scales": scales,
            "vector_batch": VECTOR_BATCH,
            "duration_s": duration,
        },
        "skipped": skipped,
        "results": [
            {
                "workload": row.workload.id,
                "name": row.workload.name,
                "description": row.workload.description,
                "implementation": row.implementation,
                "status": "ok" if row.problem is None else row.problem.split(":")[0],
                "problem": row.problem,
                "headline": row.workload.headline,
                "median": row.medians(),
                "vectored": is_vectored(row.implementation),
                "ratio_to_pwrite": _ratio(row, baselines.get(row.workload.id)),
                "ratio_to_pwritev": _vector_ratio(row, vector_baselines),
                "repeats": [
                    {
                        "elapsed_s": o.elapsed_s,
                        "records": o.records,
                        "bytes": o.bytes_written,
                        "batches": o.batches,
                        "figures": o.figures(),
                        "problem": o.problem,
                    }
                    for o in row.outcomes
                ],
            }
            for row in rows
        ],
    }
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
