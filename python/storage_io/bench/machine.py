"""What the bench says about the machine it ran on: the filesystem of its directory (a
figure taken on tmpfs says nothing about a disk), the memlock limit, whether io_uring is
disabled."""

from __future__ import annotations

import os
import re
import resource

from .model import KIB

__all__ = ["MEMORY_FILESYSTEMS", "filesystem_of", "io_uring_disabled", "memlock_limit"]

# Filesystems that live in memory: fdatasync costs nothing there.
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def _unescape(field: str) -> str:
    """A path field of /proc/self/mountinfo: the kernel writes space, tab, newline and
    backslash as three octal digits ("\\040")."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.readlines()
    except OSError:
        return []


def filesystem_of(path: str) -> tuple[str, str]:
    """(filesystem type, mount point) of `path`; ("unknown", "") if it cannot be told.

    Matched by device number in /proc/self/mountinfo, which is right across symlinks and
    bind mounts and inside containers; among mounts of the same device (bind mounts) the
    longest mount point that contains the path wins. /proc/mounts by path prefix otherwise.
    """
    real = os.path.realpath(path)
    try:
        device = os.stat(real).st_dev
    except OSError:
        return ("unknown", "")
    wanted = f"{os.major(device)}:{os.minor(device)}"
    best = ("unknown", "")
    for line in _read_lines("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if len(fields) < 5 or not after or fields[2] != wanted:
            continue
        mount_point = _unescape(fields[4])
        if _inside(real, mount_point) and len(mount_point) >= len(best[1]):
            best = (after[0], mount_point)
    return best if best[0] != "unknown" else _by_prefix(real)


def _inside(path: str, mount_point: str) -> bool:
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def _by_prefix(real: str) -> tuple[str, str]:
    best = ("unknown", "")
    for line in _read_lines("/proc/mounts"):
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = _unescape(parts[1])
        if _inside(real, mount_point) and len(mount_point) >= len(best[1]):
            best = (parts[2], mount_point)
    return best


def memlock_limit() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // KIB} KiB"


def io_uring_disabled() -> str | None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None
