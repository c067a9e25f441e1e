"""Guarantee 8 (and 4) on a full disk, for real: a filesystem small enough to fill.

Each test mounts its own tiny filesystem (needs root and `mount`; skipped with the reason
otherwise) and unmounts it in `finally`:

- ``tmpfs``: ``mount -t tmpfs -o size=1m``; a write past the limit fails at once;
- ``ext4``: an ext4 image on a file, loop-mounted; the same, through block allocation;
- ``thin``: an ext4 image (no journal) *larger than* the tmpfs it lives on, loop-mounted:
  writes land in the page cache and succeed, and the space runs out only when writeback
  reaches the backing store, so the failure is reported by ``fdatasync``, as on
  thin-provisioned storage.

In every case the failing operation must *complete* with ``-ENOSPC`` (never raise, never a
short count), what was written before stays intact, and the instance keeps working once
space is freed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _support import assert_all_ok, assert_exactly_once, drain, pattern, register_path

# The writes that fill the disk: not a multiple of the page or block size, so the write that
# crosses the limit is cut short by the kernel first (the short-write path), then fails.
FILL_CHUNK = 100_000
KEEP_SIZE = 64 * 1024


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _require_mount() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount on this machine")


@contextlib.contextmanager
def _mounted(*mount_cmd: str, target: Path) -> Iterator[Path]:
    try:
        _run(*mount_cmd, str(target))
    except OSError as exc:
        pytest.skip(f"cannot mount a test filesystem here: {exc}")
    try:
        yield target
    finally:
        # Lazy as a last resort: a failed test must not leave a mount behind.
        proc = subprocess.run(["umount", str(target)], capture_output=True, timeout=60)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=60)


@contextlib.contextmanager
def small_filesystem(kind: str) -> Iterator[Path]:
    """Mount a fresh tiny filesystem of `kind` ("tmpfs", "ext4" or "thin"); yield its root."""
    _require_mount()
    if kind != "tmpfs" and shutil.which("mkfs.ext4") is None:
        pytest.skip("no mkfs.ext4 on this machine")
    # Not pytest's tmp_path: a mount point under it would be left behind on a crash, and
    # its parents are not traversable by other users.
    base = Path(tempfile.mkdtemp(prefix="storage_io_fs_"))
    try:
        root = base / "mnt"
        root.mkdir()
        if kind == "tmpfs":
            with _mounted("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", target=root):
                yield root
        elif kind == "ext4":
            image = base / "ext4.img"
            with open(image, "wb") as f:
                f.truncate(4 * 1024 * 1024)
            _run("mkfs.ext4", "-q", "-F", str(image))
            with _mounted("mount", "-o", "loop", str(image), target=root):
                yield root
        elif kind == "thin":
            backing = base / "backing"
            backing.mkdir()
            with _mounted("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", target=backing):
                image = backing / "thin.img"
                with open(image, "wb") as f:
                    f.truncate(16 * 1024 * 1024)  # sparse: 16 MiB of ext4 on 3 MiB of tmpfs
                # No journal: a failed journal write would abort it and turn the failure into
                # EIO and a read-only remount; without one the data writeback error (ENOSPC
                # from the loop device) is what fdatasync reports.
                _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image))
                with _mounted("mount", "-o", "loop", str(image), target=root):
                    yield root
        else:
            raise ValueError(kind)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def wait_all(io: Any, tokens: list[int]) -> dict[int, Any]:
    """Collect the completions of `tokens`; fail the test if any is missing or duplicated."""
    return assert_exactly_once(drain(io), tokens)


def assert_whole_or_enospc(completion: Any, size: int, what: str) -> None:
    """Guarantee 4 at the limit: the full length, or -ENOSPC carried by the completion."""
    if completion.result == size:
        assert completion.ok and completion.error is None, what
        return
    assert completion.result == -errno.ENOSPC, (
        f"{what}: expected {size} or -ENOSPC, got {completion.result} (a short count or "
        f"another error)"
    )
    assert not completion.ok, what
    assert isinstance(completion.error, OSError), what
    assert completion.error.errno == errno.ENOSPC, f"{what}: error={completion.error!r}"


def write_keep_file(io: Any, root: Path) -> tuple[Any, bytes]:
    """The data that must survive: written and datasynced before the disk fills."""
    keep = pattern(KEEP_SIZE, seed=7)
    fd = register_path(io, root / "keep")
    tokens = [io.submit_write(fd, keep, 0), io.submit_datasync(fd)]
    done = wait_all(io, tokens)
    assert_all_ok(done.values())
    assert done[tokens[0]].result == KEEP_SIZE
    return fd, keep


@pytest.mark.parametrize("fs_kind", ["tmpfs", "ext4"])
def test_writes_past_the_limit_complete_with_enospc(make_io, backend_kind, fs_kind):
    with small_filesystem(fs_kind) as root:
        io = make_io(buffer_size=65536, buffer_count=16)
        keep_fd, keep = write_keep_file(io, root)

        # Fill the disk with appends, a few in flight at once, until they fail.
        filler = register_path(io, root / "filler")
        chunk = pattern(FILL_CHUNK, seed=1)
        appended: list[tuple[int, int]] = []  # (token, offset), in submission order
        results: dict[int, Any] = {}
        max_chunks = 100  # 10 MB: more than either filesystem holds
        while len(appended) < max_chunks:
            batch = [io.submit_append(filler, chunk) for _ in range(4)]
            appended += [(t, (len(appended) + i) * FILL_CHUNK) for i, t in enumerate(batch)]
            results.update(wait_all(io, batch))
            if any(results[t].result < 0 for t in batch):
                break
        for token, offset in appended:
            assert_whole_or_enospc(results[token], FILL_CHUNK, f"append at {offset}")
        failed = [(t, off) for t, off in appended if results[t].result < 0]
        assert failed, f"{len(appended)} appends of {FILL_CHUNK} bytes never filled {fs_kind}"
        first_failed_offset = failed[0][1]
        filler_size = os.stat(root / "filler").st_size
        if fs_kind == "tmpfs":
            # The kernel wrote part of the crossing append before running out: the short
            # write was continued and its completion is the errno, not the partial count.
            assert filler_size > first_failed_offset, (filler_size, first_failed_offset)
            metrics = io.metrics() if hasattr(io, "metrics") else {}
            if "short_writes_continued" in metrics:  # io_uring: the continuation really ran
                assert metrics["short_writes_continued"] >= 1, metrics

        # A datasync of the full file completes (it must not raise); the data that was
        # acknowledged before is on the disk.
        sync_token = io.submit_datasync(filler)
        sync = wait_all(io, [sync_token])[sync_token]
        assert sync.result == 0 or sync.result == -errno.ENOSPC, sync
        # A write at an explicit offset past the end fails the same way, and so does a
        # write larger than a registered buffer.
        more = [
            io.submit_write(keep_fd, pattern(4096, seed=3), 1024 * 1024),
            io.submit_write(keep_fd, pattern(300_000, seed=4), 2 * 1024 * 1024),
        ]
        done = wait_all(io, more)
        assert_whole_or_enospc(done[more[0]], 4096, "write past the limit")
        assert_whole_or_enospc(done[more[1]], 300_000, "multi-buffer write past the limit")
        assert done[more[1]].result == -errno.ENOSPC, "a 300 kB write fit on a full disk"
        assert io.pending_count() == 0

        # Earlier data is intact: the kept file and every acknowledged append.
        assert (root / "keep").read_bytes()[:KEEP_SIZE] == keep
        with open(root / "filler", "rb") as f:
            for token, offset in appended:
                if results[token].result == FILL_CHUNK:
                    f.seek(offset)
                    assert f.read(FILL_CHUNK) == chunk, f"acknowledged append at {offset} lost"

        # Free the space (the backend holds a descriptor until deregistered), then the same
        # instance writes, appends and syncs again.
        io.deregister_fd(filler)
        os.unlink(root / "filler")
        fresh = register_path(io, root / "fresh")
        again = [
            io.submit_write(keep_fd, pattern(200_000, seed=5), KEEP_SIZE),
            io.submit_datasync(keep_fd),
            io.submit_append(fresh, chunk),
            io.submit_append(fresh, b"tail"),
            io.submit_datasync(fresh),
        ]
        done = wait_all(io, again)
        assert_all_ok(done.values())
        assert done[again[0]].result == 200_000
        data = (root / "keep").read_bytes()
        assert data[:KEEP_SIZE] == keep
        assert data[KEEP_SIZE : KEEP_SIZE + 200_000] == pattern(200_000, seed=5)
        assert (root / "fresh").read_bytes() == chunk + b"tail"
        io.deregister_fd(keep_fd)
        io.deregister_fd(fresh)
        assert io.pending_count() == 0


def test_datasync_on_thin_storage_completes_with_enospc(make_io, backend_kind):
    """Writes succeed into the page cache; the space runs out under writeback, so the
    datasync is what fails: it must complete with -ENOSPC, not 0 and not a raise."""
    with small_filesystem("thin") as root:
        io = make_io(buffer_size=65536, buffer_count=16)
        keep_fd, keep = write_keep_file(io, root)

        log = register_path(io, root / "log")
        chunk = pattern(256 * 1024, seed=2)
        committed = 0  # bytes of the log acknowledged by a datasync with result 0
        sync_results = []
        for _ in range(40):  # 40 MB: far more than the 3 MB backing store
            tokens = [io.submit_append(log, chunk) for _ in range(4)]
            tokens.append(io.submit_datasync(log))
            done = wait_all(io, tokens)
            for token in tokens[:-1]:
                # The page cache has room: the write itself succeeds, whole.
                assert_whole_or_enospc(done[token], len(chunk), "append on thin storage")
            sync = done[tokens[-1]]
            sync_results.append(sync.result)
            if sync.result != 0:
                break
            committed += 4 * len(chunk)
        last = sync_results[-1]
        assert last != 0, "the backing store never ran out: test set-up is wrong"
        assert last == -errno.ENOSPC, f"datasync on exhausted storage: {sync_results}"
        assert not sync.ok and sync.error.errno == errno.ENOSPC, sync.error
        assert io.pending_count() == 0

        # What was acknowledged before is still readable, whole.
        assert (root / "keep").read_bytes() == keep
        with open(root / "log", "rb") as f:
            for offset in range(0, committed, len(chunk)):
                f.seek(offset)
                assert f.read(len(chunk)) == chunk, f"committed chunk at {offset} lost"

        # The instance stays usable: a small write and datasync to the other file (its
        # blocks are already allocated in the backing store) complete successfully.
        again = [io.submit_write(keep_fd, b"still working", 0), io.submit_datasync(keep_fd)]
        done = wait_all(io, again)
        assert_all_ok(done.values())
        assert (root / "keep").read_bytes()[:13] == b"still working"


def test_background_flush_does_not_hide_the_error_from_datasync(make_io, backend_kind):
    """The io_uring backend flushes long runs of writes in the background itself
    (background_flush_bytes), with fdatasyncs of its own. Here those flushes meet the
    writeback errors (appends on exhausted thin storage); the caller's datasync must still
    report one."""
    with small_filesystem("thin") as root:
        io = make_io(buffer_size=65536, buffer_count=16, background_flush_bytes=65536)
        log = register_path(io, root / "log")
        chunk = pattern(64 * 1024, seed=9)
        tokens = [io.submit_append(log, chunk) for _ in range(128)]  # 8 MiB, no datasync
        for completion in wait_all(io, tokens).values():
            assert_whole_or_enospc(completion, len(chunk), "append on thin storage")
        if backend_kind != "sync":
            assert io.metrics()["background_flushes"] > 0, "no background flush: set-up wrong"
        sync = wait_all(io, [token := io.submit_datasync(log)])[token]
        # The loop device reports the full store as ENOSPC or, for some requests, EIO.
        assert sync.result in (-errno.ENOSPC, -errno.EIO), f"datasync after failed flush: {sync}"
        assert not sync.ok


@contextlib.contextmanager
def _log_that_cannot_be_written_back() -> Iterator[Path]:
    """A 4 MiB file whose overwrites succeed in the page cache and fail only in writeback,
    with no metadata left to write: ext4 without a journal on a loop image in a tmpfs; the
    file's first MiB is punched out of the image and the tmpfs filled, after the file was
    written and synced (blocks allocated, metadata clean)."""
    _require_mount()
    for tool in ("mkfs.ext4", "filefrag", "fallocate"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} on this machine")
    base = Path(tempfile.mkdtemp(prefix="storage_io_fs_"))
    try:
        backing, root = base / "backing", base / "mnt"
        backing.mkdir()
        root.mkdir()
        with _mounted("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", target=backing):
            image = backing / "img"
            with open(image, "wb") as f:
                f.truncate(16 * 1024 * 1024)
            _run("mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", str(image))
            with _mounted("mount", "-o", "loop", str(image), target=root):
                log = root / "log"
                with open(log, "wb") as f:
                    f.write(pattern(4 * 1024 * 1024, seed=11))
                    f.flush()
                    os.fsync(f.fileno())
                extents = subprocess.run(
                    ["filefrag", "-v", str(log)], capture_output=True, text=True, check=True
                ).stdout
                first_extent = re.search(r"^\s*0:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.", extents, re.M)
                assert first_extent is not None, extents
                first_block = int(first_extent.group(1))
                _run(
                    "fallocate", "-p", "-o", str(first_block * 4096), "-l", str(1 << 20), str(image)
                )
                with open(backing / "filler", "wb") as filler:
                    with contextlib.suppress(OSError):
                        while True:
                            filler.write(b"\0" * (1 << 20))
                            filler.flush()
                yield log
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("reader", ["own descriptor", "new registration"])
def test_a_writeback_error_reaches_every_description_of_the_file(make_io, backend_kind, reader):
    """Writes whose writeback fails, waited for but not datasynced, then deregistered: the
    error must still reach an fdatasync of the caller's own descriptor, or a datasync
    through a new registration of it, as it does without storage_io. A background flush
    (1 MiB here) that took it on the caller's open file description would hide it."""
    with _log_that_cannot_be_written_back() as path:
        io = make_io(buffer_size=65536, buffer_count=16)
        with open(path, "r+b", buffering=0) as f:
            fd = io.register_fd(f)
            chunk = pattern(64 * 1024, seed=12)
            tokens = [io.submit_write(fd, chunk, i * len(chunk)) for i in range(64)]
            assert_all_ok(wait_all(io, tokens).values())  # the page cache took them
            if backend_kind != "sync":
                assert io.metrics()["background_flushes"] > 0, "no background flush ran"
            io.deregister_fd(fd)
            if reader == "own descriptor":
                with pytest.raises(OSError) as info:
                    os.fdatasync(f.fileno())
                assert info.value.errno in (errno.ENOSPC, errno.EIO), info.value
            else:
                again = io.register_fd(f)
                sync = wait_all(io, [token := io.submit_datasync(again)])[token]
                assert sync.result in (-errno.ENOSPC, -errno.EIO), sync
                io.deregister_fd(again)
