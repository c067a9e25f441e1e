"""storage_io for asyncio: await writes, reads, datasyncs and durable log appends.

`AsyncStorageIo` wraps a `StorageIo`: each operation is handed to the io at the call (in
call order, whatever becomes of the loop afterwards) and the io wakes the event loop
through an eventfd when it completes; `AsyncStorageIo.open(path, mode)` gives file
objects. `AsyncWal` is the durable log of `storage_io.wal` for coroutines: an awaited
append returns once the record is durable, appends from many tasks share fdatasyncs, and
the log's disk work runs on a thread of its own, never on the loop.
"""

from ._files import AsyncFile
from ._operation import Operation
from ._storage import AsyncStorageIo
from ._wal import AsyncWal

__all__ = ["AsyncFile", "AsyncStorageIo", "AsyncWal", "Operation"]
