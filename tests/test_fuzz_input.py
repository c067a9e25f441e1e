"""Hostile input: whatever a caller passes, the answer is a result or one of the exceptions
docs/contract.md names ("Public names"), never a crash, a hang, a Rust panic or a stray
exception type.

Allowed: ValueError, TypeError, OSError and StorageIoError with its subclasses (BadFdError,
ClosedError, QueueFullError, BufferExhaustedError, UringUnavailableError). pyo3's
PanicException derives from BaseException, not Exception, so it is caught and failed on
explicitly, as is OverflowError (outside the IoFd/IoCompletion value constructors, where it
says "this field is unsigned/64-bit", which is sensible). Each call runs on a helper thread
with a time limit, so a hang fails the test instead of stalling the suite.

Examples per test: 150 by default, 2,000 under STORAGE_IO_STRESS=1 (docs/reliability.md).
"""

from __future__ import annotations

import array
import ctypes
import os
import pickle
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _support import STRESS, call_with_timeout, skip_or_fail
from conftest import BACKENDS, build_backend
from storage_io import (
    IoCompletion,
    IoFd,
    IoUringConfig,
    RingMode,
    StorageIoError,
    SyncStorageIo,
    UringStorageIo,
    UringUnavailableError,
    open_storage_io,
)

ALLOWED = (ValueError, TypeError, OSError, StorageIoError)
CALL_TIMEOUT_S = 10.0

FUZZ = settings(
    max_examples=2000 if STRESS else 150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def outcome(fn: Any, sensible: tuple = ()) -> Any:
    """fn()'s result, or the allowed exception it raised; anything else fails the test."""
    try:
        return call_with_timeout(fn, CALL_TIMEOUT_S)
    except ALLOWED + sensible as exc:
        return exc
    except BaseException as exc:  # PanicException, OverflowError, AttributeError...
        pytest.fail(f"{type(exc).__module__}.{type(exc).__name__} escaped: {exc}")


# -- values --------------------------------------------------------------------------------

EDGE_INTS = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
]
INTS = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-(2**70), 2**70), st.integers(-5, 70))
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-320, 0.5, 1e9, 9e18, 1.8e19, 1e20, 1e300]),
)


class WithFileno:
    def __init__(self, value: Any) -> None:
        self.value = value

    def fileno(self) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value

    def __repr__(self) -> str:
        return f"WithFileno({self.value!r})"


class CallerError(Exception):
    """Raised by a caller's own fileno(): register_fd may let it through unchanged."""


class NotCallableFileno:
    fileno = 3


class BytesSub(bytes):
    pass


class IntSub(int):
    pass


