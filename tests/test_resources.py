"""Nothing leaks: descriptors, kernel threads, memory, registered buffers.

(a) create/use/close cycles leave /proc/self/fd (and, for io_uring, /proc/self/task: SQPOLL
    and io-wq threads) where they started, whether an instance is closed or just dropped;
(b) a long run of operations with periodic draining keeps RSS flat after warm-up;
(c) after many operations, failures and split writes included, the io_uring backend's
    metrics add up and the whole buffer pool is free again.

Sizes: 1,000 cycles (200 for SQPOLL rings) and 100,000 operations by default; 5,000 cycles
and 1,000,000 operations under STORAGE_IO_STRESS=1 (docs/reliability.md).
"""

from __future__ import annotations

import errno
import gc
import os
import time
from typing import Any

from _support import (
    assert_exactly_once,
    drain,
    pattern,
    register_path,
    scaled,
    submit_with_retry,
)
from conftest import build_backend

CYCLES = scaled(1_000, 5_000)
# An SQPOLL ring takes ~20 ms to set up while the kernel threads of the last one exit.
SQPOLL_CYCLES = scaled(200, 5_000)
MEMORY_OPS = scaled(100_000, 1_000_000)
# Growth allowed after warm-up. The backend keeps per operation a token-map entry, an
# IoCompletion and, until collected, a list slot: ~100-200 bytes. Leaking any of these
# for every operation would grow RSS by >= 9 MiB over the 90,000 measured operations of the
# default run (>= 90 MiB under STRESS), so 8 MiB catches a per-operation leak while leaving
# room for allocator noise (pymalloc arenas, glibc trimming), measured at < 1 MiB.
RSS_BOUND = 8 << 20
SMALL = {"buffer_size": 4096, "buffer_count": 8, "ring_entries": 8}
PAGE = os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def settle(measure, target: int, timeout_s: float = 15.0) -> int:
    """`measure()` once it is back to `target` or below, or its value after `timeout_s`
    (kernel threads of a freed ring exit asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = measure()
        if value <= target or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def one_cycle(kind: str, path, index: int) -> None:
    config = {} if index % 50 == 0 else SMALL  # now and then the default 16 MiB pool
    io = build_backend(kind, **config)
    fd = register_path(io, path)
    tokens = [
        io.submit_append(fd, pattern(100, index)),
        io.submit_write(fd, pattern(5000, index), 10_000),  # split over two buffers
        io.submit_datasync(fd),
    ]
    other = register_path(io, path)
    tokens.append(io.submit_append(other, b"x"))
    io.deregister_fd(other)
    done = []
    if index % 3 == 0:
        done = drain(io)
        assert_exactly_once(done, tokens)
    if index % 2 == 0:
        io.close()
    # else: dropped with operations maybe in flight; the destructor must release it all.
    del io


def test_instances_release_descriptors_and_threads(backend_kind, tmp_path):
    path = tmp_path / "f"
    for i in range(5):  # warm-up: lazily created process-wide state
        one_cycle(backend_kind, path, i)
    gc.collect()
    fds_before, tasks_before = open_fds(), tasks()
    started = time.monotonic()
    cycles = SQPOLL_CYCLES if backend_kind == "uring-sqpoll" else CYCLES
    for i in range(cycles):
        one_cycle(backend_kind, path, i)
    gc.collect()
    fds_after = open_fds()
    tasks_after = settle(tasks, tasks_before)
    elapsed = time.monotonic() - started
    print(
        f"\n{backend_kind}: {cycles} cycles in {elapsed:.1f} s; fds {fds_before} -> "
        f"{fds_after}; tasks {tasks_before} -> {tasks_after}"
    )
    assert fds_after == fds_before, f"{fds_after - fds_before} descriptors leaked"
    assert tasks_after <= tasks_before, f"{tasks_after - tasks_before} threads left behind"


def test_memory_stays_flat_over_many_operations(backend_kind, tmp_path):
    io = build_backend(backend_kind, buffer_size=4096, buffer_count=64, ring_entries=64)
    try:
        log = register_path(io, tmp_path / "log")
        table = register_path(io, tmp_path / "table")
        received: list = []
        tokens_out = 0
        collected = 0
        warm_up = MEMORY_OPS // 10
        rss_start = fds_start = 0
        records = [pattern(n, n) for n in (16, 64, 700, 4096, 4097, 9000)]
        big = pattern(300_000, 1)  # more than the whole pool: the private-copy path
        method: Any
        args: tuple[Any, ...]
        for i in range(MEMORY_OPS):
            if i == warm_up:
                gc.collect()
                rss_start, fds_start = rss_bytes(), open_fds()
            if i % 5000 == 4999:
                method, args = io.submit_write, (table, big, 0)
            elif i % 500 == 499:
                method, args = io.submit_datasync, (log,)
            elif i % 2:
                method, args = io.submit_append, (log, records[i % 2])
            else:
                # positional writes cycle over a 4 MiB region: the file stays small
                rec = records[i % len(records)]
                method, args = io.submit_write, (table, rec, (i % 1024) * 4096)
            submit_with_retry(io, received, method, *args)
            tokens_out += 1
            if i % 1000 == 999:
                # periodic draining, as a log writer does at each group commit
                done = drain(io, received)
                assert all(c.ok for c in done), [c for c in done if not c.ok][:5]
                collected += len(done)
                received = []
        collected += len(drain(io, received))
        assert collected == tokens_out
        gc.collect()
        growth = rss_bytes() - rss_start
        print(
            f"\n{backend_kind}: {MEMORY_OPS} ops; RSS {rss_start / 2**20:.1f} MiB -> "
            f"{(rss_start + growth) / 2**20:.1f} MiB (growth {growth / 2**20:+.2f} MiB after "
            f"{warm_up} warm-up ops); fds {fds_start} -> {open_fds()}"
        )
        assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
        assert open_fds() == fds_start
    finally:
        io.close()


def test_buffers_all_return_after_failures_and_splits(uring_kind, tmp_path):
    count, size = 16, 4096
    io = build_backend(uring_kind, buffer_size=size, buffer_count=count, ring_entries=16)
    try:
        good = register_path(io, tmp_path / "good")
        (tmp_path / "ro").write_bytes(b"")
        readonly = register_path(io, tmp_path / "ro", os.O_RDONLY)
        received: list = []
        expect_ok: list[int] = []
        expect_fail: list[int] = []
        ok_bytes = 0
        rounds = scaled(2_000, 20_000)
        for i in range(rounds):
            n = (1, size - 1, size, size + 1, 5 * size + 3, count * size + 1)[i % 6]
            data = pattern(n, i)
            # Writes the kernel refuses: a read-only descriptor (EBADF) and an offset past
            # ext4's largest file (EFBIG); both still hold buffers until they complete.
            expect_fail.append(submit_with_retry(io, received, io.submit_write, readonly, data, 0))
            if i % 4 == 0:
                expect_fail.append(
                    submit_with_retry(io, received, io.submit_write, good, data, 1 << 60)
                )
            expect_ok.append(
                submit_with_retry(io, received, io.submit_write, good, data, (i % 64) * 8 * size)
            )
            ok_bytes += n
            if i % 16 == 0:
                expect_ok.append(submit_with_retry(io, received, io.submit_datasync, good))
            if i % 8 == 0:
                received.extend(io.poll_completions())
        by_token = assert_exactly_once(drain(io, received), expect_ok + expect_fail)
        for t in expect_ok:
            assert by_token[t].ok, by_token[t]
        for t in expect_fail:
            assert by_token[t].result in (-errno.EBADF, -errno.EFBIG, -errno.EINVAL), by_token[t]
        m = io.metrics()
        print(f"\n{uring_kind}: metrics after {len(by_token)} operations: {m}")
        assert m["submitted"] == m["completed"] == len(by_token)
        assert m["failed"] == len(expect_fail)
        assert m["bytes_written"] == ok_bytes
        assert io.pending_count() == 0

        # The whole pool is free: one write needing every buffer goes through at once (with
        # nothing in flight, a leaked buffer would make it raise BufferExhaustedError) ...
        token = io.submit_write(good, pattern(count * size, 3), 0)
        assert_exactly_once(drain(io), [token])
        # ... and so do `count` one-buffer writes in a row without reaping anything.
        completed_before = io.metrics()["completed"]
        tokens = [io.submit_write(good, pattern(size, k), k * size) for k in range(count)]
        assert io.metrics()["completed"] == completed_before, "a submission had to wait"
        assert io.pending_count() == count
        done = drain(io)
        assert_exactly_once(done, tokens)
        assert all(c.ok for c in done)
        assert io.metrics()["failed"] == len(expect_fail)
    finally:
        io.close()
