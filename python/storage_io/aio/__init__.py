"""storage_io for asyncio: await writes, reads, datasyncs and durable log appends.

`AsyncStorageIo` wraps a `StorageIo`; on io_uring the ring wakes the event loop through an
eventfd (no thread per call), elsewhere one worker thread does the I/O. `AsyncWal` is the
durable log of `storage_io.wal` for coroutines: an awaited append returns once the record
is durable, and appends from many tasks share fdatasyncs.
"""

from ._operation import Operation
from ._storage import AsyncStorageIo
from ._wal import AsyncWal

__all__ = ["AsyncStorageIo", "AsyncWal", "Operation"]
