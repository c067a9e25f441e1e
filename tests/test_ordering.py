"""Guarantee 2: a datasync completes only after every earlier write/append to its file.

The observable order is the order completions are handed back (across and within the lists
returned by poll/wait): a datasync must come after every earlier operation on its file.
"""

from __future__ import annotations

import pytest

from _support import (
    assert_all_ok,
    assert_exactly_once,
    drain,
    pattern,
    register_path,
    submit_with_retry,
)

MIB = 1 << 20
WRITE_REGION = 64 * MIB


def run_ordered_workload(io, tmp_path, sizes, rounds):
    """Writes and appends on two files, each round closed by a datasync per file, all
    submitted without waiting. Returns (delivery order, {sync token: earlier tokens}, files)."""
    received: list = []
    names = ("a", "b")
    fds = {n: register_path(io, tmp_path / n) for n in names}
    expected = {n: bytearray() for n in names}
    earlier: dict[str, list[int]] = {n: [] for n in names}
    sync_deps: dict[int, list[int]] = {}
    tokens: list[int] = []
    write_offset = {n: 0 for n in names}
    written = {n: bytearray() for n in names}
    seed = 0
    for round_ in range(rounds):
        for size_index, size in enumerate(sizes):
            for name_index, n in enumerate(names):
                seed += 1
                data = pattern(size, seed)
                if (round_ + size_index + name_index) % 2:
                    tok = submit_with_retry(io, received, io.submit_append, fds[n], data)
                    expected[n] += data
                else:
                    # Explicit writes go to their own region, far past the appends.
                    tok = submit_with_retry(
                        io, received, io.submit_write, fds[n], data, WRITE_REGION + write_offset[n]
                    )
                    write_offset[n] += size
                    written[n] += data
                earlier[n].append(tok)
                tokens.append(tok)
        for n in names:
            tok = submit_with_retry(io, received, io.submit_datasync, fds[n])
            sync_deps[tok] = list(earlier[n])
            tokens.append(tok)
    completions = drain(io, received)
    assert_exactly_once(completions, tokens)
    assert_all_ok(completions)
    for n in names:
        data = (tmp_path / n).read_bytes()
        assert data[: len(expected[n])] == bytes(expected[n])
        assert data[WRITE_REGION:] == bytes(written[n])
    return completions, sync_deps


def assert_syncs_after_dependencies(completions, sync_deps):
    position = {c.token: i for i, c in enumerate(completions)}
    for sync_tok, deps in sync_deps.items():
        late = [t for t in deps if position[t] > position[sync_tok]]
        assert not late, (
            f"datasync {sync_tok} completed (position {position[sync_tok]}) before earlier "
            f"operations on its file: {late[:10]}"
        )
        sync = next(c for c in completions if c.token == sync_tok)
        assert sync.result == 0


def test_datasync_after_many_writes_including_8mib(io, tmp_path):
    sizes = [512, 65536, 8 * MIB, 100_000, 3, 8 * MIB + 17, 4096]
    completions, deps = run_ordered_workload(io, tmp_path, sizes, rounds=2)
    assert_syncs_after_dependencies(completions, deps)


def test_datasync_ordering_under_back_pressure_with_tiny_config(make_io, tmp_path):
    io = make_io(buffer_size=4096, buffer_count=4, ring_entries=8)
    sizes = [100, 4096, 5000, 20_000, 1, 70_000, 4097]
    completions, deps = run_ordered_workload(io, tmp_path, sizes, rounds=4)
    assert_syncs_after_dependencies(completions, deps)


@pytest.mark.parametrize("n_writes", [1, 64])
def test_datasync_submitted_right_after_writes_to_one_file(io, tmp_path, n_writes):
    fd = register_path(io, tmp_path / "f")
    tokens = [io.submit_write(fd, pattern(200_000, i), i * 200_000) for i in range(n_writes)]
    sync = io.submit_datasync(fd)
    completions = drain(io)
    assert_exactly_once(completions, tokens + [sync])
    order = [c.token for c in completions]
    assert order.index(sync) == len(order) - 1, "datasync overtook an earlier write"
    expected = b"".join(pattern(200_000, i) for i in range(n_writes))
    assert (tmp_path / "f").read_bytes() == expected


def test_datasync_does_not_wait_for_writes_submitted_after_it_but_still_completes(io, tmp_path):
    # Later writes have no ordering claim; everything still completes exactly once.
    fd = register_path(io, tmp_path / "f")
    first = io.submit_write(fd, b"1" * 1000, 0)
    sync = io.submit_datasync(fd)
    later = io.submit_write(fd, b"2" * 1000, 1000)
    completions = drain(io)
    assert_exactly_once(completions, [first, sync, later])
    order = [c.token for c in completions]
    assert order.index(first) < order.index(sync)
    assert (tmp_path / "f").read_bytes() == b"1" * 1000 + b"2" * 1000
