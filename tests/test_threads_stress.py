"""Guarantee 9 under load: many threads, many operations, nothing torn, lost or duplicated;
and fork() while threads keep an io_uring instance busy.

Every record is self-describing (thread, sequence number, length, payload made of one byte
that names the thread), so a file's contents parse exactly or the test names the first
torn, lost, misplaced or duplicated record.

Operation counts (per backend): 20,000 + 20,000 by default; 100,000 + 100,000 under
STORAGE_IO_STRESS=1 (docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import pytest

from _support import (
    assert_all_ok,
    assert_exactly_once,
    calls_not_refused_as_closed,
    drain,
    parse_thread_records,
    register_path,
    scaled,
    submit_with_retry,
    thread_record,
)
from conftest import build_backend

THREADS = 8
SHARED_OPS = scaled(20_000, 100_000)  # one instance, eight threads
OWN_OPS = scaled(20_000, 100_000)  # eight instances, one per thread
FORK_OPS_AFTER = scaled(5_000, 50_000)  # parent operations after the forks


def record(tid: int, seq: int, rng: random.Random) -> bytes:
    return thread_record(tid, seq, rng.randrange(0, 300))


SLOT = 32  # one positional record: b"[tt ssssssss]" padded to 32 bytes


def slot_record(tid: int, seq: int) -> bytes:
    return (b"[%02d %08d]" % (tid, seq)).ljust(SLOT - 1, bytes([97 + tid])) + b"\n"


def assert_per_thread_order(records: list[tuple[int, int]], expected: dict[int, list[int]]):
    """Each thread's records are all there, once, in its submission order."""
    assert len(records) == len(set(records)), "duplicated record"
    by_thread: dict[int, list[int]] = {}
    for tid, seq in records:
        by_thread.setdefault(tid, []).append(seq)
    assert set(by_thread) == {t for t, seqs in expected.items() if seqs}
    for tid, seqs in expected.items():
        assert by_thread.get(tid, []) == seqs, f"thread {tid}: records lost or out of order"


def assert_slots(data: bytes, written: dict[int, tuple[int, int]]) -> None:
    """The positional file: every slot written holds exactly its record."""
    for index, (tid, seq) in written.items():
        got = data[index * SLOT : (index + 1) * SLOT]
        assert got == slot_record(tid, seq), f"slot {index}: {got!r}"
    assert len(data) == (max(written) + 1) * SLOT


class Worker:
    """One thread's share: appends to a shared file and to its own, positional writes into
    its own slots of a positional file, a datasync now and then, polls and waits."""

    def __init__(self, io: Any, tid: int, ops: int, shared: Any, own: Any, slots: Any):
        self.io, self.tid, self.ops = io, tid, ops
        self.shared, self.own, self.slots = shared, own, slots
        self.tokens: list[int] = []
        self.received: list = []
        self.shared_seqs: list[int] = []
        self.own_seqs: list[int] = []
        self.slot_writes: dict[int, tuple[int, int]] = {}

    def run(self, start: threading.Barrier) -> None:
        io, tid, rng = self.io, self.tid, random.Random(self.tid)
        start.wait()
        method: Any
        args: tuple[Any, ...]
        for seq in range(self.ops):
            kind = seq % 8
            if kind in (0, 1, 2):
                method, args = io.submit_append, (self.shared, record(tid, seq, rng))
                self.shared_seqs.append(seq)
            elif kind in (3, 4, 5):
                method, args = io.submit_append, (self.own, record(tid, seq, rng))
                self.own_seqs.append(seq)
            elif kind == 6:
                index = tid * self.ops + seq
                method, args = io.submit_write, (self.slots, slot_record(tid, seq), index * SLOT)
                self.slot_writes[index] = (tid, seq)
            else:
                target = self.shared if seq % 16 == 7 else self.own
                method, args = io.submit_datasync, (target,)
            self.tokens.append(submit_with_retry(io, self.received, method, *args))
            if seq % 32 == 31:
                self.received.extend(io.poll_completions())
            if seq % 512 == 511:
                self.received.extend(io.wait(min_complete=16, timeout=0.5))
        io.flush()


