"""storage_io: durable, high-throughput writes for logs on disk.

Submit writes, appends and datasyncs without blocking, collect their completions later.
`open_storage_io()` returns the best backend for the machine: `UringStorageIo` (io_uring,
from Rust) where the kernel allows it, `SyncStorageIo` (pure Python) everywhere else. Both
implement `StorageIo`, whose docstrings document every method.
"""

from importlib.metadata import PackageNotFoundError, version

from ._native import (
    BadFdError,
    BufferExhaustedError,
    ClosedError,
    IoCompletion,
    IoFd,
    IoUringConfig,
    QueueFullError,
    RingMode,
    StorageIoError,
    UringStorageIo,
    UringUnavailableError,
)
from .interface import StorageIo
from .selection import open_storage_io
from .sync_backend import SyncStorageIo
from .wal import Wal, WalCorruptionError, WalError, WalPoisonedError, WalRecovery

# The native class cannot inherit from a Python ABC; registering it makes
# isinstance(x, StorageIo) true for both backends.
StorageIo.register(UringStorageIo)

try:
    __version__ = version("storage_io")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BadFdError",
    "BufferExhaustedError",
    "ClosedError",
    "IoCompletion",
    "IoFd",
    "IoUringConfig",
    "QueueFullError",
    "RingMode",
    "StorageIo",
    "StorageIoError",
    "SyncStorageIo",
    "UringStorageIo",
    "UringUnavailableError",
    "Wal",
    "WalCorruptionError",
    "WalError",
    "WalPoisonedError",
    "WalRecovery",
    "__version__",
    "open_storage_io",
]
