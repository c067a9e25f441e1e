"""IoUringConfig and RingMode."""

from __future__ import annotations

from typing import Any

import pytest

from storage_io import IoUringConfig, RingMode


def test_defaults_match_the_contract():
    cfg = IoUringConfig()
    assert cfg.ring_entries == 256
    assert cfg.mode == RingMode.SQPOLL
    assert cfg.sqpoll_idle_ms == 1000
    assert cfg.sqpoll_cpu is None
    assert cfg.buffer_size == 65536
    assert cfg.buffer_count == 256
    assert cfg.background_flush_bytes == 1 << 20


def test_ring_mode_members():
    assert RingMode.STANDARD != RingMode.SQPOLL
    assert RingMode.STANDARD == RingMode.STANDARD
    assert "STANDARD" in repr(RingMode.STANDARD)
    assert "SQPOLL" in repr(RingMode.SQPOLL)


def test_keywords_are_kept():
    fields: dict[str, Any] = dict(
        ring_entries=8,
        mode=RingMode.SQPOLL,
        sqpoll_idle_ms=10,
        sqpoll_cpu=0,
        buffer_size=4096,
        buffer_count=4,
        background_flush_bytes=0,
    )
    cfg = IoUringConfig(**fields)
    assert cfg.background_flush_bytes == 0
    assert "background_flush_bytes=0" in repr(cfg)
    assert (cfg.ring_entries, cfg.mode, cfg.sqpoll_idle_ms, cfg.sqpoll_cpu) == (
        8,
        RingMode.SQPOLL,
        10,
        0,
    )
    assert (cfg.buffer_size, cfg.buffer_count) == (4096, 4)
    assert cfg == IoUringConfig(**fields)
    assert cfg != IoUringConfig()
    standard = IoUringConfig(mode=RingMode.STANDARD)
    assert standard.mode == RingMode.STANDARD
    assert standard != IoUringConfig()


@pytest.mark.parametrize(
    "field, value",
    [
        ("ring_entries", 0),
        ("ring_entries", -1),
        ("buffer_size", 0),
        ("buffer_size", -4096),
        ("buffer_count", 0),
        ("buffer_count", -1),
        ("sqpoll_idle_ms", -1),
        ("background_flush_bytes", -1),
        ("background_flush_bytes", 1 << 41),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises((ValueError, OverflowError)) as info:
        IoUringConfig(**{field: value})
    assert info.type is ValueError, f"{field}={value} raised {info.type.__name__}, not ValueError"
    assert field in str(info.value), f"message does not name {field}: {info.value}"


def test_ring_entries_zero_message_gives_the_range():
    with pytest.raises(ValueError) as info:
        IoUringConfig(ring_entries=0)
    message = str(info.value)
    assert any(ch.isdigit() for ch in message.replace("ring_entries", "")), message
