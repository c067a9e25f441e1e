"""A non-blocking eventfd for the io_uring completion wake-up.

`os.eventfd` exists from Python 3.10; the package supports 3.9, where the same call is made
through libc with ctypes. Creating it natively (a Rust method returning the descriptor) was
rejected: it would add a second native name for a one-line system call, and a descriptor
made in Python is one the caller can also hand to `UringStorageIo.register_eventfd` itself.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["open_eventfd", "read_eventfd"]

# <sys/eventfd.h>, the same on every Linux architecture Python runs on.
_EFD_CLOEXEC = 0o2000000
_EFD_NONBLOCK = 0o4000


def open_eventfd() -> int:
    """A new eventfd (counter 0, EFD_NONBLOCK | EFD_CLOEXEC) owned by the caller."""
    flags = _EFD_NONBLOCK | _EFD_CLOEXEC
    if hasattr(os, "eventfd"):
        return os.eventfd(0, flags)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.eventfd(0, flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def read_eventfd(fd: int) -> None:
    """Reset the counter; nothing to read is fine (a wake-up already consumed)."""
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass
