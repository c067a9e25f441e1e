"""Argument checks of `Wal`'s public calls, with messages that say what is allowed.

Apart from the log so that its methods read as what they do. None of them is on the append
path: the native framer checks a payload itself.
"""

from __future__ import annotations

import math
import operator

from ._segments import MIN_SEGMENT_BYTES


def _check_segment_bytes(segment_bytes: object) -> int:
    if type(segment_bytes) is not int:
        try:
            segment_bytes = operator.index(segment_bytes)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"segment_bytes must be an int, not {type(segment_bytes).__name__}"
            ) from None
    if not MIN_SEGMENT_BYTES <= segment_bytes < 2**63:
        raise ValueError(
            f"segment_bytes must be in {MIN_SEGMENT_BYTES}..{2**63 - 1}, got {segment_bytes}"
        )
    return segment_bytes


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be None or a number, not {type(timeout).__name__}")
    if not 0 <= timeout < math.inf:
        raise ValueError(f"timeout must be None or a finite number of seconds >= 0, got {timeout}")
    return float(timeout)


def _as_lsn(lsn: object, name: str = "lsn") -> int:
    try:
        value = operator.index(lsn)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(lsn).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value
