"""API.md "Second round": one instance shared by threads.

- A thread sleeping in `wait()`/`wait_for()` on work that cannot finish (a pipe nobody
  reads, or a read of an empty pipe) holds up no one: another thread's submit_*, flush(),
  poll_completions(), pending_count() and `closed` return while it still sleeps. How long
  they take meanwhile is measured in benches/test_bench_liveness.py.
- Several threads each `wait_for()` their own tokens on one instance: nothing lost, nothing
  delivered to the wrong thread.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import pytest

from _support import (
    LIVENESS_TIMEOUT_S,
    assert_exactly_once,
    call_with_timeout,
    close_quietly,
    drain,
    parse_thread_records,
    pattern,
    read_exactly,
    register_path,
    thread_record,
)

PIPE_WRITE = 1 << 20  # far more than a pipe holds: stays in flight until the test reads


def stuck_operation(io, how: str) -> tuple[int, Callable[[], None]]:
    """Submit an operation that cannot finish until `release()` is called; return its token
    and `release`."""
    r, w = os.pipe()
    if how == "read of an empty pipe":
        fd = io.register_fd(r)
        token = io.submit_read(fd, 4, 0)

        def release() -> None:
            os.write(w, b"done")
            close_quietly(r, w)

    else:  # a write into a pipe whose reader is held
        fd = io.register_fd(w)
        token = io.submit_write(fd, pattern(PIPE_WRITE, seed=1), 0)

        def release() -> None:
            assert read_exactly(r, PIPE_WRITE) == pattern(PIPE_WRITE, seed=1)
            close_quietly(r, w)

    io.flush()
    return token, release


@pytest.mark.parametrize("sleeper", ["wait", "wait_for"])
@pytest.mark.parametrize("how", ["read of an empty pipe", "write into a held pipe"])
def test_a_sleeping_waiter_holds_up_no_one(io, tmp_path, sleeper, how):
    token, release = stuck_operation(io, how)
    box: dict = {}

    def sleep_in_the_instance() -> None:
        try:
            if sleeper == "wait":
                # More than will ever be outstanding: returns once all are ready, which the
                # stuck operation prevents; the main thread's completions it may return.
                box["got"] = io.wait(min_complete=10**6)
            else:
                box["got"] = io.wait_for([token])
        except BaseException as exc:
            box["error"] = exc

    # Daemons, and the calls measured on a helper thread with a deadline: a backend that
    # holds the instance while it sleeps fails the test instead of hanging the suite.
    thread = threading.Thread(target=sleep_in_the_instance, daemon=True)
    thread.start()
    time.sleep(0.3)  # asleep by now
    fd = call_with_timeout(lambda: register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT))
    calls = {
        "submit_append": lambda: io.submit_append(fd, b"a" * 100),
        "submit_write": lambda: io.submit_write(fd, b"w" * 100, 0),
        "submit_read": lambda: io.submit_read(fd, 100, 0),
        "flush": io.flush,
        "poll_completions": io.poll_completions,
        "pending_count": io.pending_count,
        "closed": lambda: io.closed,
    }

    def call_each() -> None:
        for _ in range(50):
            for call in calls.values():
                call()

    # Returns although the sleeper cannot wake before release(): a call that waited for it
    # would hang here, and call_with_timeout fails the test instead.
    call_with_timeout(call_each, LIVENESS_TIMEOUT_S)
    assert thread.is_alive(), f"the sleeper returned before its operation could finish: {box}"
    assert "got" not in box and "error" not in box, box
    release()
    thread.join(LIVENESS_TIMEOUT_S)
    assert not thread.is_alive(), "the sleeper never woke up"
    assert "error" not in box, box.get("error")
    assert token in [c.token for c in box["got"]]
    drain(io)


THREADS = 4
OPS_PER_THREAD = 500


def test_threads_each_wait_for_their_own_tokens(io, tmp_path):
    """4 threads x 500 operations on one instance, each collecting only its own tokens with
    wait_for(): appends, datasyncs and reads of its own file, and writes and reads of its own
    pipe (which complete later, from another thread on the sync backend)."""
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)
    files = {tid: tmp_path / f"own{tid}" for tid in range(THREADS)}
    appended = dict.fromkeys(range(THREADS), 0)

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        r, w = os.pipe()
        try:
            own = register_path(io, files[tid], os.O_RDWR | os.O_CREAT)
            pipe_in, pipe_out = io.register_fd(r), io.register_fd(w)
            start.wait()
            expected: dict[int, tuple[str, object]] = {}  # token -> (kind, expected value)
            offset = seq = 0
            while len(expected) < OPS_PER_THREAD:
                batch: list[int] = []
                for _ in range(rng.randrange(1, 12)):
                    rec = thread_record(tid, seq, rng.randrange(0, 300))
                    seq += 1
                    token = io.submit_append(own, rec)
                    expected[token] = ("result", len(rec))
                    read = io.submit_read(own, len(rec), offset)
                    expected[read] = ("data", rec)  # held behind the append before it
                    offset += len(rec)
                    sent = io.submit_write(pipe_out, rec, 0)
                    got = io.submit_read(pipe_in, len(rec), 0)
                    expected[sent] = ("result", len(rec))
                    expected[got] = ("data", rec)
                    batch += [token, read, sent, got]
                    if rng.random() < 0.2:
                        sync = io.submit_datasync(own)
                        expected[sync] = ("result", 0)
                        batch.append(sync)
                if rng.random() < 0.5:
                    rng.shuffle(batch)
                completions = io.wait_for(batch, timeout=LIVENESS_TIMEOUT_S)
                assert [c.token for c in completions] == batch, f"thread {tid}: wrong tokens"
                for c in completions:
                    kind, value = expected[c.token]
                    assert c.ok, f"thread {tid}: token {c.token} failed: {c.error}"
                    if kind == "result":
                        assert c.result == value, (tid, c)
                    elif kind == "data":
                        assert c.data == value, f"thread {tid}: pipe delivered {c.data!r}"
            appended[tid] = seq
            io.deregister_fd(pipe_in)
            io.deregister_fd(pipe_out)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_quietly(r, w)

    threads = [threading.Thread(target=worker, args=(tid,), daemon=True) for tid in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread never got its completions"
    assert not errors, errors[0]
    assert io.pending_count() == 0, "completions left behind"
    assert_exactly_once(io.poll_completions(), [])
    for tid, path in files.items():
        records = parse_thread_records(path.read_bytes())
        assert records == [(tid, seq) for seq in range(appended[tid])], f"file {tid} is wrong"


def test_a_sleeping_wait_wakes_for_another_threads_completion(io, tmp_path):
    """wait(min_complete=1) sleeping on a read that cannot finish returns as soon as another
    thread's submission completes: any completion satisfies it."""
    token, release = stuck_operation(io, "read of an empty pipe")
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(got=io.wait(1)), daemon=True)
    thread.start()
    time.sleep(0.3)
    fd = register_path(io, tmp_path / "f")
    other = io.submit_append(fd, b"other")
    io.flush()
    thread.join(LIVENESS_TIMEOUT_S / 2)
    woke = not thread.is_alive()
    release()
    thread.join(LIVENESS_TIMEOUT_S)
    assert woke, "wait() slept on although another thread's operation had completed"
    assert [c.token for c in box["got"]] == [other]
    assert_exactly_once(drain(io), [token])