def memoryviews(draw_bytes: bytes) -> list[Any]:
    base = bytearray(draw_bytes)
    views: list[Any] = [
        memoryview(draw_bytes),
        memoryview(base),
        memoryview(base).toreadonly(),
        memoryview(base)[::2],  # strided
        memoryview(base)[::-1],  # negative stride
        memoryview(base)[1:],
    ]
    if len(base) % 4 == 0:
        views.append(memoryview(base).cast("I"))
    if len(base) >= 4 and len(base) % 2 == 0:
        two_d = memoryview(base).cast("B", (2, len(base) // 2))
        views += [two_d, two_d[::-1]]
    if len(base) == 1:
        views.append(memoryview(base).cast("B", ()))  # zero-dimensional
    released = memoryview(bytearray(draw_bytes))
    released.release()
    views.append(released)
    return views


# Callables that make a value when drawn (a fresh object each time).
MAKERS: list[Callable[[], object]] = [
    bytes,
    bytearray,
    lambda: memoryview(b""),
    lambda: 1_000_000 * b"x",
]
DATA = st.one_of(
    st.binary(max_size=70_000),
    st.binary(max_size=100).map(bytearray),
    st.binary(max_size=100).map(BytesSub),
    # memoryviews are unhashable: pick one by index, not with sampled_from.
    st.tuples(st.binary(max_size=300), st.integers(0, 20)).map(
        lambda t: memoryviews(t[0])[t[1] % len(memoryviews(t[0]))]
    ),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20).map(lambda v: array.array("i", v)),
    st.lists(st.floats(allow_nan=True), max_size=20).map(lambda v: array.array("d", v)),
    st.binary(max_size=50).map(pickle.PickleBuffer),
    st.integers(0, 40).map(lambda n: (ctypes.c_int32 * n)()),
    st.sampled_from(MAKERS).map(lambda make: make()),
    st.text(max_size=20),
    INTS,
    FLOATS,
    st.none(),
    st.lists(st.integers(0, 255), max_size=10),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.just(object()),
    st.just(NotCallableFileno()),
)

FILE_LIKE = st.one_of(
    INTS,
    INTS.map(IntSub),
    st.booleans(),
    FLOATS,
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.just(object()),
    st.just(NotCallableFileno()),
    st.one_of(
        INTS,
        st.none(),
        st.text(max_size=3),
        FLOATS,
        st.sampled_from([OSError(9, "EBADF"), CallerError("boom")]),
    ).map(WithFileno),
)

ANY_NUMBER_OR_JUNK = st.one_of(INTS, FLOATS, st.booleans(), st.none(), st.text(max_size=5))


# -- instances -----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_env(request: pytest.FixtureRequest) -> Any:
    """One instance per backend for the whole module (hypothesis runs many examples per
    test), with a registered file, a deregistered handle and a handle of another instance."""
    directory = tempfile.TemporaryDirectory(prefix="storage_io_fuzz_")
    io = build_backend(request.param, buffer_size=4096, buffer_count=8, ring_entries=8)
    other = SyncStorageIo()

    def open_file(name: str, flags: int = os.O_WRONLY | os.O_CREAT) -> int:
        return os.open(os.path.join(directory.name, name), flags, 0o644)

    fd = open_file("target")
    live = io.register_fd(fd)
    dead = io.register_fd(fd)
    io.deregister_fd(dead)
    foreign = other.register_fd(fd)
    os.close(fd)
    readonly_fd = open_file("readonly", os.O_RDONLY | os.O_CREAT)
    readonly = io.register_fd(readonly_fd)
    os.close(readonly_fd)
    env = {
        "io": io,
        "live": live,
        "readonly": readonly,
        "dead": dead,
        "foreign": foreign,
        "kind": request.param,
    }
    yield env
    io.close()
    other.close()
    directory.cleanup()


def settle(io: Any) -> None:
    """Collect whatever is pending so the next example starts from a quiet instance."""
    for _ in range(200):
        if io.pending_count() == 0:
            return
        io.wait(min_complete=io.pending_count(), timeout=1.0)
    pytest.fail(f"pending_count() stays at {io.pending_count()}")


def handles(env: dict) -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(["live", "readonly", "dead", "foreign"]).map(env.__getitem__),
        st.builds(
            IoFd, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)
        ),
        st.builds(
            lambda slot, gen: IoFd(env["live"].owner, slot, gen),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
        ),
        INTS,
        st.none(),
        st.text(max_size=3),
        st.tuples(st.integers(), st.integers(), st.integers()),
    )


# -- tests ---------------------------------------------------------------------------------


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [
                "ring_entries",
                "mode",
                "sqpoll_idle_ms",
                "sqpoll_cpu",
                "buffer_size",
                "buffer_count",
                "max_files",
                "background_flush_bytes",
            ]
        ),
        st.one_of(
            ANY_NUMBER_OR_JUNK,
            st.sampled_from([RingMode.STANDARD, RingMode.SQPOLL]),
            st.integers(0, 70),
            st.sampled_from([4096, 8192, 65536, 1 << 30, (1 << 30) + 4096, 16384, 16385]),
        ),
    ),
    core_id=ANY_NUMBER_OR_JUNK,
    backend=st.sampled_from(["auto", "uring", "sync", "bogus", None, 3]),
)
def test_fuzz_config_and_construction(fields, core_id, backend):
    config = outcome(lambda: IoUringConfig(**fields))
    if isinstance(config, BaseException):
        return
    assert isinstance(config, IoUringConfig)
    # Build a ring only where it pins little memory: a 1 GiB buffer pool is a valid config
    # but not something to register 150 times on a CI machine.
    if config.buffer_size * config.buffer_count > 16 << 20 or config.ring_entries > 4096:
        return
    for make in (
        lambda: UringStorageIo(core_id=core_id, config=config),
        lambda: open_storage_io(core_id=core_id, config=config, backend=backend),
    ):
        io = outcome(make)
        if not isinstance(io, BaseException):
            assert io.backend in ("uring", "uring-sqpoll", "sync")
            io.close()


@FUZZ
@given(data=st.data())
def test_fuzz_register_fd(fuzz_env, data):
    io = fuzz_env["io"]
    file = data.draw(FILE_LIKE, label="file")
    handle = outcome(lambda: io.register_fd(file), sensible=(CallerError,))
    if isinstance(handle, IoFd):
        assert outcome(lambda: io.deregister_fd(handle)) is None


