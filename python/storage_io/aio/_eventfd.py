"""A non-blocking eventfd for the io_uring completion wake-up.

Made with `os.eventfd`. Creating it natively (a Rust method returning the descriptor) was
rejected: it would add a second native name for a one-line system call, and a descriptor
made in Python is one the caller can also hand to `UringStorageIo.register_eventfd` itself.
"""

from __future__ import annotations

import os

__all__ = ["open_eventfd", "read_eventfd"]


def open_eventfd() -> int:
    """A new eventfd (counter 0, EFD_NONBLOCK | EFD_CLOEXEC) owned by the caller."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def read_eventfd(fd: int) -> None:
    """Reset the counter; nothing to read is fine (a wake-up already consumed)."""
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass
