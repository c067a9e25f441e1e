"""API.md "Second round", per-record results: when a kernel write stops part-way (a full
disk, a file-size limit), every record wholly written before the stop completes ok and the
rest complete with the error, however the backend combined them into kernel writes.

20 appends of 3000 B where only 40 KiB fit: 13 records whole, the 14th cut. Every backend
must report exactly the records that are whole on disk as ok, through the ring (collected
by polling) and through the caller (collected by a long wait, where io_uring may write the
batch itself).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import LIVENESS_TIMEOUT_S, pattern, register_path, run_child, wait_for_all
from test_full_disk import _mounted, _require_mount

RECORD = 3000
RECORDS = 20
LIMIT = 40 * 1024
WHOLE = LIMIT // RECORD  # 13


@contextlib.contextmanager
def tmpfs_of_40k() -> Iterator[Path]:
    _require_mount()
    base = Path(tempfile.mkdtemp(prefix="storage_io_fs_"))
    try:
        root = base / "mnt"
        root.mkdir()
        with _mounted("mount", "-t", "tmpfs", "-o", f"size={LIMIT}", "tmpfs", target=root):
            yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def collect(io, tokens: list[int], how: str) -> dict:
    if how == "wait_for":
        return {c.token: c for c in wait_for_all(io, tokens)}
    io.flush()
    got: dict = {}
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    while len(got) < len(tokens):
        assert time.monotonic() < deadline, "completions never arrived"
        got.update((c.token, c) for c in io.poll_completions())
        time.sleep(0.001)
    return got


def records() -> list[bytes]:
    return [pattern(RECORD, seed=i) for i in range(RECORDS)]


def check_per_record(results: list, data: bytes, error: int) -> int:
    """The ok completions are exactly the records whole on disk, in front; the rest failed
    with `error`. Returns how many were ok."""
    whole = 0
    for i, rec in enumerate(records()):
        if data[i * RECORD : (i + 1) * RECORD] != rec:
            break
        whole += 1
    ok = [c.ok for c in results]
    assert 0 < whole < RECORDS, f"set-up: {whole} whole records on disk ({len(data)} bytes)"
    assert ok == [True] * whole + [False] * (RECORDS - whole), (
        f"{sum(ok)} ok completions, {whole} records whole on disk: {[c.result for c in results]}"
    )
    for c in results[:whole]:
        assert c.result == RECORD
    for c in results[whole:]:
        assert c.result == -error, c
    return whole


@pytest.mark.parametrize("how", ["wait_for", "poll"])
def test_full_disk_reports_every_whole_record_ok(make_io, how):
    with tmpfs_of_40k() as root:
        io = make_io()
        fd = register_path(io, root / "log")
        tokens = [io.submit_append(fd, rec) for rec in records()]
        sync = io.submit_datasync(fd)
        got = collect(io, [*tokens, sync], how)
        data = (root / "log").read_bytes()
        whole = check_per_record([got[t] for t in tokens], data, errno.ENOSPC)
        assert whole == WHOLE, f"{whole} records fit in {LIMIT} bytes of tmpfs"
        assert got[sync].result == 0, got[sync]
        io.deregister_fd(fd)


FILE_SIZE_LIMIT = r"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
path, how = sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_FSIZE, (40000, resource.RLIM_INFINITY))
io = make_io()
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
handle = io.register_fd(fd)
os.close(fd)
records = [bytes([65 + i]) * 3000 for i in range(20)]
tokens = [io.submit_append(handle, rec) for rec in records]
if how == "wait_for":
    got = io.wait_for(tokens, timeout=20)
else:
    io.flush()
    done = {}
    deadline = time.monotonic() + 20
    while len(done) < len(tokens) and time.monotonic() < deadline:
        done.update((c.token, c) for c in io.poll_completions())
    got = [done[t] for t in tokens]
io.close()
print(json.dumps([c.result for c in got]))
"""


@pytest.mark.parametrize("how", ["wait_for", "poll"])
def test_file_size_limit_reports_every_whole_record_ok(make_io, backend_kind, tmp_path, how):
    make_io()
    path = tmp_path / "log"
    import json

    out = run_child(backend_kind, FILE_SIZE_LIMIT, 60.0, str(path), how)
    results = json.loads(out.strip().splitlines()[-1])
    whole = 40000 // 3000  # 13; the 14th is cut at 40000 bytes
    assert results == [3000] * whole + [-errno.EFBIG] * (20 - whole), results
    data = path.read_bytes()
    assert len(data) == 40000
    assert data[: whole * 3000] == b"".join(bytes([65 + i]) * 3000 for i in range(whole))
