"""Pipes and sockets (the lead's decision for issue 9: supported on every backend).

On a stream, operations leave one at a time in submission order, each whole, and offsets
are ignored: a write larger than a registered buffer arrives intact, several writes in
flight arrive in submission order, a read waits for its length or the end of the stream,
and what waits for a reader is bounded.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading

from _support import (
    LIVENESS_TIMEOUT_S,
    close_quietly,
    pattern,
    read_exactly,
    run_child,
    wait_for_all,
)


def drain_in_background(fd: int, size: int) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["data"] = read_exactly(fd, size, timeout=LIVENESS_TIMEOUT_S * 3)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_a_4_mib_write_arrives_intact(io):
    r, w = os.pipe()
    try:
        fd = io.register_fd(w)
        payload = pattern(4 << 20, seed=4)
        reader, box = drain_in_background(r, len(payload))
        (c,) = wait_for_all(io, [io.submit_write(fd, payload, 0)])
        reader.join(LIVENESS_TIMEOUT_S * 3)
        assert c.result == len(payload)
        assert "error" not in box, box.get("error")
        received = box["data"]
        if received != payload:
            first = next(
                i for i, (a, b) in enumerate(zip(received, payload, strict=False)) if a != b
            )
            raise AssertionError(f"the pipe delivered different bytes from byte {first} on")
    finally:
        close_quietly(r, w)


def test_writes_in_flight_together_arrive_in_submission_order(make_io):
    io = make_io(buffer_size=4096, buffer_count=16)
    r, w = os.pipe()
    try:
        fd = io.register_fd(w)
        sizes = [100, 70_000, 1, 4096, 300_000, 5000, 0, 4095, 65_536, 12]
        chunks = [pattern(size, seed=i) for i, size in enumerate(sizes)]
        reader, box = drain_in_background(r, sum(sizes))
        tokens = [
            io.submit_write(fd, chunks[0], 999),  # offsets mean nothing on a stream
            io.submit_append(fd, chunks[1]),
            io.submit_writev(fd, [chunks[2], chunks[3]], 0),
            io.submit_appendv(fd, [chunks[4]]),
            *[io.submit_append(fd, c) for c in chunks[5:]],
        ]
        got = wait_for_all(io, tokens)
        reader.join(LIVENESS_TIMEOUT_S * 3)
        assert [c.result for c in got] == [100, 70_000, 4097, 300_000, *sizes[5:]]
        assert "error" not in box, box.get("error")
        assert box["data"] == b"".join(chunks), "writes to a pipe arrived out of order"
    finally:
        close_quietly(r, w)


def test_a_datasync_on_a_pipe_completes_in_its_place(io):
    r, w = os.pipe()
    try:
        fd = io.register_fd(w)
        reader, box = drain_in_background(r, 200_000)
        tokens = [io.submit_append(fd, pattern(100_000, seed=1)), io.submit_datasync(fd)]
        tokens.append(io.submit_append(fd, pattern(100_000, seed=2)))
        got = wait_for_all(io, tokens)
        reader.join(LIVENESS_TIMEOUT_S)
        assert [c.result for c in got] == [100_000, -errno.EINVAL, 100_000]
        assert box["data"] == pattern(100_000, seed=1) + pattern(100_000, seed=2)
    finally:
        close_quietly(r, w)


def test_socket_write_and_read_through_one_instance(io):
    left, right = socket.socketpair()
    try:
        out, into = io.register_fd(left), io.register_fd(right)
        payload = pattern(1 << 20, seed=6)
        tokens = [io.submit_read(into, len(payload), 0), io.submit_write(out, payload, 0)]
        got = wait_for_all(io, tokens)
        assert got[1].result == len(payload)
        assert got[0].result == len(payload) and got[0].data == payload
        io.deregister_fd(out)
        io.deregister_fd(into)
    finally:
        left.close()
        right.close()


def test_deregister_waits_for_the_stream_operations_in_flight(io):
    r, w = os.pipe()
    try:
        fd = io.register_fd(w)
        payload = pattern(1 << 20, seed=2)
        token = io.submit_write(fd, payload, 0)
        io.flush()
        reader, box = drain_in_background(r, len(payload))
        io.deregister_fd(fd)  # returns once the write is done; its completion stays
        reader.join(LIVENESS_TIMEOUT_S)
        assert box.get("data") == payload
        assert [c.result for c in wait_for_all(io, [token])] == [len(payload)]
    finally:
        close_quietly(r, w)


HELD_PIPE = r"""
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
io = make_io()
r, w = os.pipe()
fd = io.register_fd(w)
chunk = os.urandom(4096)
baseline = rss_kib()
accepted = refused = 0
for i in range(20_000):  # 80 MiB for a reader that does not read yet
    try:
        io.submit_append(fd, chunk)
        accepted += 1
    except (QueueFullError, BufferExhaustedError):
        refused += 1
        break
    if i % 1000 == 0:
        io.flush()
io.flush()
grown = rss_kib() - baseline
received = 0
while received < accepted * 4096:
    data = os.read(r, 1 << 20)
    received += len(data)
deadline = time.monotonic() + 60
done = []
while len(done) < accepted and time.monotonic() < deadline:
    done += io.wait(1, timeout=1.0)
io.close()
print(json.dumps({"accepted": accepted, "refused": refused, "grown_kib": grown,
                  "received": received, "completed": len(done),
                  "all_ok": all(c.result == 4096 for c in done)}))
"""


def test_writes_waiting_for_a_held_reader_are_bounded(make_io, backend_kind):
    make_io()
    out = run_child(backend_kind, HELD_PIPE, 60.0)
    r = json.loads(out.strip().splitlines()[-1])
    print(f"\n[{backend_kind}] held pipe: {r}")
    assert r["grown_kib"] < 48 * 1024, f"queued stream writes are not bounded: {r}"
    assert r["completed"] == r["accepted"] and r["all_ok"], r
    assert r["received"] == r["accepted"] * 4096, r


def test_a_non_blocking_pipe_is_written_and_read_whole(io):
    """asyncio and other event loops make their pipes and sockets O_NONBLOCK: the backend
    must still write and read them whole, never complete with -EAGAIN."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    try:
        out, into = io.register_fd(w), io.register_fd(r)
        payload = pattern(1 << 20, seed=9)
        tokens = [io.submit_write(out, payload, 0), io.submit_read(into, len(payload), 0)]
        got = wait_for_all(io, tokens)
        assert [c.result for c in got] == [len(payload), len(payload)]
        assert got[1].data == payload
    finally:
        close_quietly(r, w)
