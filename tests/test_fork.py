"""Guarantee 9 (fork): an inherited io_uring instance is closed in the child; the parent's
instance keeps working."""

from __future__ import annotations

import os

from _support import (
    assert_all_ok,
    assert_exactly_once,
    calls_not_refused_as_closed,
    drain,
    pattern,
    register_path,
)


def run_in_child(fn) -> int:
    """Run fn() in a forked child; return its exit status (fn's int, 99 on any exception)."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 99
        try:
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child died: status {status}"
    return os.WEXITSTATUS(status)


def test_parent_keeps_working_after_fork(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    before = [io.submit_append(fd, pattern(100_000, i)) for i in range(5)]
    run_in_child(lambda: 0)
    after = [io.submit_append(fd, pattern(100_000, 10 + i)) for i in range(5)]
    after.append(io.submit_datasync(fd))
    completions = drain(io)
    assert_exactly_once(completions, before + after)
    assert_all_ok(completions)
    expected = b"".join(pattern(100_000, i) for i in [0, 1, 2, 3, 4, 10, 11, 12, 13, 14])
    assert (tmp_path / "f").read_bytes() == expected


def test_child_using_inherited_uring_instance_gets_closed_error(uring_io, tmp_path):
    io = uring_io
    fd = register_path(io, tmp_path / "f")
    in_flight = [io.submit_append(fd, pattern(200_000, i)) for i in range(4)]

    def child() -> int:
        calls = [
            lambda: io.submit_append(fd, b"CHILD"),
            lambda: io.submit_write(fd, b"CHILD", 0),
            lambda: io.submit_datasync(fd),
            io.poll_completions,
            lambda: io.wait(timeout=0),
            io.pending_count,
            io.flush,
            lambda: io.register_fd(0),
        ]
        return calls_not_refused_as_closed(calls)

    failures = run_in_child(child)
    assert failures == 0, f"{failures} calls in the child did not raise ClosedError"
    more = io.submit_append(fd, b"parent")
    completions = drain(io)
    assert_exactly_once(completions, in_flight + [more])
    assert_all_ok(completions)
    data = (tmp_path / "f").read_bytes()
    assert b"CHILD" not in data
    assert data == b"".join(pattern(200_000, i) for i in range(4)) + b"parent"
