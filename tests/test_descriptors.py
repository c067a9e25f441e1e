"""Descriptors and signals the issue suspected (issue 9, "Smaller"), confirmed or refuted
on every backend:

- an ``O_TMPFILE | O_APPEND`` descriptor can be registered (the reopening without
  O_APPEND must not carry O_TMPFILE's directory bit and fail with ENOTDIR);
- signals arriving all the time (a 1 ms interval timer with a Python handler) never turn an
  operation into an ``-EINTR`` completion, nor a wait into an error.
"""

from __future__ import annotations

import errno
import os
import signal

import pytest

from _support import assert_all_ok, close_quietly, pattern, wait_for_all


def test_an_o_tmpfile_o_append_descriptor_can_be_registered(io, tmp_path):
    try:
        fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR | os.O_APPEND, 0o600)
    except OSError as exc:  # a filesystem without O_TMPFILE
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            pytest.skip(f"O_TMPFILE unsupported here: {exc}")
        raise
    try:
        os.write(fd, b"head:")  # the caller's own appends keep working
        handle = io.register_fd(fd)
        tokens = [io.submit_append(handle, b"one,"), io.submit_append(handle, b"two")]
        assert_all_ok(wait_for_all(io, tokens))
        assert os.pread(fd, 100, 0) == b"head:one,two"
        (read,) = wait_for_all(io, [io.submit_read(handle, 100, 0)])
        assert read.data == b"head:one,two"
        io.deregister_fd(handle)
    finally:
        os.close(fd)


def test_signals_never_surface_as_eintr(io, tmp_path):
    fd = os.open(tmp_path / "log", os.O_RDWR | os.O_CREAT, 0o644)
    handle = io.register_fd(fd)
    os.close(fd)
    r, w = os.pipe()
    stuck = io.submit_read(io.register_fd(r), 1, 0)  # keeps wait() asleep below
    interrupts = [0]

    def count(signum, frame) -> None:
        interrupts[0] += 1

    previous = signal.signal(signal.SIGALRM, count)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        record = pattern(50_000, seed=3)
        results = []
        for _ in range(40):
            tokens = [io.submit_append(handle, record) for _ in range(10)]
            tokens.append(io.submit_datasync(handle))
            results += [c.result for c in wait_for_all(io, tokens)]
            assert io.wait(1, timeout=0.02) == [], "a sleeping wait() was disturbed"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
        os.write(w, b"!")
        close_quietly(r, w)
    assert interrupts[0] > 10, "set-up: the timer did not interrupt anything"
    assert -errno.EINTR not in results, "a signal turned an operation into -EINTR"
    assert all(r >= 0 for r in results), [r for r in results if r < 0][:5]
    got = wait_for_all(io, [stuck, io.submit_read(handle, len(record), 399 * len(record))])
    assert got[0].data == b"!"
    assert got[1].data == record
