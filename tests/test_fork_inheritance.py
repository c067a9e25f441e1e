"""fork() with live io_uring instances (docs/contract.md, "Threads and fork").

A child gets none of an instance's memory that matters: the registered-buffer arena and
the ring's mappings are MADV_DONTFORK (registering pins the arena's pages, and fork() must
copy pinned pages at once: every live instance made every fork() slower by its pool), and
the child closes the ring's descriptor and the backend's own file descriptors at once. So
the parent's close() ends its ring, and its SQPOLL thread, while the child lives on.

Fork's cost itself is a figure for docs/performance.md, not an assertion here: the tests
check what makes it cheap (nothing of the arena is mapped in the child).
"""

from __future__ import annotations

import os
import time

from _support import LIVENESS_TIMEOUT_S, register_path
from conftest import build_backend
from test_parity import in_forked_child


def vm_ranges_with_flag(flag: str) -> set[tuple[int, int]]:
    """The address ranges of this process's mappings whose VmFlags include `flag`."""
    ranges: set[tuple[int, int]] = set()
    current = (0, 0)
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(" ", 1)[0]
            if "-" in head and not line.startswith("VmFlags"):
                try:
                    start, end = (int(x, 16) for x in head.split("-"))
                    current = (start, end)
                    continue
                except ValueError:
                    pass
            if line.startswith("VmFlags:") and flag in line.split()[1:]:
                ranges.add(current)
    return ranges


def mapped_ranges() -> set[tuple[int, int]]:
    out = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split(" ", 1)[0].split("-"))
            out.add((start, end))
    return out


def io_uring_descriptors() -> list[int]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[io_uring]":
                found.append(int(name))
        except OSError:
            pass
    return found


def io_uring_mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("[io_uring]" in line for line in maps)


def test_a_child_inherits_no_arena_no_ring_mapping_and_no_ring_descriptor(uring_kind, tmp_path):
    before = vm_ranges_with_flag("dc")
    io = build_backend(uring_kind, buffer_size=4096, buffer_count=37)
    try:
        fd = register_path(io, tmp_path / "f")
        io.wait_for([io.submit_append(fd, b"x" * 100_000)], timeout=LIVENESS_TIMEOUT_S)
        not_for_children = vm_ranges_with_flag("dc") - before
        # The arena (37 pages) and the ring's three mappings at least.
        assert sum(end - start for start, end in not_for_children) >= 37 * 4096
        assert io_uring_descriptors() and io_uring_mappings() >= 2, "precondition: a live ring"

        def child() -> dict[str, object]:
            inherited = mapped_ranges() & not_for_children
            return {
                "arena or ring mapped": sorted(inherited),
                "io_uring mappings": io_uring_mappings(),
                "io_uring descriptors": io_uring_descriptors(),
            }

        assert in_forked_child(child) == {
            "arena or ring mapped": [],
            "io_uring mappings": 0,
            "io_uring descriptors": [],
        }
        # The parent's instance works on.
        token = io.submit_append(fd, b"after the fork")
        assert io.wait_for([token], timeout=LIVENESS_TIMEOUT_S)[0].result == 14
    finally:
        io.close()


def sqpoll_threads() -> set[int]:
    tids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                if comm.read().startswith("iou-sqp"):
                    tids.add(int(tid))
        except OSError:
            pass
    return tids


def test_the_parents_close_ends_the_sqpoll_thread_while_a_child_lives():
    before = sqpoll_threads()
    io = build_backend("uring-sqpoll", sqpoll_idle_ms=60_000)
    ours = sqpoll_threads() - before
    assert ours, "precondition: the instance has an SQPOLL thread of its own"
    hold, release = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child keeps living until the parent lets it go
        try:
            os.close(release)
            os.read(hold, 1)
        finally:
            os._exit(0)
    os.close(hold)
    try:
        io.close()
        deadline = time.monotonic() + LIVENESS_TIMEOUT_S
        while ours & sqpoll_threads() and time.monotonic() < deadline:
            time.sleep(0.02)
        still = ours & sqpoll_threads()
        child_alive = os.waitpid(pid, os.WNOHANG) == (0, 0)
        assert child_alive, "precondition: the child still lives"
        assert not still, "the SQPOLL thread outlived the parent's close (the child keeps it)"
    finally:
        os.close(release)
        os.waitpid(pid, 0)
