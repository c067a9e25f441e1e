"""`open_storage_io`: choose the best backend that works on this machine."""

from __future__ import annotations

import logging
import os

from ._native import IoUringConfig, RingMode, UringStorageIo, UringUnavailableError
from .interface import StorageIo
from .sync_backend import SyncStorageIo

__all__ = ["open_storage_io"]

BACKENDS = ("auto", "uring", "sync")

# Fallbacks are logged at WARNING (once per open_storage_io() call, with the reason, as in
# `.fallback_reason`); choices made for the machine at INFO.
logger = logging.getLogger("storage_io")

# An SQPOLL kernel thread spins on a core of its own while it has work (and for
# sqpoll_idle_ms after). Below this many usable CPUs that core is taken from the
# application: on a 2-core machine, fio with SQPOLL reached about half the throughput of
# fio without it. With a core to spare, SQPOLL saves the submission syscall.
MIN_CPUS_FOR_SQPOLL = 4


def usable_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container
    cpuset), or the machine's count where the platform cannot say."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_ring_mode() -> RingMode:
    """SQPOLL when the machine has a core to spare for the kernel polling thread, else
    STANDARD (see MIN_CPUS_FOR_SQPOLL)."""
    if usable_cpu_count() < MIN_CPUS_FOR_SQPOLL:
        return RingMode.STANDARD
    return RingMode.SQPOLL


def open_storage_io(
    core_id: int | None = None,
    config: IoUringConfig | None = None,
    backend: str = "auto",
) -> StorageIo:
    """Return the best storage backend that works here.

    ``backend="auto"`` (the default) tries io_uring and falls back to the sync backend where
    io_uring cannot work (no kernel support, ``kernel.io_uring_disabled``, a seccomp profile,
    a low ``RLIMIT_MEMLOCK``...); the returned object's ``.fallback_reason`` then says why.
    ``backend="uring"`` forces io_uring and raises `UringUnavailableError` saying why it
    cannot work; ``backend="sync"`` forces the pure-Python backend (``core_id`` and
    ``config`` are then ignored). ``core_id`` is the CPU an SQPOLL ring's kernel thread runs
    on (`UringStorageIo`); None leaves it to the scheduler.

    When ``config`` is None, the io_uring ring mode is chosen for the machine: SQPOLL when at
    least 4 CPUs are usable, STANDARD below that, because an SQPOLL kernel thread occupies a
    core while it polls, and on a 2-core machine it halved fio's throughput. Pass an
    `IoUringConfig` to choose yourself. If SQPOLL is asked for but not granted (e.g. missing
    privileges), the ring runs in STANDARD mode and ``.fallback_reason`` says why.

    ``.backend`` on the result tells what you got: ``"uring-sqpoll"``, ``"uring"`` or
    ``"sync"``. A fallback (to the sync backend, or from SQPOLL to STANDARD) is also logged,
    once, as a WARNING on the ``storage_io`` logger with the reason; a choice made for the
    machine (STANDARD on few CPUs, a smaller buffer pool under a low ``RLIMIT_MEMLOCK``) is
    logged at INFO.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}"
        )
    if backend == "sync":
        return SyncStorageIo()
    try:
        if config is None:
            io: StorageIo = _uring_with_defaults_that_fit(core_id)
        else:
            io = UringStorageIo(core_id, config)
    except UringUnavailableError as err:
        if backend == "uring":
            raise
        fallback = SyncStorageIo()
        fallback.fallback_reason = str(err)
        logger.warning("io_uring cannot be used, falling back to the sync backend: %s", err)
        return fallback
    if io.fallback_reason:
        logger.warning(
            "SQPOLL was not granted, io_uring runs in STANDARD mode: %s", io.fallback_reason
        )
    return io


def _uring_with_defaults_that_fit(core_id: int | None) -> UringStorageIo:
    """The default config in the machine's ring mode; if its 16 MiB of registered buffers
    exceed RLIMIT_MEMLOCK (8 MiB is the usual limit for a process without CAP_IPC_LOCK,
    and every live instance of the process draws on it), the largest pool of the same
    buffer size that still fits, halving down to `MIN_BUFFERS_UNDER_MEMLOCK` buffers.
    Check ``.config.buffer_count`` to see which one you got."""
    mode = default_ring_mode()
    wanted = count = IoUringConfig().buffer_count
    while True:
        try:
            io = UringStorageIo(core_id, IoUringConfig(mode=mode, buffer_count=count))
        except UringUnavailableError as err:
            if "RLIMIT_MEMLOCK" not in str(err) or count // 2 < MIN_BUFFERS_UNDER_MEMLOCK:
                raise
            count //= 2
            continue
        if mode == RingMode.STANDARD:
            logger.info(
                "io_uring in STANDARD mode: %d usable CPUs, fewer than the %d an SQPOLL "
                "kernel thread needs to have one to spare",
                usable_cpu_count(),
                MIN_CPUS_FOR_SQPOLL,
            )
        if count != wanted:
            logger.info(
                "RLIMIT_MEMLOCK too low for %d registered buffers: using a pool of %d",
                wanted,
                count,
            )
        return io


# Fewer buffers than this and write combining has little room to work: fall back instead.
MIN_BUFFERS_UNDER_MEMLOCK = 8