def run_threads(workers: list[Worker], timeout_s: float = 600.0) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def body(w: Worker) -> None:
        try:
            w.run(start)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=body, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    assert not errors, errors


def test_eight_threads_share_one_instance(make_io, tmp_path):
    io = make_io()
    shared = register_path(io, tmp_path / "shared")
    slots = register_path(io, tmp_path / "slots")
    workers = [
        Worker(io, t, SHARED_OPS // THREADS, shared, register_path(io, tmp_path / f"own{t}"), slots)
        for t in range(THREADS)
    ]
    started = time.monotonic()
    run_threads(workers)
    tokens = [tok for w in workers for tok in w.tokens]
    assert len(tokens) >= SHARED_OPS - THREADS
    assert len(set(tokens)) == len(tokens), "two submissions got the same token"
    completions = drain(io, [c for w in workers for c in w.received])
    assert_exactly_once(completions, tokens)
    assert_all_ok(completions)
    elapsed = time.monotonic() - started
    print(f"\n{io.backend}: {len(tokens)} ops, 8 threads, one instance, {elapsed:.1f} s")

    shared_records = parse_thread_records((tmp_path / "shared").read_bytes())
    assert_per_thread_order(shared_records, {w.tid: w.shared_seqs for w in workers})
    for w in workers:
        own_records = parse_thread_records((tmp_path / f"own{w.tid}").read_bytes())
        assert own_records == [(w.tid, s) for s in w.own_seqs], f"own file of thread {w.tid}"
    written: dict[int, tuple[int, int]] = {}
    for w in workers:
        written.update(w.slot_writes)
    assert_slots((tmp_path / "slots").read_bytes(), written)


def test_eight_threads_each_with_its_own_instance(make_io, tmp_path):
    # Eight rings (eight SQPOLL threads in that mode) on a 2-core machine: a short SQPOLL
    # idle time keeps the kernel threads from spinning against the submitters.
    ios = [make_io(sqpoll_idle_ms=10) for _ in range(THREADS)]
    workers = []
    for t, io in enumerate(ios):
        # All eight instances write disjoint slots of one positional file: eight rings on
        # one inode at once.
        slots = register_path(io, tmp_path / "slots")
        own = register_path(io, tmp_path / f"own{t}")
        log = register_path(io, tmp_path / f"log{t}")
        workers.append(Worker(io, t, OWN_OPS // THREADS, log, own, slots))
    started = time.monotonic()
    run_threads(workers)
    total = 0
    for w in workers:
        completions = drain(w.io, w.received)
        assert_exactly_once(completions, w.tokens)
        assert_all_ok(completions)
        total += len(w.tokens)
    elapsed = time.monotonic() - started
    print(f"\n{ios[0].backend}: {total} ops, 8 threads, 8 instances, {elapsed:.1f} s")
    assert total >= OWN_OPS - THREADS

    written: dict[int, tuple[int, int]] = {}
    for w in workers:
        log = parse_thread_records((tmp_path / f"log{w.tid}").read_bytes())
        assert log == [(w.tid, s) for s in w.shared_seqs], f"log file of thread {w.tid}"
        own = parse_thread_records((tmp_path / f"own{w.tid}").read_bytes())
        assert own == [(w.tid, s) for s in w.own_seqs], f"own file of thread {w.tid}"
        written.update(w.slot_writes)
    assert_slots((tmp_path / "slots").read_bytes(), written)


# -- fork while threads keep the instance busy (uring only: docs/contract.md guarantee 9) --


def child_checks(io: Any, fd: Any, kind: str, directory: str) -> int:
    """In the forked child: every method of the inherited instance raises ClosedError, and
    a fresh instance works. Returns the number of failures (the exit status)."""
    calls = {
        "register_fd": lambda: io.register_fd(0),
        "deregister_fd": lambda: io.deregister_fd(fd),
        "submit_write": lambda: io.submit_write(fd, b"CHILD", 0),
        "submit_append": lambda: io.submit_append(fd, b"CHILD"),
        "submit_datasync": lambda: io.submit_datasync(fd),
        "flush": io.flush,
        "poll_completions": io.poll_completions,
        "wait": lambda: io.wait(min_complete=1, timeout=0.1),
        "pending_count": io.pending_count,
        "metrics": io.metrics,
        "close": io.close,
        "close again": io.close,
    }
    failures = calls_not_refused_as_closed(calls.values())
    if not io.closed:
        failures += 1
    try:
        fresh = build_backend(kind)
        path = os.path.join(directory, f"child{os.getpid()}")
        own = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        handle = fresh.register_fd(own)
        os.close(own)
        rng = random.Random(os.getpid())
        data = [record(0, seq, rng) for seq in range(200)]
        tokens = [fresh.submit_append(handle, rec) for rec in data]
        tokens.append(fresh.submit_datasync(handle))
        done: list = []
        deadline = time.monotonic() + 20
        while len(done) < len(tokens) and time.monotonic() < deadline:
            done += fresh.wait(min_complete=len(tokens) - len(done), timeout=1.0)
        fresh.close()
        if sorted(c.token for c in done) != sorted(tokens) or not all(c.ok for c in done):
            failures += 1
        with open(path, "rb") as f:
            if f.read() != b"".join(data):
                failures += 1
    except BaseException:
        failures += 1
    return failures


def test_fork_while_threads_submit(uring_kind, tmp_path):
    io = build_backend(uring_kind)
    try:
        fd = register_path(io, tmp_path / "log")
        stop = threading.Event()
        lock = threading.Lock()
        seqs: dict[int, list[int]] = {t: [] for t in range(3)}
        tokens: list[int] = []
        received: list = []
        errors: list[BaseException] = []

        def hammer(tid: int) -> None:
            rng = random.Random(tid)
            seq = 0
            try:
                while not stop.is_set():
                    # A big append now and then keeps operations in flight across each fork.
                    rec = record(tid, seq, rng)
                    tok = submit_with_retry(io, received, io.submit_append, fd, rec)
                    with lock:
                        tokens.append(tok)
                        seqs[tid].append(seq)
                    seq += 1
                    if seq % 64 == 0:
                        got = io.poll_completions()
                        with lock:
                            received.extend(got)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(t,)) for t in range(3)]
        for t in threads:
            t.start()
        statuses = []
        for _ in range(4):
            time.sleep(0.05)
            in_flight = io.pending_count()
            pid = os.fork()
            if pid == 0:  # the child: never return into pytest
                code = 99
                try:
                    code = min(child_checks(io, fd, uring_kind, str(tmp_path)), 98)
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            statuses.append((in_flight, status))
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        for _in_flight, status in statuses:
            assert os.WIFEXITED(status), f"child died: {status}"
            assert os.WEXITSTATUS(status) == 0, f"child reported {os.WEXITSTATUS(status)} failures"
        assert any(n > 0 for n, _ in statuses), "nothing was pending at any fork"

        # The parent's ring keeps working through many more operations.
        rng = random.Random(99)
        for seq in range(FORK_OPS_AFTER):
            tokens.append(
                submit_with_retry(io, received, io.submit_append, fd, record(7, seq, rng))
            )
            seqs.setdefault(7, []).append(seq)
            if seq % 256 == 255:
                tokens.append(submit_with_retry(io, received, io.submit_datasync, fd))
                received.extend(io.poll_completions())
        completions = drain(io, received)
        assert_exactly_once(completions, tokens)
        assert_all_ok(completions)
        records = parse_thread_records((tmp_path / "log").read_bytes())
        assert_per_thread_order(records, seqs)
        assert b"CHILD" not in (tmp_path / "log").read_bytes()
    finally:
        io.close()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
