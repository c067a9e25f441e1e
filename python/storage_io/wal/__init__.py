"""`storage_io.wal`: a durable write-ahead log on any `StorageIo`.

    with Wal.open("/var/lib/app/log") as wal:
        lsn = wal.append(b"record")      # framed and numbered, not yet on disk
        wal.sync()                       # durable: one fdatasync for everything appended
        for lsn, payload in wal.replay():
            ...

The log is a directory of segment files named by the LSN of their first record
(``00000000000000000001.wal``), each a header and framed records (docs/wal-format.md).
Framing, CRC32C and the segment scans are native (``rust/wal``); this module is the
orchestration: group commit over the `StorageIo`, recovery at open, rotation, the lock.

How a commit works. Appends are framed into a native buffer; every megabyte of framed bytes
is handed to the `StorageIo` at once (``submit_write``, not waited for), so the disk works
while the caller appends. A commit writes what is left with one ``submit_write``, then one
``submit_datasync``, and the log waits for exactly those tokens (``io.wait_for``). At most
one commit is in flight: commits asked for meanwhile are merged into the next one, issued
as soon as the one in flight completes. One waiting thread (the leader) waits on the
`StorageIo` without holding the log's lock; the others sleep until `durable_lsn` passes
their LSN. That is group commit: many waiters share one ``fdatasync``.

Rotation. When a record does not fit the current segment, the appending thread makes the
segment durable, then creates the next one: header written and synced, directory synced,
before any record goes in. So a crash can leave an unfinished record only at the end of the
newest segment, which is what lets recovery tell a torn tail from corruption.

Fail closed. Any failed write or ``fdatasync`` poisons the log: nothing is retried (a second
``fdatasync`` after a writeback error may report success for lost data); every later
`append`, `commit`, `sync` raises `WalPoisonedError`, whose ``__cause__`` is the first
error. Reopening the directory recovers what was durable.
"""

# Where the code is (one layer per file, each using the ones below it; see _state.py):
#   _errors.py        WalError, WalCorruptionError, WalPoisonedError
#   _arguments.py     argument checks of the public calls
#   _lock.py          the directory lock (one open log per directory)
#   _state.py         the state all layers share; closed, closing, rotating, poisoned
#   _group_commit.py  handing framed bytes to the io; commits, the leader, the hold
#   _segments.py      segment files: names, creation, rotation, directory fsync
#   _recovery.py      what open found (WalRecovery): scan, cut a torn tail, resume
#   _log.py           Wal: the public calls

from __future__ import annotations

# The tunables (``X as X``) stay importable from here as before the split; each is read
# where it is defined, so setting one here changes nothing.
from ._errors import WalCorruptionError, WalError, WalPoisonedError
from ._group_commit import GROUP_HOLD_S as GROUP_HOLD_S
from ._group_commit import HANDOFF_BYTES as HANDOFF_BYTES
from ._lock import LOCK_NAME as LOCK_NAME
from ._log import Wal
from ._recovery import WalRecovery
from ._segments import DEFAULT_SEGMENT_BYTES as DEFAULT_SEGMENT_BYTES
from ._segments import MIN_SEGMENT_BYTES as MIN_SEGMENT_BYTES
from ._segments import SEGMENT_NAME as SEGMENT_NAME
from ._segments import SEGMENT_SUFFIX as SEGMENT_SUFFIX

__all__ = [
    "Wal",
    "WalCorruptionError",
    "WalError",
    "WalPoisonedError",
    "WalRecovery",
]

# The public names keep the module they had before the split into files: tracebacks and
# reprs say ``storage_io.wal.WalPoisonedError``, and pickles find them here. The native
# recovery scan (rust/wal/binding.rs) also looks WalCorruptionError up by this module's name.
for _public in (Wal, WalError, WalCorruptionError, WalPoisonedError, WalRecovery):
    _public.__module__ = __name__
del _public