@FUZZ
@given(data=st.data())
def test_fuzz_submissions(fuzz_env, data):
    io = fuzz_env["io"]
    handle = data.draw(handles(fuzz_env), label="handle")
    payload = data.draw(DATA, label="data")
    offset = data.draw(st.one_of(INTS, FLOATS, INTS.map(IntSub), st.none(), st.booleans()))
    method = data.draw(
        st.sampled_from(["write", "append", "writev", "appendv", "datasync", "deregister"])
    )
    if method in ("writev", "appendv"):
        payload = data.draw(
            st.one_of(
                st.lists(DATA, max_size=4),
                st.lists(DATA, max_size=4).map(tuple),
                st.lists(DATA, max_size=4).map(iter),
                DATA,  # a single object, bytes-like or not: TypeError
            ),
            label="buffers",
        )
    if method == "deregister" and handle in (fuzz_env["live"], fuzz_env["readonly"]):
        method = "datasync"  # keep the module's registrations alive
    call = {
        "write": lambda: io.submit_write(handle, payload, offset),
        "append": lambda: io.submit_append(handle, payload),
        "writev": lambda: io.submit_writev(handle, payload, offset),
        "appendv": lambda: io.submit_appendv(handle, payload),
        "datasync": lambda: io.submit_datasync(handle),
        "deregister": lambda: io.deregister_fd(handle),
    }[method]
    before = io.pending_count()
    result = outcome(call)
    if method == "deregister":
        assert isinstance(result, BaseException) or result is None
    elif isinstance(result, BaseException):
        assert io.pending_count() == before, f"a refused {method} left something pending"
    else:
        assert type(result) is int, f"token {result!r}"
        done = []
        for _ in range(100):
            done += io.wait(min_complete=1, timeout=1.0)
            if any(c.token == result for c in done):
                break
        mine = [c for c in done if c.token == result]
        assert len(mine) == 1, f"token {result} completed {len(mine)} times"
    settle(io)


@FUZZ
@given(
    min_complete=ANY_NUMBER_OR_JUNK,
    timeout=st.one_of(FLOATS, INTS, st.none(), st.text(max_size=2), st.booleans()),
    in_flight=st.integers(0, 3),
)
def test_fuzz_wait_arguments(fuzz_env, min_complete, timeout, in_flight):
    io = fuzz_env["io"]
    tokens = {io.submit_write(fuzz_env["live"], b"w" * 100, i * 100) for i in range(in_flight)}
    got = outcome(lambda: io.wait(min_complete=min_complete, timeout=timeout))
    if not isinstance(got, BaseException):
        assert {c.token for c in got} <= tokens
    settle(io)


@FUZZ
@given(values=st.tuples(INTS, INTS, INTS), extra=st.one_of(FLOATS, st.none(), st.text()))
def test_fuzz_value_constructors(values, extra):
    # Plain value types: an out-of-range field may be an OverflowError (unsigned/64-bit).
    outcome(lambda: IoFd(*values), sensible=(OverflowError,))
    outcome(lambda: IoFd(values[0], extra, values[2]), sensible=(OverflowError,))
    c = outcome(lambda: IoCompletion(values[0], values[1]), sensible=(OverflowError,))
    if isinstance(c, IoCompletion):
        assert c.ok == (c.result >= 0)
        err = c.error
        assert err is None if c.ok else isinstance(err, OSError)
        repr(c)


# -- the findings (docs/reliability.md), one deterministic case each -----------------------


@pytest.mark.parametrize("timeout", [1e19, 1e20], ids=["instant-overflow", "duration-overflow"])
def test_wait_with_a_huge_finite_timeout_is_not_a_panic(fuzz_env, timeout):
    # uring: Duration::from_secs_f64 / Instant + Duration panic past ~9.2e18 s.
    got = outcome(lambda: fuzz_env["io"].wait(min_complete=1, timeout=timeout))
    assert isinstance(got, (list, ValueError)), got


def test_wait_with_a_huge_min_complete_is_not_an_overflow(fuzz_env):
    # uring: min_complete is extracted as i64, so 2**64 is an OverflowError (sync: []).
    got = outcome(lambda: fuzz_env["io"].wait(min_complete=2**64, timeout=0))
    assert isinstance(got, (list, ValueError)), got


@pytest.mark.parametrize("via", ["int", "fileno"])
def test_register_fd_out_of_range_descriptor(fuzz_env, via):
    # sync: os.dup raises OverflowError for both; uring: ValueError for an int, but
    # OverflowError when fileno() returns it.
    file = 2**40 if via == "int" else WithFileno(2**40)
    got = outcome(lambda: fuzz_env["io"].register_fd(file))
    assert isinstance(got, (ValueError, OSError)), got


def test_core_id_out_of_range():
    # A negative core_id is a ValueError naming it, not the OverflowError of a bare
    # conversion to an unsigned integer.
    config = IoUringConfig(mode=RingMode.STANDARD, buffer_size=4096, buffer_count=8)
    got = outcome(lambda: UringStorageIo(core_id=-1, config=config))
    if isinstance(got, UringUnavailableError):
        skip_or_fail(f"io_uring unavailable: {got}")
    assert isinstance(got, ValueError), got
