"""Argument checks of `SyncStorageIo`, and the messages it shares with the io_uring backend.

Apart from the backend so that its module reads as the operations themselves. The messages
are those of ``UringStorageIo`` word for word (API.md "Same behaviour"): a caller that
switches backends sees the same errors. The regular-file submit path calls the conversions
only off its fast case (bytes data, an int offset in range), so they cost a measured call
nowhere else.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

_MAX_OFFSET = 2**63 - 1  # off_t
_INFINITY = float("inf")

# Messages shared with the io_uring backend, word for word (API.md "Same behaviour").
_CLOSED = "this StorageIo instance is closed"
_INHERITED = (
    "this StorageIo instance was inherited across fork(); it belongs to the parent process: "
    "create a new instance in the child"
)


def _as_bytes_like(data: object) -> tuple[Buffer, int]:
    """Return `data` in a form ``os.pwrite`` takes, and its size in bytes."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data must be a bytes-like object (bytes, bytearray, memoryview, array...), "
            f"not {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        # os.pwrite needs one contiguous run of memory; only this case pays for a copy.
        return view.tobytes(), view.nbytes
    return view, view.nbytes


def _as_position(name: str, value: object) -> int:
    """An offset or a length: an int in 0..=2**63-1."""
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= _MAX_OFFSET:
        raise ValueError(f"{name}={value} is out of range: allowed 0..={_MAX_OFFSET}")
    return int(value)


def _as_offset(offset: object) -> int:
    return _as_position("offset", offset)


def _as_min_complete(min_complete: object) -> int:
    if not isinstance(min_complete, int):
        raise TypeError(f"min_complete must be an int, not {type(min_complete).__name__}")
    if not 0 <= min_complete <= _MAX_OFFSET:
        raise ValueError(f"min_complete={min_complete} is out of range")
    return int(min_complete)


def _deadline(timeout: object) -> float | None:
    """The monotonic time at which a wait with `timeout` seconds gives up (None: never)."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be None or a number of seconds, not {type(timeout).__name__}"
        )
    try:
        seconds = float(timeout)
    except OverflowError:  # an int too large for a float
        seconds = _INFINITY
    if not 0 <= seconds < _INFINITY:
        raise ValueError(f"timeout={timeout} is out of range: allowed None or a finite number >= 0")
    return time.monotonic() + seconds


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (None: no limit), capped to what a lock can wait."""
    if deadline is None:
        return None
    return min(deadline - time.monotonic(), threading.TIMEOUT_MAX)


def _as_tokens(tokens: object) -> list[int]:
    try:
        items = list(tokens)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"tokens must be an iterable of tokens (ints), not {type(tokens).__name__}"
        ) from None
    for token in items:
        if not isinstance(token, int):
            raise TypeError(f"a token must be an int, not {type(token).__name__}")
    return items


def _as_buffers(buffers: object) -> tuple[list[Buffer], int]:
    """Return the bytes-like items of `buffers` and their total size in bytes."""
    try:
        memoryview(buffers)  # type: ignore[arg-type]
    except TypeError:
        pass
    else:
        raise TypeError(
            "buffers must be a sequence of bytes-like objects, not one bytes-like object "
            "(use submit_write/submit_append for that)"
        )
    try:
        items = list(buffers)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"buffers must be a sequence of bytes-like objects, not {type(buffers).__name__}"
        ) from None
    views: list[Buffer] = []
    total = 0
    for item in items:
        if type(item) is bytes:
            views.append(item)
            total += len(item)
        else:
            view, size = _as_bytes_like(item)
            views.append(view)
            total += size
    return views, total
