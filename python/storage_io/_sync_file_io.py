"""The regular-file I/O of `SyncStorageIo`: writes completed whole, vectors, reads.

Each helper does one operation inline, in the caller, and returns the completion's result
(a size, or a negative errno as io_uring reports it) instead of raising: the backend queues
that result like any other completion. Continuing a short write or read is done here, in
one place, so that no completion is ever short (API guarantee 4).
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

_pwrite = os.pwrite
# fdatasync skips the metadata a log does not need (mtime); platforms without it (macOS)
# get fsync, which is durable too, only slower.
_datasync = getattr(os, "fdatasync", os.fsync)
# One read asks the kernel for at most this much: os.pread allocates the whole length up
# front, and a caller may well ask for "everything" with a huge length.
_READ_CHUNK = 64 * 1024 * 1024


def _finish_short_write(descriptor: int, data: Buffer, size: int, written: int, offset: int) -> int:
    """Write the rest of `data` after a short write of `written` bytes; return `size`, or the
    negative errno that stopped it.

    A regular file rarely writes short (a signal, a nearly full disk, RLIMIT_FSIZE), but when
    it does the rest is written here, so a completion is never short (API guarantee 4).
    """
    remaining = memoryview(data).cast("B")
    try:
        while written < size:
            step = _pwrite(descriptor, remaining[written:], offset + written)
            if step == 0:
                # No progress and no errno: report it instead of spinning forever.
                return -errno.EIO
            written += step
    except OSError as err:
        return -(err.errno or errno.EIO)
    return size


# pwritev takes at most IOV_MAX buffers; more are joined into one.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _write_vector(descriptor: int, views: list[Buffer], total: int, offset: int) -> int:
    """Write `views` back to back at `offset`; return `total` or the negative errno."""
    try:
        if len(views) <= _IOV_MAX and hasattr(os, "pwritev"):
            written = os.pwritev(descriptor, views, offset)
            if written == total:
                return total
            joined = b"".join(views)
        else:
            joined = b"".join(views)
            written = 0
        return _finish_short_write(descriptor, joined, total, written, offset)
    except OSError as err:
        return -(err.errno or errno.EIO)


def _read_file(descriptor: int, length: int, offset: int) -> tuple[int, bytes | None]:
    """Read `length` bytes at `offset`, continuing short reads until `length` or end of
    file; return (bytes read, the bytes), or (negative errno, None)."""
    parts: list[bytes] = []
    done = 0
    try:
        while done < length:
            part = os.pread(descriptor, min(length - done, _READ_CHUNK), offset + done)
            if not part:
                break  # end of file
            parts.append(part)
            done += len(part)
    except OSError as err:
        return -(err.errno or errno.EIO), None
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return done, data
