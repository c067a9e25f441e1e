"""API.md "Second round", the same behaviour on both backends: the same mistake raises the
same exception type with the same message; flush() returns the same count; after fork() a
child's call on any inherited instance raises ClosedError; register_fd refuses a directory
with ValueError; one repr style; help() documents every public method.

The messages are spelled out here: they are the contract the two backends were aligned on.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import time
from typing import Any

import pytest

from _support import close_quietly, drain, register_path, wait_for_all
from conftest import build_backend
from storage_io import BadFdError, ClosedError, StorageIo

MAX = 2**63 - 1
CLOSED = "this StorageIo instance is closed"
INHERITED = (
    "this StorageIo instance was inherited across fork(); it belongs to the parent process: "
    "create a new instance in the child"
)

# (mistake, call on (io, fd), exception type, exact message)
MISTAKES = [
    ("fd not an IoFd", lambda io, fd: io.submit_write(3, b"x", 0), BadFdError,
     "expected an IoFd from register_fd(), got int"),
    ("data not bytes-like", lambda io, fd: io.submit_write(fd, "text", 0), TypeError,
     "data must be a bytes-like object (bytes, bytearray, memoryview, array...), not str"),
    ("offset not an int", lambda io, fd: io.submit_write(fd, b"x", "0"), TypeError,
     "offset must be an int, not str"),
    ("offset a float", lambda io, fd: io.submit_write(fd, b"x", 1.0), TypeError,
     "offset must be an int, not float"),
    ("offset None", lambda io, fd: io.submit_write(fd, b"x", None), TypeError,
     "offset must be an int, not NoneType"),
    ("negative offset", lambda io, fd: io.submit_write(fd, b"x", -1), ValueError,
     f"offset=-1 is out of range: allowed 0..={MAX}"),
    ("offset too large", lambda io, fd: io.submit_write(fd, b"x", 2**63), ValueError,
     f"offset={2**63} is out of range: allowed 0..={MAX}"),
    ("one bytes object as buffers", lambda io, fd: io.submit_writev(fd, b"x", 0), TypeError,
     "buffers must be a sequence of bytes-like objects, not one bytes-like object "
     "(use submit_write/submit_append for that)"),
    ("read length not an int", lambda io, fd: io.submit_read(fd, 1.5, 0), TypeError,
     "length must be an int, not float"),
    ("negative read length", lambda io, fd: io.submit_read(fd, -1, 0), ValueError,
     f"length=-1 is out of range: allowed 0..={MAX}"),
    ("negative read offset", lambda io, fd: io.submit_read(fd, 1, -5), ValueError,
     f"offset=-5 is out of range: allowed 0..={MAX}"),
    ("timeout a string", lambda io, fd: io.wait(timeout="1"), TypeError,
     "timeout must be None or a number of seconds, not str"),
    ("negative timeout", lambda io, fd: io.wait(timeout=-1), ValueError,
     "timeout=-1 is out of range: allowed None or a finite number >= 0"),
    ("negative float timeout", lambda io, fd: io.wait(timeout=-0.5), ValueError,
     "timeout=-0.5 is out of range: allowed None or a finite number >= 0"),
    ("NaN timeout", lambda io, fd: io.wait(timeout=float("nan")), ValueError,
     "timeout=nan is out of range: allowed None or a finite number >= 0"),
    ("infinite timeout", lambda io, fd: io.wait(timeout=float("inf")), ValueError,
     "timeout=inf is out of range: allowed None or a finite number >= 0"),
    ("min_complete a string", lambda io, fd: io.wait(min_complete="1"), TypeError,
     "min_complete must be an int, not str"),
    ("negative min_complete", lambda io, fd: io.wait(min_complete=-1), ValueError,
     "min_complete=-1 is out of range"),
    ("wait_for timeout a string", lambda io, fd: io.wait_for([], timeout="1"), TypeError,
     "timeout must be None or a number of seconds, not str"),
    ("wait_for negative timeout", lambda io, fd: io.wait_for([], timeout=-2), ValueError,
     "timeout=-2 is out of range: allowed None or a finite number >= 0"),
    ("tokens not iterable", lambda io, fd: io.wait_for(5), TypeError,
     "tokens must be an iterable of tokens (ints), not int"),
    ("token not an int", lambda io, fd: io.wait_for(["a"]), TypeError,
     "a token must be an int, not str"),
    ("token a float", lambda io, fd: io.wait_for([1.0]), TypeError,
     "a token must be an int, not float"),
    ("wait_for NaN timeout", lambda io, fd: io.wait_for([], timeout=float("nan")), ValueError,
     "timeout=nan is out of range: allowed None or a finite number >= 0"),
    ("unknown token", lambda io, fd: io.wait_for([12345]), ValueError,
     "token 12345 is not outstanding on this instance (never returned by submit_*, or "
     "already handed back)"),
    ("file neither int nor fileno()", lambda io, fd: io.register_fd("x"), TypeError,
     "file must be an int descriptor or have fileno(), not str"),
    ("file None", lambda io, fd: io.register_fd(None), TypeError,
     "file must be an int descriptor or have fileno(), not NoneType"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [case[1:] for case in MISTAKES],
    ids=[case[0] for case in MISTAKES],
)
def test_same_mistake_same_exception_and_message(io, tmp_path, call, exc, message):
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    with pytest.raises(exc) as info:
        call(io, fd)
    assert type(info.value) is exc
    assert str(info.value) == message
    assert io.pending_count() == 0


def test_bad_handle_messages(io, backend_kind, tmp_path):
    other = build_backend(backend_kind)
    try:
        foreign = register_path(other, tmp_path / "other")
        with pytest.raises(BadFdError) as info:
            io.submit_append(foreign, b"x")
        assert str(info.value) == f"{foreign!r} belongs to another StorageIo instance"
    finally:
        other.close()
    gone = register_path(io, tmp_path / "gone")
    io.deregister_fd(gone)
    with pytest.raises(BadFdError) as info:
        io.submit_append(gone, b"x")
    assert str(info.value) == f"{gone!r} is not registered (deregistered or never issued)"


def test_token_twice_and_handed_back_messages(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    token = io.submit_append(fd, b"x")
    with pytest.raises(ValueError) as info:
        io.wait_for([token, token])
    assert str(info.value) == f"token {token} appears more than once in tokens"
    wait_for_all(io, [token])
    with pytest.raises(ValueError) as info:
        io.wait_for([token])
    assert str(info.value) == (
        f"token {token} is not outstanding on this instance (never returned by submit_*, or "
        "already handed back)"
    )


def test_wait_for_timeout_message(io):
    r, w = os.pipe()
    try:
        fd = io.register_fd(r)
        token = io.submit_read(fd, 1, 0)
        with pytest.raises(TimeoutError) as info:
            io.wait_for([token], timeout=0.01)
        assert str(info.value) == "wait_for: 1 of 1 tokens still not complete after 0.01 s"
        os.write(w, b"x")
        wait_for_all(io, [token])
    finally:
        close_quietly(r, w)


def calls_on(io, fd) -> dict:
    return {
        "register_fd": lambda: io.register_fd(0),
        "deregister_fd": lambda: io.deregister_fd(fd),
        "submit_write": lambda: io.submit_write(fd, b"x", 0),
        "submit_append": lambda: io.submit_append(fd, b"x"),
        "submit_writev": lambda: io.submit_writev(fd, [b"x"], 0),
        "submit_appendv": lambda: io.submit_appendv(fd, [b"x"]),
        "submit_read": lambda: io.submit_read(fd, 1, 0),
        "submit_datasync": lambda: io.submit_datasync(fd),
        "flush": io.flush,
        "poll_completions": io.poll_completions,
        "wait": lambda: io.wait(timeout=0),
        "wait without arguments": io.wait,
        "wait with a bad timeout": lambda: io.wait(timeout=-1),
        "wait_for": lambda: io.wait_for([], timeout=0),
        "wait_for without a timeout": lambda: io.wait_for([]),
        "wait_for an unknown token": lambda: io.wait_for([1], timeout=0),
        "pending_count": io.pending_count,
        "metrics": io.metrics,
    }


def test_every_call_after_close_raises_closed_error(make_io, tmp_path):
    io = make_io()
    fd = register_path(io, tmp_path / "f")
    io.close()
    for name, call in calls_on(io, fd).items():
        with pytest.raises(ClosedError) as info:
            call()
        assert str(info.value) == CLOSED, name
    io.close()  # a second close does nothing
    assert io.closed is True


def test_register_fd_refuses_a_directory(io, tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError) as info:
            io.register_fd(fd)
        assert str(info.value) == (
            f"file descriptor {fd} is a directory: register a file, a pipe or a socket"
        )
    finally:
        os.close(fd)
    assert io.metrics()["submitted"] == 0


def test_register_fd_of_a_closed_descriptor(io, tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    with pytest.raises(OSError) as info:
        io.register_fd(fd)
    assert info.value.errno == errno.EBADF
    assert str(info.value) == "[Errno 9] Bad file descriptor"


def test_flush_counts_the_submissions_since_the_last_flush_poll_or_wait(io, tmp_path):
    fd = register_path(io, tmp_path / "f", os.O_RDWR | os.O_CREAT)
    assert io.flush() == 0
    tokens = [io.submit_append(fd, b"a" * 100) for _ in range(3)]
    tokens.append(io.submit_datasync(fd))
    tokens.append(io.submit_read(fd, 10, 0))
    with pytest.raises(BadFdError):
        io.submit_append(object(), b"refused")  # no token: not counted
    assert io.flush() == 5
    assert io.flush() == 0
    tokens.append(io.submit_write(fd, b"w", 0))
    io.poll_completions()
    assert io.flush() == 0, "poll_completions() flushes"
    tokens.append(io.submit_write(fd, b"w", 0))
    tokens.append(io.submit_writev(fd, [b"v", b"w"], 0))
    io.wait(timeout=5)
    assert io.flush() == 0, "wait() flushes"
    last = io.submit_appendv(fd, [b"x"])
    io.wait_for([last])
    assert io.flush() == 0, "wait_for() flushes"
    io.submit_append(fd, b"y")
    io.submit_append(fd, b"z")
    assert io.flush() == 2
    drain(io)


def test_repr(make_io, backend_kind):
    io = make_io()
    if backend_kind == "sync":
        expected = "SyncStorageIo(backend='sync', closed={})"
    else:
        expected = f"UringStorageIo(backend={io.backend!r}, core_id=None, closed={{}})"
    assert repr(io) == expected.format(False)
    io.close()
    assert repr(io) == expected.format(True)


PUBLIC = sorted(
    name
    for name, value in vars(StorageIo).items()
    if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
) + ["__enter__", "__exit__"]


def test_help_documents_every_public_method(io):
    cls = type(io)
    assert inspect.getdoc(cls), "the class has no docstring"
    undocumented = [name for name in PUBLIC if not inspect.getdoc(getattr(cls, name))]
    assert not undocumented, f"help({cls.__name__}) shows nothing for {undocumented}"
    text = _help_text(cls)
    for name in ("wait_for", "submit_read"):
        assert re.search(rf"\b{name}\(", text), f"help() does not show {name}"


def _help_text(cls) -> str:
    import pydoc

    return pydoc.render_doc(cls, renderer=pydoc.plaintext)  # type: ignore[attr-defined]  # typeshed lacks pydoc.plaintext


# -- fork ------------------------------------------------------------------------------------


def in_forked_child(fn) -> Any:
    """Run fn() in a forked child; return what it returned (JSON), or fail the test."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: {status}"
    return json.loads(b"".join(chunks))


def test_every_call_in_a_forked_child_raises_closed_error(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    before = io.submit_append(fd, b"parent1 ")
    io.flush()

    def child() -> dict[str, object]:
        outcomes: dict[str, object] = {}
        calls = calls_on(io, fd)
        calls["close"] = io.close
        for name, call in calls.items():
            try:
                call()
                outcomes[name] = "returned"
            except BaseException as exc:
                outcomes[name] = f"{type(exc).__name__}: {exc}"
        outcomes["closed"] = io.closed
        outcomes["repr"] = repr(io)
        return outcomes

    outcomes = in_forked_child(child)
    assert outcomes.pop("closed") is True
    assert "closed=True" in outcomes.pop("repr")
    wrong = {k: v for k, v in outcomes.items() if v != f"ClosedError: {INHERITED}"}
    assert not wrong, f"calls in the child that did not raise ClosedError: {wrong}"
    # The parent's instance is untouched: its append position, its completions.
    after = io.submit_append(fd, b"parent2")
    got = wait_for_all(io, [before, after])
    assert [c.result for c in got] == [8, 7]
    assert (tmp_path / "f").read_bytes() == b"parent1 parent2"


def test_a_child_can_use_a_new_instance(io, backend_kind, tmp_path):
    def child() -> object:
        fresh = build_backend(backend_kind)
        handle = register_path(fresh, tmp_path / "child")
        token = fresh.submit_append(handle, b"child")
        deadline = time.monotonic() + 10
        got: list = []
        while not got and time.monotonic() < deadline:
            got = fresh.wait(timeout=1)
        fresh.close()
        return [(c.token, c.result) for c in got] == [(token, 5)]

    assert in_forked_child(child) is True
    assert (tmp_path / "child").read_bytes() == b"child"


# -- one behaviour, row by row ---------------------------------------------------------------
#
# Cases where the two backends were once found to differ. Each row is a scenario run on
# every backend and the value every backend must give.


def stream_bound_counts_the_operation_in_progress(io, tmp_path) -> object:
    """How many operations one stream takes before QueueFullError while the first of them
    is in progress (a write larger than the pipe, nobody reading)."""
    import threading

    from storage_io import QueueFullError

    r, w = os.pipe()
    reader = threading.Thread(target=_read_all, args=(r,), daemon=True)
    try:
        out = io.register_fd(w)
        tokens = [io.submit_write(out, b"s" * (1 << 20), 0)]
        io.flush()
        try:
            while len(tokens) < 5000:
                tokens.append(io.submit_append(out, b"t"))
        except QueueFullError:
            pass
        accepted = len(tokens)
        reader.start()
        wait_for_all(io, tokens)
        return accepted
    finally:
        close_quietly(w)
        io.close()  # its own write end closes: the reader reaches the end
        if reader.is_alive():
            reader.join(30)
        close_quietly(r)


def _read_all(r: int) -> None:
    while os.read(r, 1 << 20):
        pass


def wait_for_names_the_first_token_it_cannot_wait_for(io, tmp_path) -> object:
    fd = register_path(io, tmp_path / "f")
    token = io.submit_append(fd, b"x")
    try:
        io.wait_for([999_999, token, token])
    except ValueError as exc:
        message = str(exc)
    wait_for_all(io, [token])
    return message.replace(str(token), "<t>")


def metrics_count_the_bytes_read(io, tmp_path) -> object:
    (tmp_path / "f").write_bytes(b"0123456789abc")
    fd = register_path(io, tmp_path / "f", os.O_RDONLY)
    wait_for_all(io, [io.submit_read(fd, 10, 0), io.submit_read(fd, 100, 10)])
    return io.metrics()["bytes_read"]


def a_forked_child_closes_the_descriptors_it_inherits(io, tmp_path) -> object:
    path = str(tmp_path / "inherited")
    register_path(io, tmp_path / "inherited")

    def child() -> dict[str, int]:
        targets = []
        for name in os.listdir("/proc/self/fd"):
            try:
                targets.append(os.readlink(f"/proc/self/fd/{name}"))
            except OSError:
                pass
        return {
            "the registered file": targets.count(path),
            "rings": targets.count("anon_inode:[io_uring]"),
        }

    return in_forked_child(child)


DIVERGENCES = [
    (stream_bound_counts_the_operation_in_progress, 1024),
    (wait_for_names_the_first_token_it_cannot_wait_for,
     "token 999999 is not outstanding on this instance (never returned by submit_*, or "
     "already handed back)"),
    (metrics_count_the_bytes_read, 13),
    (a_forked_child_closes_the_descriptors_it_inherits, {"the registered file": 0, "rings": 0}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("scenario", "expected"), DIVERGENCES, ids=[row[0].__name__ for row in DIVERGENCES]
)
def test_one_behaviour_on_every_backend(io, tmp_path, scenario, expected):
    assert scenario(io, tmp_path) == expected
