"""Argument checks made at the call, for operations that reach the `StorageIo` later (the
sync backend's worker thread, or a submission held back while the ring has no room).

They raise what the backends raise for the same mistake (`TypeError`, `ValueError`), so a
mistake surfaces at the call whichever path the operation then takes.
"""

from __future__ import annotations

import operator

_MAX_OFFSET = 2**63 - 1  # off_t

__all__ = ["owned_bytes", "checked_offset", "checked_length"]


def owned_bytes(data: object) -> bytes:
    """`data` as bytes that no caller can change any more: a copy, unless it is `bytes`
    (immutable already)."""
    if type(data) is bytes:
        return data
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data must be a bytes-like object (bytes, bytearray, memoryview, array...), "
            f"not {type(data).__name__}"
        ) from None
    return view.tobytes()


def _as_int(value: object, name: str) -> int:
    if type(value) is int:
        return value
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


def checked_offset(offset: object) -> int:
    value = _as_int(offset, "offset")
    if not 0 <= value <= _MAX_OFFSET:
        raise ValueError(f"offset must be in 0..{_MAX_OFFSET}, got {value}")
    return value


def checked_length(length: object) -> int:
    value = _as_int(length, "length")
    if not 0 <= value <= _MAX_OFFSET:
        raise ValueError(f"length must be in 0..{_MAX_OFFSET}, got {value}")
    return value
