"""close(), dropping an instance and interpreter exit never hang forever (docs/contract.md,
"Closing").

The fault: a write to a pipe nobody reads. It cannot finish until someone reads, which may
be never. close() waits for work on regular files as long as it takes, but for work on
pipes and sockets only a grace (2 s) or its `timeout`; then it cancels it (the operation
completes with -ECANCELED, and nothing of it or behind it is written later). Ctrl-C
interrupts the wait. The same on every backend.

Each test first makes sure the write is really stuck (the pipe holds less than was
written), then checks that close returned, and that nothing more reaches the pipe after it.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time

import pytest

from _support import call_with_timeout, close_quietly, pattern, register_pipe, run_child
from conftest import build_backend

# Larger than a pipe holds (64 KiB by default): it can only complete if someone reads.
STUCK = 1 << 20
# Long enough for any of these closes on a loaded machine; a hang fails instead.
LIMIT_S = 30.0


def drain_pipe(r: int) -> bytes:
    """Everything left in the pipe until its end (every write end closed)."""
    out = bytearray()
    while chunk := os.read(r, 1 << 20):
        out += chunk
    return bytes(out)


def stuck_write(io):
    """A pipe registered at both ends, a write larger than it holds and one queued behind:
    (the caller's read end, the caller's write end, the tokens)."""
    _, out, r, w = register_pipe(io)
    tokens = [io.submit_write(out, pattern(STUCK), 0), io.submit_append(out, b"behind")]
    io.flush()
    time.sleep(0.05)
    assert io.wait(0, timeout=0) == [] or io.pending_count() > 0
    assert io.pending_count() == 2, "the write finished without a reader"
    return r, w, tokens


def test_close_with_a_timeout_cancels_a_write_nobody_reads(make_io):
    io = make_io()
    r, w, _ = stuck_write(io)
    try:
        started = time.monotonic()
        call_with_timeout(lambda: io.close(timeout=0.2), LIMIT_S)
        print(f"\nclose(timeout=0.2) of a stuck pipe write took {time.monotonic() - started:.2f} s")
        assert io.closed
        os.close(w)
        w = -1
        got = drain_pipe(r)
        assert len(got) < STUCK, "the whole write went through: it was not stuck"
        assert got == pattern(STUCK)[: len(got)], "what reached the pipe is not a prefix"
    finally:
        close_quietly(r, w)


def test_close_without_a_timeout_cancels_stream_work_after_its_grace(make_io):
    io = make_io()
    r, w, _ = stuck_write(io)
    try:
        started = time.monotonic()
        call_with_timeout(io.close, LIMIT_S)
        print(f"\nclose() of a stuck pipe write took {time.monotonic() - started:.2f} s")
        os.close(w)
        w = -1
        got = drain_pipe(r)
        assert len(got) < STUCK and not got.endswith(b"behind")
    finally:
        close_quietly(r, w)


def test_close_lets_a_stream_finish_while_its_reader_reads(make_io):
    """The grace is for streams nobody serves: one being read is not cut short."""
    io = make_io()
    r, w, _ = stuck_write(io)
    received = bytearray()

    def reader() -> None:
        while len(received) < STUCK + len(b"behind"):
            chunk = os.read(r, 1 << 16)
            if not chunk:
                return
            received.extend(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        call_with_timeout(io.close, LIMIT_S)
        thread.join(LIMIT_S)
        assert bytes(received) == pattern(STUCK) + b"behind"
    finally:
        close_quietly(r, w)


def test_dropping_an_instance_with_a_stuck_write_returns(backend_kind):
    holder = [build_backend(backend_kind)]  # the only reference (make_io keeps one)
    r, w, _ = stuck_write(holder[0])

    def drop() -> None:
        holder.clear()
        gc.collect()

    try:
        call_with_timeout(drop, LIMIT_S)
        if backend_kind != "sync":
            # The io_uring instance was closed by the drop: its write end is closed, and
            # nothing more arrives. (A sync instance lives on in its stream worker until
            # the write fails at the closing of the read end below.)
            close_quietly(w)
            assert len(call_with_timeout(lambda: drain_pipe(r), LIMIT_S)) < STUCK
    finally:
        close_quietly(w, r)


EXIT_WITH_A_STUCK_WRITE = r"""
io = make_io()
r, w = os.pipe()
fd = io.register_fd(w)
io.submit_write(fd, b"x" * (1 << 20), 0)
io.flush()
time.sleep(0.05)
print(json.dumps({"pending": io.pending_count()}), flush=True)
# Leaves without close(): the interpreter's exit must not wait for the write forever.
"""


def test_interpreter_exit_with_a_stuck_write_returns(make_io, backend_kind):
    make_io()  # skips where the backend cannot be had
    started = time.monotonic()
    out = run_child(backend_kind, EXIT_WITH_A_STUCK_WRITE, LIMIT_S)
    print(f"\n[{backend_kind}] exit with a stuck write took {time.monotonic() - started:.2f} s")
    assert json.loads(out.strip().splitlines()[-1]) == {"pending": 1}


CTRL_C_DURING_CLOSE = r"""
import signal
io = make_io()
r, w = os.pipe()
fd = io.register_fd(w)
io.submit_write(fd, b"x" * (1 << 20), 0)
io.flush()
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
outcome = {}
try:
    io.close(timeout=120)
    outcome["first"] = "returned"
except KeyboardInterrupt:
    outcome["first"] = "KeyboardInterrupt"
outcome["closed"] = io.closed
io.close(timeout=0)
outcome["second"] = "returned"
print(json.dumps(outcome))
"""


def test_ctrl_c_interrupts_close_and_close_again_finishes(make_io, backend_kind):
    make_io()
    # The child's first close would wait 120 s: the 60 s limit fails a close Ctrl-C missed.
    out = run_child(backend_kind, CTRL_C_DURING_CLOSE, 60.0)
    assert json.loads(out.strip().splitlines()[-1]) == {
        "first": "KeyboardInterrupt",
        "closed": True,
        "second": "returned",
    }


@pytest.mark.parametrize("timeout", ["1", -1, float("nan")])
def test_close_refuses_a_bad_timeout_as_wait_does(io, timeout):
    with pytest.raises((TypeError, ValueError)) as close_error:
        io.close(timeout=timeout)
    with pytest.raises(type(close_error.value)) as wait_error:
        io.wait(timeout=timeout)
    assert str(close_error.value) == str(wait_error.value)
    assert not io.closed
