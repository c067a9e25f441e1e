"""How the io_uring backend moves writes, where docs/contract.md leaves it to the implementation
and docs/performance.md explains why: long runs of writes flushed in the background, and
batches written in the waiting caller's thread. Each test checks the bytes too."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import threading
import time

import pytest

from _support import assert_all_ok, assert_exactly_once, drain, pattern, register_path
from storage_io import IoCompletion
from storage_io.aio._eventfd import open_eventfd, read_eventfd

KIB = 1024
MIB = 1024 * KIB

_SYS_CACHESTAT = 451  # the same number on every architecture


def _append_all(io, fd, records):
    tokens = [io.submit_append(fd, r) for r in records]
    completions = assert_exactly_once(drain(io), tokens)
    assert_all_ok(completions.values())
    return tokens


def test_a_long_run_of_appends_is_flushed_in_the_background(make_uring_io, tmp_path):
    io = make_uring_io(background_flush_bytes=MIB)
    fd = register_path(io, tmp_path / "f")
    records = [pattern(64 * KIB, seed=i) for i in range(64)]  # 4 MiB, no datasync
    for start in range(0, len(records), 16):
        _append_all(io, fd, records[start : start + 16])
    started = io.metrics()["background_flushes"]
    # Each flush covers what completed since the one before: at least one, never more than
    # one per 1 MiB.
    assert 1 <= started <= 4, started
    io.deregister_fd(fd)  # waits for a flush still in flight
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_background_flush_bytes_zero_starts_none(make_uring_io, tmp_path):
    io = make_uring_io(background_flush_bytes=0)
    fd = register_path(io, tmp_path / "f")
    records = [pattern(64 * KIB, seed=i) for i in range(64)]
    for start in range(0, len(records), 16):
        _append_all(io, fd, records[start : start + 16])
    assert io.metrics()["background_flushes"] == 0
    io.deregister_fd(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_an_o_dsync_file_needs_no_background_flush(make_uring_io, tmp_path):
    # Every write to it is durable when it completes: a flush would only cost.
    io = make_uring_io(background_flush_bytes=MIB)
    fd = register_path(io, tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_DSYNC)
    records = [pattern(64 * KIB, seed=i) for i in range(48)]  # 3 MiB
    _append_all(io, fd, records)
    assert io.metrics()["background_flushes"] == 0
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_group_commits_need_no_background_flush(make_uring_io, tmp_path):
    # 64 KiB then a datasync, 40 times (2.5 MiB): each datasync flushes what came before
    # it, so there is never a megabyte left for the background.
    io = make_uring_io(background_flush_bytes=MIB)
    fd = register_path(io, tmp_path / "f")
    records = [pattern(4 * KIB, seed=i) for i in range(16 * 40)]
    for start in range(0, len(records), 16):
        tokens = [io.submit_append(fd, r) for r in records[start : start + 16]]
        tokens.append(io.submit_datasync(fd))
        assert_all_ok(assert_exactly_once(drain(io), tokens).values())
    assert io.metrics()["background_flushes"] == 0
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_close_waits_for_a_flush_in_flight(make_uring_io, tmp_path):
    io = make_uring_io(background_flush_bytes=64 * KIB)
    fd = register_path(io, tmp_path / "f")
    records = [pattern(64 * KIB, seed=i) for i in range(32)]
    _append_all(io, fd, records)
    assert io.metrics()["background_flushes"] >= 1
    io.close()  # must neither hang nor leave the kernel working on a closed ring
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_waiting_for_an_open_batch_writes_it_in_the_caller(make_uring_io, tmp_path):
    # Ten small appends share one registered buffer that has not gone to the kernel; the
    # caller waits for all of them, so wait() writes the batch itself.
    io = make_uring_io()
    fd = register_path(io, tmp_path / "f")
    records = [pattern(100, seed=i) for i in range(10)]
    tokens = [io.submit_append(fd, r) for r in records]
    completions = io.wait(len(tokens))
    assert sorted(c.token for c in completions) == sorted(tokens)
    assert all(c.result == 100 for c in completions)
    metrics = io.metrics()
    assert metrics["writes_in_caller"] == 1, metrics
    assert metrics["ring_operations"] == 0, metrics
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_waiting_with_a_short_timeout_leaves_the_batch_to_the_ring(make_uring_io, tmp_path):
    # A timeout under a second must not be spent in a write of the caller's: the batch goes
    # to the kernel as usual.
    io = make_uring_io()
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_append(fd, b"x" * 100) for _ in range(10)]
    completions: list[IoCompletion] = []
    while len(completions) < len(tokens):
        completions += io.wait(len(tokens), timeout=0.5)
    assert sorted(c.token for c in completions) == sorted(tokens)
    metrics = io.metrics()
    assert metrics["writes_in_caller"] == 0, metrics
    assert metrics["ring_operations"] == 1, metrics
    assert (tmp_path / "f").read_bytes() == b"x" * 1000


def test_waiting_for_writes_already_in_the_kernel_leaves_the_open_batch(make_uring_io, tmp_path):
    # Two full 4 KiB batches went to the kernel; a third is open. Waiting for two
    # completions needs only the kernel's, so the open batch stays open.
    io = make_uring_io(buffer_size=4096, buffer_count=8)
    fd = register_path(io, tmp_path / "f")
    records = [pattern(1024, seed=i) for i in range(9)]  # 4 + 4 full batches, 1 open
    tokens = [io.submit_append(fd, r) for r in records]
    got = io.wait(2)
    assert len(got) >= 2
    assert io.metrics()["writes_in_caller"] == 0
    rest = drain(io)
    assert_exactly_once(got + rest, tokens)
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_a_pipe_is_never_written_in_the_caller(make_uring_io):
    # pwrite on a pipe fails (ESPIPE) and may block: batches to a pipe always go through
    # the ring, which writes it as a stream.
    io = make_uring_io()
    r, w = os.pipe()
    try:
        fd = io.register_fd(w)
        tokens = [io.submit_write(fd, b"ab", 0), io.submit_write(fd, b"cd", 2)]
        # A wait long enough that a caller-thread write would be allowed for a file.
        completions = assert_exactly_once(io.wait(2, timeout=10), tokens)
        assert [completions[t].result for t in tokens] == [2, 2]
        assert io.metrics()["writes_in_caller"] == 0
        assert os.read(r, 16) == b"abcd"
        io.deregister_fd(fd)
    finally:
        os.close(r)
        os.close(w)


def test_flush_writes_a_batch_that_heads_its_file_in_the_caller(make_uring_io, tmp_path):
    # "Submit a window, flush(), wait for it": nothing of the file is in the kernel, so
    # flush() writes the batch itself and the datasync behind it is left for the wait.
    io = make_uring_io()
    fd = register_path(io, tmp_path / "f")
    records = [pattern(100, seed=i) for i in range(10)]
    tokens = [io.submit_append(fd, r) for r in records]
    tokens.append(io.submit_datasync(fd))
    assert io.flush() == 11
    metrics = io.metrics()
    assert metrics["writes_in_caller"] == 1, metrics
    assert metrics["ring_operations"] == 0, metrics
    # Written before flush() returned, through another descriptor's eyes.
    assert (tmp_path / "f").read_bytes() == b"".join(records)
    completions = assert_exactly_once(io.wait(11), tokens)
    assert_all_ok(completions.values())
    assert [completions[t].result for t in tokens] == [100] * 10 + [0]
    assert io.metrics()["datasyncs_in_caller"] == 1


def test_flush_sends_a_batch_behind_writes_in_flight_to_the_ring(make_uring_io, tmp_path):
    # Two full batches went to the kernel at submission and nobody has reaped them: the
    # open third one may overlap nothing, but a write of the caller's now could still land
    # before theirs, so it goes to the ring behind them.
    io = make_uring_io(buffer_size=4096, buffer_count=8)
    fd = register_path(io, tmp_path / "f")
    records = [pattern(1024, seed=i) for i in range(9)]  # 4 + 4 full batches, 1 open
    tokens = [io.submit_append(fd, r) for r in records]
    io.flush()
    assert io.metrics()["writes_in_caller"] == 0
    assert_exactly_once(drain(io), tokens)
    assert io.metrics()["ring_operations"] == 3
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_a_flush_written_in_the_caller_wakes_a_sleeping_waiter(make_uring_io, tmp_path):
    # One thread sleeps in the kernel for one completion; the only operation there is a
    # read of an empty pipe. Another thread's flush() completes an append in its own
    # thread: the sleeper must be woken and handed it, not left asleep.
    io = make_uring_io()
    r, w = os.pipe()
    try:
        pipe = io.register_fd(r)
        read_token = io.submit_read(pipe, 8, 0)
        fd = register_path(io, tmp_path / "f")
        got: list[IoCompletion] = []
        sleeper = threading.Thread(target=lambda: got.extend(io.wait(1, timeout=30)))
        sleeper.start()
        time.sleep(0.2)  # let it reach the kernel
        token = io.submit_append(fd, b"abc")
        io.flush()
        sleeper.join(timeout=10)
        assert not sleeper.is_alive(), "the waiter slept through a completion"
        assert [c.token for c in got] == [token]
        assert io.metrics()["writes_in_caller"] == 1
        os.write(w, b"12345678")
        assert_exactly_once(drain(io), [read_token])
    finally:
        io.close()
        os.close(r)
        os.close(w)


def test_with_an_eventfd_flush_leaves_the_writes_to_the_ring(make_uring_io, tmp_path):
    # An event loop waits for the eventfd, which only the kernel's completions signal: a
    # batch written by flush() itself would complete unannounced, and the datasync behind
    # it would never be sent. So with an eventfd registered, flush() hands both over.
    io = make_uring_io()
    efd = open_eventfd()
    try:
        io.register_eventfd(efd)
        fd = register_path(io, tmp_path / "f")
        tokens = [io.submit_append(fd, b"x" * 100) for _ in range(4)]
        tokens.append(io.submit_datasync(fd))
        io.flush()
        assert io.metrics()["writes_in_caller"] == 0
        got: list[IoCompletion] = []
        deadline = time.monotonic() + 10
        while len(got) < len(tokens):
            readable, _, _ = select.select([efd], [], [], max(0.0, deadline - time.monotonic()))
            assert readable, f"no eventfd signal; completions so far: {got}"
            read_eventfd(efd)
            while batch := io.poll_completions():
                got += batch
        assert_all_ok(assert_exactly_once(got, tokens).values())
        assert (tmp_path / "f").read_bytes() == b"x" * 400
    finally:
        io.close()
        os.close(efd)


def test_a_read_queued_before_a_flushed_write_does_not_see_it(make_uring_io, tmp_path):
    # The read is submitted first; flush() writes the batch after it in this thread, but
    # only once the read has reached the kernel, as when both went in one submission.
    path = tmp_path / "f"
    path.write_bytes(b"old!")
    io = make_uring_io()
    fd = register_path(io, path, os.O_RDWR)
    read = io.submit_read(fd, 8, 0)
    write = io.submit_write(fd, b"NEW!", 0)
    io.flush()
    completions = assert_exactly_once(drain(io), [read, write])
    assert completions[read].data == b"old!"
    assert path.read_bytes() == b"NEW!"


def test_a_second_flush_sends_the_datasync_the_first_released(make_uring_io, tmp_path):
    # flush() writes the batch itself and leaves the datasync it released for a wait();
    # the next flush() hands it to the kernel, with no wait or poll in between.
    io = make_uring_io()
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_append(fd, b"x" * 100), io.submit_datasync(fd)]
    io.flush()
    assert io.metrics()["ring_operations"] == 0
    io.flush()
    assert io.metrics()["sqes_submitted"] == 1
    assert_all_ok(assert_exactly_once(drain(io), tokens).values())
    assert io.metrics()["datasyncs_in_caller"] == 0


def test_datasyncs_issued_together_share_one_fdatasync(make_uring_io, tmp_path):
    # Committers that each append and then ask for a datasync: the datasyncs are ready
    # together, and one fdatasync started after all of them were submitted covers them all.
    io = make_uring_io()
    fd = register_path(io, tmp_path / "f")
    records = [pattern(100, seed=i) for i in range(32)]
    _append_all(io, fd, records)
    before = io.metrics()
    syncs = [io.submit_datasync(fd) for _ in records]
    assert_all_ok(assert_exactly_once(drain(io), syncs).values())
    after = io.metrics()
    fdatasyncs = (after["sqes_submitted"] - before["sqes_submitted"]) + (
        after["datasyncs_in_caller"] - before["datasyncs_in_caller"]
    )
    # STANDARD: the first is still queued when the others come, and they join it. SQPOLL:
    # the kernel's thread may take it at once; those that come after wait for it and go
    # together as a second.
    assert fdatasyncs <= 2, after
    assert after["datasyncs_joined"] - before["datasyncs_joined"] == 32 - fdatasyncs, after
    assert (tmp_path / "f").read_bytes() == b"".join(records)


def test_a_datasync_after_a_newer_write_gets_an_fdatasync_of_its_own(make_uring_io, tmp_path):
    # The first fdatasync may have started before the second append was written: the
    # second datasync must not complete with it.
    io = make_uring_io()
    fd = register_path(io, tmp_path / "f")
    for round in range(10):
        first = io.submit_append(fd, pattern(100, seed=round))
        first_sync = io.submit_datasync(fd)
        done: list[IoCompletion] = []
        while first not in {c.token for c in done}:
            done.extend(io.poll_completions())  # sends the first datasync once it is due
        second = io.submit_append(fd, pattern(50, seed=round))
        second_sync = io.submit_datasync(fd)
        while len(done) < 4:
            done.extend(io.poll_completions())
        tokens = [first, first_sync, second, second_sync]
        assert_all_ok(assert_exactly_once(done, tokens).values())
    assert io.metrics()["datasyncs_joined"] == 0


def _dirty_pages(path, offset: int, length: int) -> int:
    """Pages of `path` in [offset, offset + length) dirty or under writeback, from
    cachestat(2) (Linux 6.5)."""
    libc = ctypes.CDLL(None, use_errno=True)
    cachestat_range = (ctypes.c_uint64 * 2)(offset, length)
    # cache, dirty, writeback, evicted, recently_evicted
    stat = (ctypes.c_uint64 * 5)()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(_SYS_CACHESTAT, fd, cachestat_range, stat, 0) != 0:
            error = ctypes.get_errno()
            if error == errno.ENOSYS:
                pytest.skip("cachestat(2) needs Linux 6.5")
            raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)
    return stat[1] + stat[2]


def test_a_datasync_does_not_share_an_fdatasync_that_may_predate_an_outside_write(
    make_uring_io, tmp_path
):
    # fdatasync covers what was written before it started, by any route. Once the kernel has
    # taken a datasync (here: a slow one, behind 32 MiB of dirty pages), a pwrite made
    # outside the instance may complete before it starts; a datasync submitted after that
    # pwrite must not complete with it, although no write of the instance completed since.
    io = make_uring_io()
    path = tmp_path / "f"
    fd = register_path(io, path)
    _append_all(io, fd, [pattern(MIB, seed=i) for i in range(32)])
    slow = io.submit_datasync(fd)
    io.flush()  # STANDARD: the kernel takes it in this call; SQPOLL: when its thread runs
    outside = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(outside, b"header", 0)
    finally:
        os.close(outside)
    mine = io.submit_datasync(fd)
    assert_all_ok(assert_exactly_once(drain(io), [slow, mine]).values())
    assert _dirty_pages(path, 0, 4096) == 0, "the outside write is not durable"
    if io.backend == "uring":
        assert io.metrics()["datasyncs_joined"] == 0
