"""`core_id` and `sqpoll_cpu`: the CPU an SQPOLL ring's kernel thread runs on.

The kernel thread that polls an SQPOLL ring is a thread of the process, named
``iou-sqp-<pid>``; the ``Cpus_allowed_list`` of its /proc status says which CPUs the scheduler
may run it on. ``core_id`` pins it to that CPU unless ``sqpoll_cpu`` names another; with
neither, it may run anywhere. A STANDARD ring has no such thread.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from _support import skip_or_fail
from storage_io import IoUringConfig, RingMode, UringStorageIo, UringUnavailableError

SMALL = {"buffer_size": 4096, "buffer_count": 4, "ring_entries": 8}
USABLE_CPUS = sorted(os.sched_getaffinity(0))


def cpu_set(listed: str) -> set[int]:
    """The CPUs of a kernel CPU list such as ``0-3,6``."""
    cpus: set[int] = set()
    for part in listed.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def sqpoll_threads() -> dict[int, set[int]]:
    """{thread id: CPUs it may run on} for this process's SQPOLL kernel threads."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if not f.read().startswith("iou-sqp"):
                    continue
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        found[int(tid)] = cpu_set(line.split(":", 1)[1].strip())
        except FileNotFoundError:  # a closed ring's thread exiting meanwhile
            continue
    return found


def build(core_id: Any, mode: RingMode = RingMode.SQPOLL, **config: Any) -> UringStorageIo:
    try:
        io = UringStorageIo(core_id, IoUringConfig(mode=mode, **SMALL, **config))
    except UringUnavailableError as exc:
        skip_or_fail(f"io_uring unavailable: {exc}")
    if mode == RingMode.SQPOLL and io.backend != "uring-sqpoll":
        reason = io.fallback_reason
        io.close()
        skip_or_fail(f"SQPOLL not granted: {reason}")
    return io


def cpus_of_its_sqpoll_thread(core_id: Any, **config: Any) -> set[int]:
    """The CPUs the kernel thread of a new SQPOLL ring on `core_id` may run on."""
    before = set(sqpoll_threads())
    io = build(core_id, **config)
    try:
        new = {tid: cpus for tid, cpus in sqpoll_threads().items() if tid not in before}
        assert len(new) == 1, f"expected one new SQPOLL thread, found {new}"
        assert io.core_id == core_id
        assert io.config.sqpoll_cpu == config.get("sqpoll_cpu"), "the caller's config changed"
        return next(iter(new.values()))
    finally:
        io.close()


@pytest.mark.parametrize("cpu", USABLE_CPUS[:4])
def test_core_id_pins_the_sqpoll_thread_to_that_cpu(cpu):
    assert cpus_of_its_sqpoll_thread(cpu) == {cpu}


def test_sqpoll_cpu_wins_over_core_id():
    if len(USABLE_CPUS) < 2:
        pytest.skip("needs two usable CPUs to tell core_id from sqpoll_cpu")
    first, last = USABLE_CPUS[0], USABLE_CPUS[-1]
    assert cpus_of_its_sqpoll_thread(first, sqpoll_cpu=last) == {last}
    assert cpus_of_its_sqpoll_thread(None, sqpoll_cpu=first) == {first}


def test_without_core_id_the_sqpoll_thread_may_run_anywhere():
    if len(USABLE_CPUS) < 2:
        pytest.skip("with one usable CPU, unpinned and pinned look the same")
    assert cpus_of_its_sqpoll_thread(None) >= set(USABLE_CPUS)


def test_a_standard_ring_has_no_thread_to_pin():
    before = set(sqpoll_threads())
    io = build(USABLE_CPUS[-1], mode=RingMode.STANDARD)
    try:
        assert io.backend == "uring"
        assert io.core_id == USABLE_CPUS[-1]
        assert set(sqpoll_threads()) <= before
    finally:
        io.close()


def test_a_core_id_that_is_not_an_online_cpu_is_refused():
    beyond = os.sysconf("SC_NPROCESSORS_ONLN")
    with pytest.raises(ValueError) as info:
        UringStorageIo(beyond, IoUringConfig(mode=RingMode.SQPOLL, **SMALL))
    assert str(info.value) == (
        f"core_id={beyond} is out of range: allowed None or 0..={beyond - 1} (the CPUs online)"
    )
