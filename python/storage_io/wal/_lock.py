"""The directory lock: while a `Wal` is open, no other open of its directory succeeds,
in this process or another.

An ``flock`` on a ``LOCK`` file in the directory, taken at open and released at close (or
when a log dropped without ``close()`` is finalized). Not a lock file whose existence is
the lock: a crash would leave it behind and refuse every later open. Not an ``fcntl``
record lock: those belong to the process, so a second open in the same process would not
conflict with the first.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ._errors import WalError

LOCK_NAME = "LOCK"


def _lock_directory(directory: Path) -> int:
    """Take the log's lock: an flock on its LOCK file, which conflicts across processes and
    between two opens in one process (each open has its own open file description)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WalError(
            f"the log in {directory} is already open (in this or another process): close "
            "that Wal first"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd
