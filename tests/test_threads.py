"""Guarantee 9 (threads): one instance called from several threads, calls serialized.

Many threads appending, writing and syncing through one instance, checked record by record,
is tests/test_threads_stress.py; these are the patterns it does not cover: a thread that
only waits, and threads that exit with their work in flight."""

from __future__ import annotations

import random
import threading

from _support import (
    assert_all_ok,
    assert_exactly_once,
    drain,
    register_path,
    thread_record,
)

THREADS = 8
RECORDS_PER_THREAD = 150


def record(tid: int, seq: int, rng: random.Random) -> bytes:
    return thread_record(tid, seq, rng.randrange(0, 3000))


def test_one_thread_waits_while_others_submit(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    stop = threading.Event()
    received: list = []
    tokens: list = []

    def reaper():
        while not stop.is_set():
            received.extend(io.wait(min_complete=1, timeout=0.05))

    def submitter(base):
        for i in range(200):
            tokens.append(io.submit_write(fd, b"%08d" % (base + i), (base + i) * 8))

    r = threading.Thread(target=reaper)
    r.start()
    subs = [threading.Thread(target=submitter, args=(k * 200,)) for k in range(4)]
    for t in subs:
        t.start()
    for t in subs:
        t.join(30)
    stop.set()
    r.join(30)
    assert not r.is_alive()
    completions = drain(io, received)
    assert_exactly_once(completions, tokens)
    assert (tmp_path / "f").read_bytes() == b"".join(b"%08d" % i for i in range(800))


def test_work_flushed_by_a_thread_that_then_exits_still_completes(io, tmp_path):
    # io_uring hands work it cannot finish inline to kernel workers owned by the thread
    # that submitted it, and cancels that work when the thread exits. Each short-lived
    # thread here submits (and flushes) big writes and a datasync, then exits at once;
    # every operation must still complete with its full result, never -ECANCELED. Writes
    # to one file queue behind each other in the kernel (buffered writes to one inode run
    # one at a time), so many of them are still waiting when the thread exits.
    target = register_path(io, tmp_path / "short_lived")
    chunk = b"z" * 65536
    per_thread = 48
    tokens: list[int] = []

    def submit_and_leave(index: int) -> None:
        for n in range(per_thread):
            tokens.append(io.submit_write(target, chunk, (index * per_thread + n) * len(chunk)))
        tokens.append(io.submit_datasync(target))
        io.flush()

    for index in range(8):
        worker = threading.Thread(target=submit_and_leave, args=(index,))
        worker.start()
        worker.join()
    completions = drain(io)
    assert_all_ok(completions)
    assert_exactly_once(completions, tokens)
    assert (tmp_path / "short_lived").read_bytes() == chunk * (8 * per_thread)
