"""Helpers for the storage_io.wal suite (tests/test_wal_*.py): opening logs on the
parametrized backend, reading files, and a `StorageIo` wrapper that counts and injects
failures."""

from __future__ import annotations

import errno
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage_io import IoCompletion, StorageIo, Wal


def payload_for(lsn: int, size: int | None = None) -> bytes:
    """Deterministic bytes that name their LSN, so a misplaced record is visible."""
    size = (lsn * 37) % 300 if size is None else size
    stamp = b"<%d>" % lsn
    return (stamp * (size // len(stamp) + 1))[:size]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def file_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def replayed(wal: Wal, from_lsn: int | None = None) -> list[tuple[int, bytes]]:
    return list(wal.replay(from_lsn))


class WrappedIo(StorageIo):
    """A `StorageIo` that forwards everything to `inner`, counts submissions, and can make
    datasyncs fail (their completion carries `-fail_errno`) or hold completions back."""

    def __init__(self, inner: Any, fail_datasync_from: int | None = None) -> None:
        self.inner = inner
        self.fail_datasync_from = fail_datasync_from  # 1-based count of submit_datasync
        self.fail_errno = errno.EIO
        self.datasyncs = 0
        self.writes = 0
        self.doomed: set[int] = set()
        self.gate = threading.Event()  # cleared: wait_for acts as if nothing completed
        self.gate.set()

    @property
    def backend(self) -> str:
        return self.inner.backend  # type: ignore[no-any-return]

    @property
    def fallback_reason(self) -> str | None:
        return self.inner.fallback_reason  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return self.inner.closed  # type: ignore[no-any-return]

    def register_fd(self, file: Any) -> Any:
        return self.inner.register_fd(file)

    def deregister_fd(self, fd: Any) -> None:
        self.inner.deregister_fd(fd)

    def submit_write(self, fd: Any, data: Any, offset: int) -> int:
        self.writes += 1
        return self.inner.submit_write(fd, data, offset)  # type: ignore[no-any-return]

    def submit_append(self, fd: Any, data: Any) -> int:
        self.writes += 1
        return self.inner.submit_append(fd, data)  # type: ignore[no-any-return]

    def submit_writev(self, fd: Any, buffers: Any, offset: int) -> int:
        self.writes += 1
        return self.inner.submit_writev(fd, buffers, offset)  # type: ignore[no-any-return]

    def submit_appendv(self, fd: Any, buffers: Any) -> int:
        self.writes += 1
        return self.inner.submit_appendv(fd, buffers)  # type: ignore[no-any-return]

    def submit_read(self, fd: Any, length: int, offset: int) -> int:
        return self.inner.submit_read(fd, length, offset)  # type: ignore[no-any-return]

    def submit_datasync(self, fd: Any) -> int:
        self.datasyncs += 1
        token: int = self.inner.submit_datasync(fd)
        if self.fail_datasync_from is not None and self.datasyncs >= self.fail_datasync_from:
            self.doomed.add(token)
        return token

    def flush(self) -> int:
        return self.inner.flush()  # type: ignore[no-any-return]

    def _fix(self, completions: list[Any]) -> list[Any]:
        return [
            IoCompletion(c.token, -self.fail_errno) if c.token in self.doomed else c
            for c in completions
        ]

    def wait_for(self, tokens: Any, timeout: float | None = None) -> list[Any]:
        if not self.gate.wait(timeout):
            raise TimeoutError("held back by the test")
        return self._fix(self.inner.wait_for(tokens, timeout))

    def poll_completions(self) -> list[Any]:
        return self._fix(self.inner.poll_completions())

    def wait(self, min_complete: int = 1, timeout: float | None = None) -> list[Any]:
        return self._fix(self.inner.wait(min_complete, timeout))

    def pending_count(self) -> int:
        return self.inner.pending_count()  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, int]:
        return self.inner.metrics()  # type: ignore[no-any-return]

    def close(self, timeout: float | None = None) -> None:
        self.inner.close(timeout)


def run_threads(target: Callable[[int], Any], count: int, timeout_s: float = 60.0) -> list[Any]:
    """Run `target(i)` on `count` threads; return their results; re-raise the first error;
    fail if one hangs."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
        assert not t.is_alive(), "a thread hung"
    if errors:
        raise errors[0]
    return results
