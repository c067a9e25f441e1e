"""The submit calls of the "Methods" table of docs/contract.md take their arguments by position
or by name, as the `StorageIo` interface declares them, and refuse a wrong number of arguments
with TypeError, on every backend. (The io_uring backend has a separate fast path for the
positional form; this suite keeps the other forms working.)"""

from __future__ import annotations

import inspect

import pytest

from _support import assert_all_ok, assert_exactly_once, drain, register_path
from storage_io import StorageIo

SUBMIT_CALLS = ("submit_write", "submit_append", "submit_datasync")


def test_arguments_by_position_and_by_name(io, tmp_path):
    fd = register_path(io, tmp_path / "w")
    log = register_path(io, tmp_path / "a")
    tokens = [
        io.submit_write(fd, b"ab", 0),
        io.submit_write(fd=fd, data=b"cd", offset=2),
        io.submit_write(fd, b"ef", offset=4),
        io.submit_append(log, b"gh"),
        io.submit_append(fd=log, data=b"ij"),
        io.submit_append(log, data=b"kl"),
        io.submit_datasync(fd),
        io.submit_datasync(fd=log),
    ]
    assert len(set(tokens)) == len(tokens)
    assert_all_ok(assert_exactly_once(drain(io), tokens).values())
    assert (tmp_path / "w").read_bytes() == b"abcdef"
    assert (tmp_path / "a").read_bytes() == b"ghijkl"


@pytest.mark.parametrize(
    "method, count",
    [
        ("submit_write", 2),
        ("submit_write", 4),
        ("submit_append", 1),
        ("submit_append", 3),
        ("submit_datasync", 0),
        ("submit_datasync", 2),
    ],
)
def test_wrong_number_of_arguments_raises_type_error(io, tmp_path, method, count):
    fd = register_path(io, tmp_path / "f")
    args = [fd, b"data", 0, 0][:count]
    with pytest.raises(TypeError):
        getattr(io, method)(*args)
    assert io.pending_count() == 0, "a refused call must submit nothing"


def test_unknown_keyword_raises_type_error(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    with pytest.raises(TypeError):
        io.submit_append(fd, data=b"x", offset=0)
    assert io.pending_count() == 0


@pytest.mark.parametrize("method", SUBMIT_CALLS)
def test_parameter_names_are_the_interface_s(io, method):
    declared = list(inspect.signature(getattr(StorageIo, method)).parameters)[1:]  # no self
    assert list(inspect.signature(getattr(io, method)).parameters) == declared


def test_a_call_with_no_arguments_at_all_raises_type_error(io):
    # iter(callable, sentinel) calls it through CPython's no-argument path, which passes
    # no argument array at all.
    with pytest.raises(TypeError):
        next(iter(io.submit_datasync, None))
