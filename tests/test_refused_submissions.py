"""A refused submission is never stranded (docs/contract.md, "Refused submissions").

The fault: io_uring_enter fails. strace's syscall fault injection makes the Nth
io_uring_enter of a child process fail with a chosen errno without running it (so the
kernel takes none of the SQEs it was given). For EAGAIN, EBUSY and EINTR the entries must
be sent again: every operation completes ok. For any other error (EIO here) the entries the
call did not take fail with that errno and never reach the kernel afterwards: every
operation completes ok or with -EIO, the bytes of a failed write are not in the file, and
close() returns. Under SQPOLL the kernel's thread takes the entries itself and
io_uring_enter only wakes it or waits: a refused wake-up must be made again (every
operation ok), and a refused wait may surface from wait() as the error, losing nothing.

Each case first checks strace's own report that it injected the error ("(INJECTED)"), then
the outcome. The Nth calls chosen fall on submissions, wake-ups, waits and close's drain
(the workload makes about 40 io_uring_enter calls; the first five round trips of a
datasync are a flush and a wait each).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import URING_BACKENDS, build_backend

STRACE = shutil.which("strace")

# A small ring (4 entries) so that a backlog forms; writes at offsets that do not follow
# each other, so that each becomes an SQE of its own; datasyncs and reads held behind them.
WORKLOAD = r"""
import json, os, sys, time
from storage_io import IoUringConfig, RingMode, UringStorageIo

kind, directory = sys.argv[1], sys.argv[2]
mode = RingMode.SQPOLL if kind == "uring-sqpoll" else RingMode.STANDARD
io = UringStorageIo(config=IoUringConfig(
    mode=mode, ring_entries=4, buffer_size=4096, buffer_count=16, sqpoll_idle_ms=1))
handles = []
for name in ("a", "b"):
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o644)
    handles.append(io.register_fd(fd))
    os.close(fd)
writes, tokens, done, wait_errors = {}, [], {}, []
# Round trips first: a datasync, flush() (the only call that submits it), then a wait for
# it. A refused flush whose entry nobody sends again leaves that wait asleep for good.
for _ in range(5):
    token = io.submit_datasync(handles[0])
    tokens.append(token)
    io.flush()
    deadline = time.monotonic() + 20
    while token not in done and time.monotonic() < deadline:
        try:
            done[token] = io.wait_for([token], timeout=0.5)[0].result
        except TimeoutError:
            pass
        except OSError as e:
            wait_errors.append(e.errno)
for round_ in range(4):
    for i, h in enumerate(handles):
        for k in range(3):
            offset = (round_ * 3 + k) * 8192
            data = bytes([65 + round_ * 3 + k]) * 1000
            token = io.submit_write(h, data, offset)
            writes[token] = (i, offset, data.decode())
            tokens.append(token)
        tokens.append(io.submit_datasync(h))
        tokens.append(io.submit_read(h, 100, 0))
    io.flush()
    if round_ % 2:
        time.sleep(0.01)
deadline = time.monotonic() + 30
while len(done) < len(tokens) and time.monotonic() < deadline:
    try:
        for c in io.wait(1, timeout=1.0):
            if c.token in done:
                raise SystemExit(f"token {c.token} completed twice")
            done[c.token] = c.result
    except OSError as e:
        wait_errors.append(e.errno)
io.close()
print(json.dumps({"results": [[t, done.get(t)] for t in tokens], "writes": writes,
                  "wait_errors": wait_errors}))
"""

CALLS = (2, 3, 4, 6, 9, 14, 20)
TRANSIENT = ("EAGAIN", "EBUSY", "EINTR")


def run_injected(kind: str, error: str, when: int, directory: Path) -> tuple[dict, str]:
    """Run the workload under strace with the `when`th io_uring_enter failing with `error`;
    return what it printed (parsed) and strace's log."""
    log = directory / "strace.log"
    command = [
        STRACE or "strace",
        "-f",
        "-qq",
        "-o",
        str(log),
        "-e",
        "trace=io_uring_enter",
        "-e",
        f"inject=io_uring_enter:error={error}:when={when}",
        sys.executable,
        "-c",
        WORKLOAD,
        kind,
        str(directory),
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the workload hung (no completion, or close() never returned): {exc}")
    trace = log.read_text()
    assert proc.returncode == 0, f"workload failed: {proc.stdout}\n{proc.stderr}\n{trace}"
    return json.loads(proc.stdout), trace


def check_outcome(out: dict, directory: Path, allowed_errno: int | None) -> int:
    """Every token completed once, ok or (if allowed) with -allowed_errno; ok writes are in
    their files and failed ones are not. Returns how many failed."""
    results = out["results"]
    missing = [t for t, r in results if r is None]
    assert not missing, f"operations never completed: {missing}"
    failed = [(t, r) for t, r in results if r < 0]
    allowed = set() if allowed_errno is None else {-allowed_errno}
    assert all(r in allowed for _, r in failed), f"unexpected failures: {failed}"
    files = [(directory / name).read_bytes() for name in ("a", "b")]
    outcome = dict((t, r) for t, r in results)
    for token, (index, offset, text) in out["writes"].items():
        on_disk = files[index][offset : offset + len(text)]
        if outcome[int(token)] >= 0:
            assert on_disk == text.encode(), f"write {token} acknowledged but not on disk"
        else:
            assert on_disk.strip(b"\0") == b"", f"refused write {token} reached the file later"
    return len(failed)


@pytest.fixture(params=URING_BACKENDS)
def injectable(request: pytest.FixtureRequest) -> str:
    if STRACE is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    build_backend(request.param).close()  # skips (or fails) where the ring cannot be had
    return str(request.param)


@pytest.mark.parametrize("error", TRANSIENT)
def test_a_submission_refused_for_now_is_sent_again(injectable, error, tmp_path):
    for when in CALLS:
        directory = tmp_path / f"{error}-{when}"
        directory.mkdir()
        out, trace = run_injected(injectable, error, when, directory)
        assert "(INJECTED)" in trace, f"strace injected nothing at call {when}:\n{trace}"
        check_outcome(out, directory, allowed_errno=None)
        assert not out["wait_errors"], out["wait_errors"]


def test_a_submission_refused_for_good_fails_exactly_what_was_not_taken(injectable, tmp_path):
    failed_somewhere = 0
    for when in CALLS:
        directory = tmp_path / f"EIO-{when}"
        directory.mkdir()
        out, trace = run_injected(injectable, "EIO", when, directory)
        injected = [line for line in trace.splitlines() if "(INJECTED)" in line]
        assert injected, f"strace injected nothing at call {when}:\n{trace}"
        failed_somewhere += check_outcome(out, directory, allowed_errno=errno.EIO)
        assert set(out["wait_errors"]) <= {errno.EIO}, out["wait_errors"]
    if injectable == "uring":
        # STANDARD: some of the injected calls carried submissions, whose operations failed.
        assert failed_somewhere > 0, "no operation failed: the refusals were never exercised"
    else:
        # SQPOLL: the kernel's thread takes the entries; no enter carries them.
        assert failed_somewhere == 0


def test_strace_injection_is_visible_in_its_log(injectable, tmp_path):
    """The precondition the tests above rely on: strace reports what it injected."""
    out, trace = run_injected(injectable, "EAGAIN", 2, tmp_path)
    line = next(line for line in trace.splitlines() if "(INJECTED)" in line)
    assert "io_uring_enter" in line and "EAGAIN" in line
    assert os.path.getsize(tmp_path / "a") > 0
