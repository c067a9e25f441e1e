"""The five workloads of docs/workloads.md (W1..W5): their loops, and their registration.

Each loop is the hot loop a user would write; locals are bound outside the loop so that
the loop measures the call being benchmarked, not attribute lookups, and the calling
pattern (--pattern) is chosen once per run, never per record.

The submission API loops, by pattern (model.PATTERNS):

- ``sliding``: up to `Workload.window` submissions in flight, waiting for half of them when
  full (W2: a batch of 16 appends and its datasync, waiting until the datasync is done;
  W4: an append and a datasync, waiting for both);
- ``window``: `Workload.pattern_window` submissions, then ``flush()``, then a wait until all
  of them have completed (W2: the batch and its datasync; W4: the append and the datasync);
- ``window-noflush``: the same round trips without the ``flush()`` (``wait()`` hands the
  queued work to the kernel itself). For W4 that is the sliding loop exactly.

The vectored forms carry VECTOR_BATCH records per call (W2: its batch of 16), as tuples
prepared before the loop, as a program that gathers its records would hand them over; their
window patterns use the same records per round trip as the one-call-per-record loops.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .loops import BACKPRESSURE, DRAIN_TIMEOUT_S, backend_of, collect, commit, drain, reap, retry
from .loops import pwrite_all as _pwrite_all
from .model import KIB, MIB, PATTERNS, SLIDING, WINDOW, Workload, register_workload

if TYPE_CHECKING:
    from .._native import IoFd
    from .run import PreparedRun

__all__ = [
    "GROUP_COMMIT_BATCH",
    "LARGE_RECORD_WINDOW",
    "SMALL_RECORD_WINDOW",
    "VECTOR_BATCH",
    "VECTOR_WINDOW",
    "W1",
    "W2",
    "W3",
    "W4",
    "W5",
]

# Submissions allowed in flight before the sliding loop waits for some to complete. A user
# keeps this bounded to stay inside the ring (256 entries) and the buffer pool (256 x 64 KiB
# by default): "a few hundred" for small records, a handful of 1 MiB writes.
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

GROUP_COMMIT_BATCH = 16


# -- streams of records, one fdatasync at the end (W1, W3, W5) --------------------------


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
    io, _ = backend_of(run)
    chunk = max(1, window // 2)
    pending = 0
    for item in items:
        try:
            submit(fd, item)
        except BACKPRESSURE:
            pending -= retry(run, submit, fd, item)
        pending += 1
        if pending >= window:
            pending -= reap(run, chunk)
    io.submit_datasync(fd)
    drain(run, pending + 1)


def _submit_windows(
    run: PreparedRun, submit: Callable[..., int], fd: IoFd, items: Iterable[Any], window: int
) -> None:
    """Submit `window` items with `submit(fd, item)`, then flush() (pattern ``window``
    only), then wait until all have completed; repeat; the datasync ends the last window."""
    io, _ = backend_of(run)
    flush = io.flush if run.pattern == WINDOW else None
    pending = 0
    for item in items:
        try:
            submit(fd, item)
        except BACKPRESSURE:
            pending -= retry(run, submit, fd, item)
        pending += 1
        if pending >= window:
            if flush is not None:
                flush()
            drain(run, pending)
            pending = 0
    io.submit_datasync(fd)
    if flush is not None:
        flush()
    drain(run, pending + 1)


def _append_stream_api(run: PreparedRun) -> None:
    io, fd = backend_of(run)
    records = itertools.islice(itertools.cycle(run.pool), run.count)
    if run.pattern == SLIDING:
        _submit_stream(run, io.submit_append, fd, records, run.workload.window)
    else:
        _submit_windows(run, io.submit_append, fd, records, run.workload.pattern_window)


def _write_stream_api(run: PreparedRun) -> None:
    if run.pattern != SLIDING:
        _write_windows_api(run)
        return
    io, fd = backend_of(run)
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
        except BACKPRESSURE:
            pending -= retry(run, submit, fd, data, offset)
        offset += size
        pending += 1
        if pending >= high:
            pending -= reap(run, chunk)
    io.submit_datasync(fd)
    drain(run, pending + 1)


def _write_windows_api(run: PreparedRun) -> None:
    """`_submit_windows` for positional writes (the offset is a second argument)."""
    io, fd = backend_of(run)
    submit = io.submit_write
    flush = io.flush if run.pattern == WINDOW else None
    size = run.workload.record_size
    window = run.workload.pattern_window
    pending = 0
    offset = 0
    for data in itertools.islice(itertools.cycle(run.pool), run.count):
        try:
            submit(fd, data, offset)
        except BACKPRESSURE:
            pending -= retry(run, submit, fd, data, offset)
        offset += size
        pending += 1
        if pending >= window:
            if flush is not None:
                flush()
            drain(run, pending)
            pending = 0
    io.submit_datasync(fd)
    if flush is not None:
        flush()
    drain(run, pending + 1)


# -- group commit (W2) -----------------------------------------------------------------


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
    io, fd = backend_of(run)
    submit = io.submit_append
    datasync = io.submit_datasync
    flush = io.flush if run.pattern == WINDOW else None
    sliding = run.pattern == SLIDING
    records = itertools.cycle(run.pool)
    pending = 0
    for _ in range(run.count):
        for data in itertools.islice(records, GROUP_COMMIT_BATCH):
            try:
                submit(fd, data)
            except BACKPRESSURE:
                pending -= retry(run, submit, fd, data)
            pending += 1
        token = datasync(fd)
        if sliding:
            pending = commit(run, token, pending + 1)
            continue
        if flush is not None:
            flush()
        drain(run, pending + 1)
        pending = 0
    drain(run, pending)


# -- round-trip latency (W4) -----------------------------------------------------------


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
    if run.pattern == WINDOW:
        _latency_api_flush(run)
        return
    io, fd = backend_of(run)
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
            outstanding -= collect(run, got)
        record(clock() - start)


def _latency_api_flush(run: PreparedRun) -> None:
    """`_latency_api` with a flush() between the submissions and the wait (pattern
    ``window``): its own loop, so that the other patterns pay no test per round trip."""
    io, fd = backend_of(run)
    submit = io.submit_append
    datasync = io.submit_datasync
    flush = io.flush
    wait = io.wait
    clock = time.perf_counter_ns
    record = run.latencies_ns.append
    for data in itertools.islice(itertools.cycle(run.pool), run.count):
        start = clock()
        submit(fd, data)
        datasync(fd)
        flush()
        outstanding = 2
        while outstanding:
            got = wait(outstanding, DRAIN_TIMEOUT_S)
            if not got:
                raise TimeoutError("an append or datasync never completed")
            outstanding -= collect(run, got)
        record(clock() - start)


# -- the vectored forms (W1, W2, W5) ---------------------------------------------------


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
    io, fd = backend_of(run)
    batches = _vector_calls(run, VECTOR_BATCH, run.records // VECTOR_BATCH)
    if run.pattern == SLIDING:
        _submit_stream(run, io.submit_appendv, fd, batches, VECTOR_WINDOW)
    else:
        calls = max(1, run.workload.pattern_window // VECTOR_BATCH)
        _submit_windows(run, io.submit_appendv, fd, batches, calls)


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
    io, fd = backend_of(run)
    submit = io.submit_appendv
    datasync = io.submit_datasync
    flush = io.flush if run.pattern == WINDOW else None
    sliding = run.pattern == SLIDING
    pending = 0
    for batch in _vector_calls(run, GROUP_COMMIT_BATCH, run.count):
        try:
            submit(fd, batch)
        except BACKPRESSURE:
            pending -= retry(run, submit, fd, batch)
        token = datasync(fd)
        if sliding:
            pending = commit(run, token, pending + 2)
            continue
        if flush is not None:
            flush()
        drain(run, pending + 2)
        pending = 0
    drain(run, pending)


# -- the workloads ---------------------------------------------------------------------

W1 = register_workload(
    Workload(
        "W1",
        "append_4k",
        "100,000 appends of 4 KiB to a new file, one fdatasync at the end",
        full_count=100_000,
        record_size=4 * KIB,
        bodies={
            "pwrite": _stream_pwrite,
            "api": _append_stream_api,
            "pwritev": _stream_pwritev,
            "apiv": _append_stream_apiv,
        },
        headline="records_per_s",
        shown=("records_per_s", "mib_per_s"),
        window=SMALL_RECORD_WINDOW,
        patterns=PATTERNS,
    )
)
W2 = register_workload(
    Workload(
        "W2",
        "group_commit",
        "2,000 batches of 16 appends of 4 KiB, each batch then one fdatasync that completes "
        "before the next batch starts",
        full_count=2_000,
        record_size=4 * KIB,
        bodies={
            "pwrite": _group_commit_pwrite,
            "api": _group_commit_api,
            "pwritev": _group_commit_pwritev,
            "apiv": _group_commit_apiv,
        },
        headline="batches_per_s",
        shown=("batches_per_s", "records_per_s"),
        records_per_unit=GROUP_COMMIT_BATCH,
        default_scale=0.15,
        patterns=PATTERNS,
    )
)
W3 = register_workload(
    Workload(
        "W3",
        "seq_1m",
        "1 GiB as 1 MiB writes at increasing offsets, one fdatasync at the end",
        full_count=1024,
        record_size=MIB,
        bodies={"pwrite": _stream_pwrite, "api": _write_stream_api},
        headline="mib_per_s",
        shown=("mib_per_s",),
        window=LARGE_RECORD_WINDOW,
        pattern_window=LARGE_RECORD_WINDOW,
        default_scale=0.25,
        patterns=PATTERNS,
    )
)
W4 = register_workload(
    Workload(
        "W4",
        "sync_latency",
        "2,000 times: append 4 KiB, fdatasync, wait for both",
        full_count=2_000,
        record_size=4 * KIB,
        bodies={"pwrite": _latency_pwrite, "api": _latency_api},
        headline="p50_us",
        shown=("p50_us", "p99_us"),
        patterns=PATTERNS,
    )
)
W5 = register_workload(
    Workload(
        "W5",
        "small_256",
        "200,000 appends of 256 bytes, one fdatasync at the end",
        full_count=200_000,
        record_size=256,
        bodies={
            "pwrite": _stream_pwrite,
            "api": _append_stream_api,
            "pwritev": _stream_pwritev,
            "apiv": _append_stream_apiv,
        },
        headline="records_per_s",
        shown=("records_per_s", "mib_per_s"),
        window=SMALL_RECORD_WINDOW,
        patterns=PATTERNS,
    )
)
