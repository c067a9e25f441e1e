"""API.md "Second round": `wait_for(tokens, timeout=None)`.

Exactly the completions asked for, in the order asked; the others stay queued; `wait()` and
`poll_completions()` never hand back a token a `wait_for()` is waiting for; unknown or
already handed back tokens are a ValueError; a timeout is a TimeoutError that hands back
nothing. Work that cannot finish until the test allows it is a read of an empty pipe.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from _support import (
    LIVENESS_TIMEOUT_S,
    assert_exactly_once,
    call_with_timeout,
    close_quietly,
    drain,
    register_path,
    wait_for_all,
)
from storage_io import ClosedError


@pytest.fixture
def stuck_read(io):
    """(handle of an empty pipe's read end, its write end): a read of it stays in flight
    until the test writes."""
    r, w = os.pipe()
    handle = io.register_fd(r)
    os.close(r)
    yield handle, w
    close_quietly(w)


def test_completions_in_the_order_of_tokens_and_the_others_stay_queued(io, tmp_path):
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    tokens = [io.submit_append(fd, bytes([65 + i]) * (i + 1)) for i in range(5)]
    tokens.append(io.submit_datasync(fd))
    wanted = [tokens[3], tokens[0], tokens[5]]
    got = wait_for_all(io, wanted)
    assert [c.token for c in got] == wanted
    assert [c.result for c in got] == [4, 1, 0]
    assert io.pending_count() == 3
    rest = drain(io)
    assert_exactly_once(rest, [tokens[1], tokens[2], tokens[4]])


def test_accepts_any_iterable_and_an_empty_one(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_append(fd, b"x") for _ in range(3)]
    assert io.wait_for([]) == []
    assert io.wait_for((), timeout=0) == []
    got = io.wait_for(t for t in reversed(tokens))
    assert [c.token for c in got] == tokens[::-1]
    assert io.pending_count() == 0


def test_timeout_zero_is_a_probe(io, tmp_path, stuck_read):
    rfd, w = stuck_read
    fd = register_path(io, tmp_path / "f")
    done = io.submit_append(fd, b"done")
    pending = io.submit_read(rfd, 1, 0)
    io.flush()
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    got = None
    while got is None:  # io_uring: the write completes when the kernel gets to it
        try:
            got = io.wait_for([done], timeout=0)
        except TimeoutError:
            assert time.monotonic() < deadline, "a finished write never became ready"
            time.sleep(0.01)
    assert [c.token for c in got] == [done]
    # The read cannot finish before the write below: a probe that waited would hang, and
    # call_with_timeout fails the test instead.
    with pytest.raises(TimeoutError):
        call_with_timeout(lambda: io.wait_for([pending], timeout=0), LIVENESS_TIMEOUT_S)
    os.write(w, b"!")
    assert wait_for_all(io, [pending])[0].data == b"!"


def test_timeout_hands_back_nothing(io, tmp_path, stuck_read):
    rfd, w = stuck_read
    fd = register_path(io, tmp_path / "f")
    done = io.submit_append(fd, b"done")
    pending = io.submit_read(rfd, 3, 0)
    with pytest.raises(TimeoutError):
        io.wait_for([done, pending], timeout=0.2)
    assert io.pending_count() == 2, "a timed-out wait_for handed something back"
    # The finished one is still there for whoever asks, and so is the other, later.
    assert [c.token for c in wait_for_all(io, [done])] == [done]
    os.write(w, b"abc")
    assert [(c.token, c.data) for c in wait_for_all(io, [pending])] == [(pending, b"abc")]
    assert io.pending_count() == 0


def test_poll_and_wait_never_take_a_token_being_waited_for(io, tmp_path, stuck_read):
    rfd, w = stuck_read
    fd = register_path(io, tmp_path / "f")
    mine = io.submit_read(rfd, 5, 0)
    box: dict = {}

    def waiter() -> None:
        try:
            box["got"] = io.wait_for([mine], timeout=LIVENESS_TIMEOUT_S)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    time.sleep(0.2)  # the waiter is asleep in wait_for
    others = [io.submit_append(fd, b"other") for _ in range(10)]
    os.write(w, b"hello")  # now `mine` completes while others poll and wait
    seen = []
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    while thread.is_alive() and time.monotonic() < deadline:
        seen += io.poll_completions()
        seen += io.wait(min_complete=100, timeout=0.05)
    thread.join(LIVENESS_TIMEOUT_S)
    seen += drain(io)
    assert "error" not in box, box.get("error")
    assert [c.token for c in box["got"]] == [mine]
    assert box["got"][0].data == b"hello"
    assert mine not in [c.token for c in seen], "poll/wait took a token wait_for waits for"
    assert_exactly_once(seen, others)


def test_a_ready_token_being_waited_for_is_not_taken(io, tmp_path, stuck_read):
    """wait_for([finished, unfinished]): while it sleeps for the second, the first is ready
    and other threads poll and wait: they must leave it to the waiter."""
    rfd, w = stuck_read
    fd = register_path(io, tmp_path / "f")
    finished = io.submit_append(fd, b"finished")
    unfinished = io.submit_read(rfd, 2, 0)
    box: dict = {}

    def waiter() -> None:
        try:
            box["got"] = io.wait_for([finished, unfinished], timeout=LIVENESS_TIMEOUT_S)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    time.sleep(0.3)
    seen = []
    for _ in range(5):
        seen += io.poll_completions()
        seen += io.wait(min_complete=1, timeout=0.05)
    assert thread.is_alive(), box
    os.write(w, b"ok")
    thread.join(LIVENESS_TIMEOUT_S)
    assert seen == [], f"other callers took {[c.token for c in seen]} from a wait_for"
    assert "error" not in box, box.get("error")
    assert [c.token for c in box["got"]] == [finished, unfinished]


def test_wait_does_not_wait_for_tokens_claimed_by_wait_for(io, stuck_read):
    """A wait() with only claimed operations outstanding has nothing to wait for."""
    rfd, w = stuck_read
    mine = io.submit_read(rfd, 1, 0)
    thread = threading.Thread(
        target=lambda: io.wait_for([mine], timeout=LIVENESS_TIMEOUT_S), daemon=True
    )
    thread.start()
    time.sleep(0.2)
    # No timeout: a wait() that waited for the claimed read would sleep until the write
    # below, and call_with_timeout fails the test instead.
    assert call_with_timeout(lambda: io.wait(min_complete=1), LIVENESS_TIMEOUT_S) == []
    assert thread.is_alive(), "the wait_for() returned before its read could finish"
    os.write(w, b"x")
    thread.join(LIVENESS_TIMEOUT_S)
    assert not thread.is_alive()


@pytest.mark.parametrize("bad", [10**9, 0, -1, 2**64 + 5], ids=repr)
def test_unknown_token_raises_value_error(io, tmp_path, bad):
    fd = register_path(io, tmp_path / "f")
    good = io.submit_append(fd, b"x")
    with pytest.raises(ValueError):
        io.wait_for([good, bad])
    # Nothing was taken by the refused call.
    assert [c.token for c in wait_for_all(io, [good])] == [good]


@pytest.mark.parametrize("how", ["poll_completions", "wait", "wait_for"])
def test_token_already_handed_back_raises_value_error(io, tmp_path, how):
    fd = register_path(io, tmp_path / "f")
    token = io.submit_append(fd, b"x")
    if how == "wait_for":
        wait_for_all(io, [token])
    else:
        assert_exactly_once(drain(io) if how == "wait" else _poll_until(io, 1), [token])
    with pytest.raises(ValueError):
        io.wait_for([token])


def _poll_until(io, count: int) -> list:
    got: list = []
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    while len(got) < count and time.monotonic() < deadline:
        got += io.poll_completions()
    return got


def test_a_token_twice_raises_value_error(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    token = io.submit_append(fd, b"x")
    with pytest.raises(ValueError):
        io.wait_for([token, token])
    assert io.pending_count() == 1


def test_a_token_another_wait_for_waits_for_raises_value_error(io, stuck_read):
    rfd, w = stuck_read
    mine = io.submit_read(rfd, 1, 0)
    thread = threading.Thread(
        target=lambda: io.wait_for([mine], timeout=LIVENESS_TIMEOUT_S), daemon=True
    )
    thread.start()
    time.sleep(0.2)
    try:
        with pytest.raises(ValueError):
            io.wait_for([mine], timeout=0)
    finally:
        os.write(w, b"x")
        thread.join(LIVENESS_TIMEOUT_S)
    assert io.pending_count() == 0


def test_close_does_not_leave_a_waiter_hanging(make_io):
    """A thread in wait_for() while another thread closes the instance: once the awaited
    operation finishes, the waiter returns it or raises ClosedError; it never hangs."""
    io = make_io()
    r, w = os.pipe()
    try:
        rfd = io.register_fd(r)
        token = io.submit_read(rfd, 1, 0)
        box: dict = {}

        def waiter() -> None:
            try:
                box["got"] = io.wait_for([token])
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        time.sleep(0.2)
        closer = threading.Thread(target=io.close, daemon=True)
        closer.start()
        time.sleep(0.2)
        os.write(w, b"x")  # lets the read, and so close(), finish
        closer.join(LIVENESS_TIMEOUT_S)
        thread.join(LIVENESS_TIMEOUT_S)
        assert not closer.is_alive(), "close() hung"
        assert not thread.is_alive(), "wait_for() hung after close()"
        if "error" in box:
            assert isinstance(box["error"], ClosedError), box["error"]
        else:
            assert [c.token for c in box["got"]] == [token]
    finally:
        close_quietly(r, w)


@pytest.mark.parametrize("seed", range(3))
def test_random_mix_of_wait_for_poll_and_wait_loses_nothing(io, tmp_path, seed):
    """Random submissions (a file, a pipe written and read back) collected by a random mix
    of wait_for (random subsets, random order), poll_completions and wait: every token is
    handed back exactly once, wait_for returns exactly what it was asked for, and a token
    handed back is refused by a later wait_for."""
    import random

    rng = random.Random(seed)
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    r, w = os.pipe()
    try:
        pipe_in, pipe_out = io.register_fd(r), io.register_fd(w)
        outstanding: list[int] = []
        handed_back: list = []
        all_tokens: list[int] = []
        for _ in range(300):
            action = rng.random()
            if action < 0.5:
                size = rng.randrange(0, 2000)
                new = [io.submit_append(fd, b"r" * size)]
                if rng.random() < 0.3:
                    new += [io.submit_write(pipe_out, b"p" * size, 0)]
                    new += [io.submit_read(pipe_in, size, 0)]
                if rng.random() < 0.1:
                    new.append(io.submit_datasync(fd))
                outstanding += new
                all_tokens += new
            elif action < 0.75 and outstanding:
                chosen = rng.sample(outstanding, rng.randrange(1, min(len(outstanding), 8) + 1))
                got = io.wait_for(chosen, timeout=LIVENESS_TIMEOUT_S)
                assert [c.token for c in got] == chosen
                handed_back += got
                outstanding = [t for t in outstanding if t not in chosen]
                with pytest.raises(ValueError):
                    io.wait_for([chosen[0]], timeout=0)
            else:
                got = io.poll_completions() if action < 0.9 else io.wait(1, timeout=0.05)
                handed_back += got
                tokens = {c.token for c in got}
                outstanding = [t for t in outstanding if t not in tokens]
            assert io.pending_count() == len(outstanding)
        handed_back += drain(io)
        assert_exactly_once(handed_back, all_tokens)
        assert all(c.ok for c in handed_back), [c for c in handed_back if not c.ok][:3]
    finally:
        close_quietly(r, w)
