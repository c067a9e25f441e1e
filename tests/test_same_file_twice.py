"""Two handles of one file on one instance (docs/contract.md, "Two handles of one file").

The same descriptor registered twice, or two descriptors of one inode, share one append
end: appends through either land after each other, in submission order, never over each
other, and both backends leave the same bytes. A datasync or read through one handle is
ordered after the writes through the other, as after its own.
"""

from __future__ import annotations

import os

import pytest

from _support import drain, register_path, wait_for_all


def records(count: int) -> list[bytes]:
    return [b"<record %03d %s>" % (i, b"x" * (i * 37 % 300)) for i in range(count)]


@pytest.mark.parametrize("how", ["the same descriptor", "two descriptors", "one of them O_APPEND"])
def test_appends_through_two_handles_land_one_after_the_other(io, tmp_path, how):
    path = tmp_path / "log"
    path.write_bytes(b"existing;")
    first = os.open(path, os.O_RDWR)
    second_flags = os.O_WRONLY | (os.O_APPEND if how == "one of them O_APPEND" else 0)
    second = first if how == "the same descriptor" else os.open(path, second_flags)
    try:
        handles = [io.register_fd(first), io.register_fd(second)]
    finally:
        os.close(first)
        if second != first:
            os.close(second)
    assert handles[0] != handles[1]
    written = records(60)
    tokens = [io.submit_append(handles[i % 2], record) for i, record in enumerate(written)]
    tokens.append(io.submit_appendv(handles[1], [b"[v", b"ector]"]))
    results = [c.result for c in wait_for_all(io, tokens)]
    assert results == [len(r) for r in written] + [8]
    assert path.read_bytes() == b"existing;" + b"".join(written) + b"[vector]"


def test_a_second_registration_starts_after_appends_in_flight(io, tmp_path):
    path = tmp_path / "log"
    one = register_path(io, path, os.O_RDWR | os.O_CREAT)
    early = [io.submit_append(one, b"a" * 5000) for _ in range(4)]
    two = register_path(io, path, os.O_WRONLY)  # the file's size is not 20000 yet, maybe
    late = io.submit_append(two, b"B" * 10)
    wait_for_all(io, [*early, late])
    assert path.read_bytes() == b"a" * 20000 + b"B" * 10


def test_one_handle_deregistered_the_other_appends_on(io, tmp_path):
    path = tmp_path / "log"
    one = register_path(io, path, os.O_RDWR | os.O_CREAT)
    two = register_path(io, path, os.O_RDWR)
    wait_for_all(io, [io.submit_append(one, b"1111"), io.submit_append(two, b"22")])
    io.deregister_fd(one)
    wait_for_all(io, [io.submit_append(two, b"333")])
    io.deregister_fd(two)
    again = register_path(io, path, os.O_RDWR)
    wait_for_all(io, [io.submit_append(again, b"4")])
    assert path.read_bytes() == b"1111223334"


def test_a_datasync_through_one_handle_follows_the_writes_through_the_other(io, tmp_path):
    path = tmp_path / "log"
    one = register_path(io, path, os.O_RDWR | os.O_CREAT)
    # O_DSYNC: each write waits for the disk, in a kernel worker, so that a datasync not
    # held behind them would finish first.
    two = register_path(io, path, os.O_RDWR | os.O_DSYNC)
    writes = [io.submit_append(two, os.urandom(200_000)) for _ in range(8)]
    sync = io.submit_datasync(one)
    read = io.submit_read(one, 1_600_000, 0)
    delivered = [c.token for c in drain(io)]
    order = {token: delivered.index(token) for token in [*writes, sync, read]}
    assert all(order[w] < order[sync] for w in writes), f"datasync before a write: {order}"
    assert all(order[w] < order[read] for w in writes), f"read before a write: {order}"
    assert path.stat().st_size == 1_600_000