DIRTY = 128 << 20  # dirty pages enough that the datasync outlasts many rounds of calls


def test_a_long_datasync_holds_up_no_one(io, tmp_path):
    """One thread's datasync of a file with much unwritten data (the sync backend runs it in
    that thread, io_uring's wait may too) does not hold up another thread's calls."""
    path = tmp_path / "dirty"
    own = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        block = os.urandom(1 << 20)
        for i in range(DIRTY >> 20):
            os.pwrite(own, block, i << 20)  # written by the caller: only the datasync is left
        handle = io.register_fd(own)
    finally:
        os.close(own)
    box: dict = {}

    def sync() -> None:
        try:
            box["got"] = io.wait_for([io.submit_datasync(handle)])
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=sync, daemon=True)
    other = register_path(io, tmp_path / "other", os.O_RDWR | os.O_CREAT)
    calls = [
        lambda: io.submit_append(other, b"a" * 100),
        lambda: io.submit_read(other, 100, 0),
        io.flush,
        io.poll_completions,
        io.pending_count,
        lambda: io.closed,
    ]

    def rounds_before_the_datasync_completed() -> int:
        """Rounds of every call, a pause after each, finished before the syncing thread got
        its completion. Calls held up until the datasync is done would finish one round at
        most: the syncing thread takes its completion during the next pause."""
        rounds = 0
        while thread.is_alive():
            for call in calls:
                call()
            time.sleep(0.001)
            if "got" not in box and "error" not in box:
                rounds += 1
        return rounds

    thread.start()
    rounds = call_with_timeout(rounds_before_the_datasync_completed, LIVENESS_TIMEOUT_S * 3)
    thread.join(LIVENESS_TIMEOUT_S)
    assert "error" not in box, box.get("error")
    assert box["got"][0].result == 0
    assert rounds >= 2, f"calls waited for another thread's datasync ({rounds} rounds before it)"
    drain(io)
