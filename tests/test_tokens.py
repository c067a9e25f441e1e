"""Guarantee 1: unique tokens, each completing exactly once."""

from __future__ import annotations

import random

from _support import (
    assert_all_ok,
    assert_exactly_once,
    drain,
    pattern,
    register_path,
    submit_with_retry,
)


def test_thousands_of_mixed_operations_have_unique_tokens_completing_once(io, tmp_path):
    rng = random.Random(1)
    fds = [register_path(io, tmp_path / f"f{i}") for i in range(3)]
    tokens: list[int] = []
    received: list = []
    expected_size = [0, 0, 0]
    writes = 0
    for i in range(2000):
        k = rng.randrange(3)
        fd = fds[k]
        kind = rng.random()
        if kind < 0.45:
            data = pattern(rng.randrange(1, 600), seed=i)
            tok = submit_with_retry(io, received, io.submit_append, fd, data)
            expected_size[k] += len(data)
        elif kind < 0.95:
            # Far past the append area so writes never touch appended bytes.
            data = pattern(64, seed=i)
            tok = submit_with_retry(io, received, io.submit_write, fd, data, 10_000_000 + i * 64)
            writes += 1
        else:
            tok = submit_with_retry(io, received, io.submit_datasync, fd)
        assert isinstance(tok, int)
        tokens.append(tok)
        if i % 400 == 399:
            received.extend(io.poll_completions())

    completions = drain(io, received)
    assert_exactly_once(completions, tokens)
    assert_all_ok(completions)
    assert io.pending_count() == 0
    assert io.poll_completions() == []
    assert writes > 0


def test_tokens_never_reused_after_completion(io, tmp_path):
    fd = register_path(io, tmp_path / "f")
    seen: set[int] = set()
    for round_ in range(5):
        batch = [
            io.submit_append(fd, b"a" * 10),
            io.submit_write(fd, b"b", 1000 + round_),
            io.submit_datasync(fd),
        ]
        for t in batch:
            assert t not in seen, f"token {t} reused"
            seen.add(t)
        assert_exactly_once(drain(io), batch)


def test_tokens_are_unique_across_files_and_registrations(io, tmp_path):
    tokens = []
    for i in range(4):
        fd = register_path(io, tmp_path / f"f{i}")
        tokens.append(io.submit_append(fd, b"x"))
        tokens.append(io.submit_datasync(fd))
        io.deregister_fd(fd)
    assert len(set(tokens)) == len(tokens)
    assert_exactly_once(drain(io), tokens)
