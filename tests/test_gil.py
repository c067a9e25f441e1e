"""API.md "Second round": no call blocks while holding the GIL, dropping an instance
without close() included.

Each case reproduces a deadlock of the issue in a child process (a hang there would hang the
suite): if the instance blocks with the GIL held, the Python thread that would let its I/O
finish never runs, and the child is killed at the timeout.
"""

from __future__ import annotations

from _support import run_child

CHILD_TIMEOUT_S = 60.0

DROP_WITHOUT_CLOSE = r"""
SIZE = 1 << 20
payload = bytes(range(256)) * (SIZE // 256)
io = make_io()
r, w = os.pipe()
fd = io.register_fd(w)
os.close(w)
received = bytearray()

def drain():
    while len(received) < SIZE:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        received.extend(chunk)

drainer = threading.Thread(target=drain)
drainer.start()
io.submit_write(fd, payload, 0)
io.flush()
del io, fd  # no close(): the instance goes with its last reference, its write in flight
gc.collect()
drainer.join(30)
print(json.dumps({"alive": drainer.is_alive(), "intact": bytes(received) == payload}))
"""


def test_dropping_an_instance_with_a_pipe_write_in_flight(make_io, backend_kind):
    make_io()  # skips here, with the reason, where the backend cannot be built
    out = run_child(backend_kind, DROP_WITHOUT_CLOSE, CHILD_TIMEOUT_S)
    assert out.strip().endswith('{"alive": false, "intact": true}'), out


CLOSED_WHILE_WAITING = r"""
SIZE = 1 << 20
payload = bytes(range(256)) * (SIZE // 256)
io = make_io()
r, w = os.pipe()
fd = io.register_fd(w)
os.close(w)
token = io.submit_write(fd, payload, 0)  # more than a pipe holds: nobody reads yet
io.flush()
box = {}

def waiter():
    box["got"] = io.wait(min_complete=1)

sleeper = threading.Thread(target=waiter)
sleeper.start()
time.sleep(0.3)
# The sleeper cannot return before this thread reads the pipe below: a `closed` that waited
# for it would hang the child, which the parent kills at its timeout.
closed = io.closed
sleeper_still_waiting = sleeper.is_alive() and "got" not in box
received = bytearray()
while len(received) < SIZE:
    received.extend(os.read(r, 1 << 16))
sleeper.join(30)
tokens = [c.token for c in box.get("got", [])]
io.close()
print(json.dumps({"closed": closed, "sleeper_still_waiting": sleeper_still_waiting,
                  "alive": sleeper.is_alive(),
                  "tokens_ok": tokens == [token], "intact": bytes(received) == payload}))
"""


def test_closed_while_another_thread_is_in_wait(make_io, backend_kind):
    make_io()
    out = run_child(backend_kind, CLOSED_WHILE_WAITING, CHILD_TIMEOUT_S)
    import json

    result = json.loads(out.strip().splitlines()[-1])
    assert result["closed"] is False
    assert result["sleeper_still_waiting"], result
    assert not result["alive"] and result["tokens_ok"] and result["intact"], result
