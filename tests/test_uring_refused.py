"""docs/contract.md "When io_uring is missing", provoked for real in a child process:

- a seccomp filter (installed with ctypes: PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with a
  hand-written BPF program) makes io_uring_setup (syscall 425 on x86_64 and aarch64) fail
  with EPERM, as container runtimes' default profiles do;
- a low RLIMIT_MEMLOCK, in a child that dropped root (root's CAP_IPC_LOCK ignores the limit),
  with a buffer pool larger than the limit.

In both, `open_storage_io()` must return a working sync backend whose `fallback_reason` names
the cause, and forcing io_uring must raise `UringUnavailableError` naming it: never a crash.

With STORAGE_IO_STRESS=1 the same is checked with `sysctl kernel.io_uring_disabled=2`, which is
machine-wide (every process on the machine loses io_uring for about a second); the old value
is restored in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _support import STRESS, skip_or_fail

# Checks run inside the child, after the cause was put in place; prints one JSON object.
CHECKS = r"""
import errno, json, os, sys
from storage_io import (
    IoUringConfig, RingMode, SyncStorageIo, UringStorageIo, UringUnavailableError,
    open_storage_io,
)

def attempt(make):
    try:
        io = make()
    except UringUnavailableError as exc:
        return {"raised": "UringUnavailableError", "message": str(exc)}
    except BaseException as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}
    out = {"raised": None, "backend": io.backend, "fallback_reason": io.fallback_reason}
    if io.backend != "sync":
        out["buffer_count"] = io.config.buffer_count
    # Whatever came back must work: write, datasync, read back.
    try:
        path = os.path.join(WORKDIR, f"probe-{len(results)}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        handle = io.register_fd(fd)
        os.close(fd)
        tokens = [io.submit_append(handle, b"hello "), io.submit_append(handle, b"world"),
                  io.submit_datasync(handle)]
        done = []
        for _ in range(10):
            if len(done) == len(tokens):
                break
            done += io.wait(min_complete=len(tokens) - len(done), timeout=1.0)
        out["results"] = sorted((c.token, c.result) for c in done)
        with open(path, "rb") as f:
            out["content"] = f.read().decode()
        io.close()
    except BaseException as exc:
        out["failed_in_use"] = f"{type(exc).__name__}: {exc}"
    return out

def config(**fields):
    return IoUringConfig(**{**CONFIG, **fields})

results = {}
results["auto"] = attempt(lambda: open_storage_io(config=config()))
results["auto-default-config"] = attempt(lambda: open_storage_io())
results["forced"] = attempt(lambda: open_storage_io(backend="uring", config=config()))
results["direct"] = attempt(lambda: UringStorageIo(config=config()))
results["direct-sqpoll"] = attempt(lambda: UringStorageIo(config=config(mode=RingMode.SQPOLL)))
results["direct-standard"] = attempt(
    lambda: UringStorageIo(config=config(mode=RingMode.STANDARD)))
results["control-small-pool"] = attempt(
    lambda: UringStorageIo(config=IoUringConfig(mode=RingMode.STANDARD, buffer_size=4096,
                                                buffer_count=4)))
sys.stdout.write(json.dumps(results))
"""

SECCOMP_CHILD = r"""
import ctypes, errno, os, platform, struct, sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15     # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06     # BPF_RET | BPF_K
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
IO_URING_SETUP = 425  # setup 425, enter 426, register 427: the same on x86_64 and aarch64

# struct seccomp_data { int nr; __u32 arch; ... }: nr at offset 0, arch at offset 4.
# Jump offsets count from the next instruction; ALLOW is at 3 + n, ERRNO at 4 + n.
n = len(BLOCKED)
program = [
    (BPF_LD_W_ABS, 0, 0, 4),                   # A = arch
    (BPF_JEQ_K, 0, n + 1, AUDIT_ARCH),         # another ABI (e.g. ia32): allow
    (BPF_LD_W_ABS, 0, 0, 0),                   # A = syscall number
]
program += [(BPF_JEQ_K, n - i, 0, nr) for i, nr in enumerate(BLOCKED)]
program += [
    (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
]
code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
filters = ctypes.create_string_buffer(code, len(code))

class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

fprog = SockFprog(len(program), ctypes.addressof(filters))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    print("SKIP prctl(PR_SET_NO_NEW_PRIVS) failed:", os.strerror(ctypes.get_errno()))
    sys.exit(0)
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
    print("SKIP prctl(PR_SET_SECCOMP) failed:", os.strerror(ctypes.get_errno()))
    sys.exit(0)
# The filter works: a blocked syscall fails with EPERM (with bad arguments it would otherwise
# fail with EFAULT/EBADF/EINVAL, or for setup, succeed), an allowed one does not.
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)  # struct io_uring_params
for nr, args in ((425, (8, params)), (426, (-1, 0, 0, 0, None, 0)), (427, (-1, 0, None, 0))):
    ret = libc.syscall(nr, *args)
    refused = ret == -1 and ctypes.get_errno() == errno.EPERM
    if ret >= 0:
        os.close(ret)
    if refused != (nr in BLOCKED):
        print(f"SKIP the seccomp filter did not work as intended for syscall {nr}")
        sys.exit(0)
"""

MEMLOCK_CHILD = r"""
import errno, json, os, resource, sys
# Everything imported as root: the unprivileged user may not be able to read the Python
# installation (e.g. under /root/.pyenv) or the source tree.
import storage_io, storage_io.selection, storage_io.sync_backend
resource.setrlimit(resource.RLIMIT_MEMLOCK, (LIMIT, LIMIT))
os.setgroups([])
os.setgid(NOBODY)
os.setuid(NOBODY)  # drops CAP_IPC_LOCK, which would let root ignore RLIMIT_MEMLOCK
assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == (LIMIT, LIMIT)
"""

NOBODY = 65534
BIG_POOL = {"buffer_size": 65536, "buffer_count": 256}  # 16 MiB against a 64 KiB limit


def supported_arch() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")


def run_child(
    prelude: str, workdir: Path, config: dict[str, Any], limit: int = 0
) -> dict[str, Any]:
    source = f"WORKDIR = {str(workdir)!r}\nCONFIG = {config!r}\nNOBODY = {NOBODY}\n"
    source += f"LIMIT = {limit}\n"
    source += prelude + CHECKS
    proc = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (
        f"the child crashed or failed (exit {proc.returncode}) instead of falling back:\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    )
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout[5:].strip())
    results: dict[str, Any] = json.loads(proc.stdout)
    print(json.dumps(results, indent=1))
    return results


def assert_works(result: dict[str, Any], backend: str) -> None:
    assert result["raised"] is None, result
    assert "failed_in_use" not in result, f"the instance returned does not work: {result}"
    assert result["backend"] == backend, result
    assert result["content"] == "hello world", result
    assert [r for _, r in result["results"]] == [6, 5, 0], result


def assert_refused(results: dict[str, Any], cause_words: tuple[str, ...]) -> None:
    """The checks of the CHECKS script, for a cause that stops every io_uring ring."""

    def names_cause(text: str | None) -> bool:
        return text is not None and any(w.lower() in text.lower() for w in cause_words)

    auto = results["auto"]
    assert_works(auto, "sync")
    assert names_cause(auto["fallback_reason"]), f"fallback_reason does not say why: {auto}"
    if "auto-default-config" in results:
        auto = results["auto-default-config"]
        assert_works(auto, "sync")
        assert names_cause(auto["fallback_reason"]), f"fallback_reason does not say why: {auto}"
    for name in ("forced", "direct", "direct-sqpoll", "direct-standard"):
        result = results[name]
        assert result["raised"] == "UringUnavailableError", f"{name}: {result}"
        assert names_cause(result["message"]), f"{name}: the error does not say why: {result}"


SETUP, ENTER, REGISTER = 425, 426, 427


@pytest.mark.parametrize(
    "blocked",
    [
        pytest.param((SETUP,), id="setup"),
        pytest.param((SETUP, ENTER, REGISTER), id="all"),  # what container profiles do
        pytest.param((REGISTER,), id="register"),
        # The ring can be set up and registered, but nothing can go through it: the
        # constructor's trial no-op must catch that.
        pytest.param((ENTER,), id="enter"),
    ],
)
def test_seccomp_blocking_io_uring_falls_back_to_sync(tmp_path, blocked):
    if not supported_arch():
        pytest.skip(f"the BPF filter is written for x86_64/aarch64 Linux, not {platform.machine()}")
    results = run_child(f"BLOCKED = {blocked!r}\n" + SECCOMP_CHILD, tmp_path, {})
    assert_refused(results, ("EPERM", "seccomp", "not permitted"))
    # With any of them blocked io_uring is unusable: even the smallest pool is refused.
    assert results["control-small-pool"]["raised"] == "UringUnavailableError"


@contextlib.contextmanager
def unprivileged_workdir() -> Iterator[Path]:
    """A directory an unprivileged child can write to (pytest's tmp_path is not reachable),
    removed afterwards; skips where the RLIMIT_MEMLOCK cases cannot run."""
    if sys.platform != "linux":
        pytest.skip("RLIMIT_MEMLOCK accounting of registered buffers is Linux's")
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user (root ignores RLIMIT_MEMLOCK)")
    workdir = Path(tempfile.mkdtemp(prefix="storage_io_memlock_"))
    try:
        os.chmod(workdir, 0o777)
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("limit_kib", [64, 1024])
def test_low_memlock_limit_refuses_big_buffer_pool(limit_kib):
    """A 16 MiB pool under a 64 KiB or 1 MiB RLIMIT_MEMLOCK.

    The ring's own memory counts against the limit too, and the kernel gives it back only
    some time after the ring is closed (its teardown is deferred): under 64 KiB, after one or
    two refused attempts even a ring without buffers is refused (ENOMEM at io_uring_setup).
    1 MiB leaves room for the rings, so there a small pool must work: the refusal of the
    big one is the limit, not io_uring being unusable for this user.
    """
    with unprivileged_workdir() as workdir:
        results = run_child(MEMLOCK_CHILD, workdir, BIG_POOL, limit=limit_kib * 1024)
    # open_storage_io() without a config asks for the default 256 x 64 KiB pool and, when
    # that exceeds the limit, retries with a pool that fits in half of it (when at least 8
    # buffers fit), else falls back to sync naming the limit.
    auto = results.pop("auto-default-config")
    if limit_kib == 1024:
        assert_works(auto, "uring")
        assert auto["buffer_count"] == 8, auto  # 512 KiB / 64 KiB
    else:
        assert_works(auto, "sync")
        assert "RLIMIT_MEMLOCK" in auto["fallback_reason"], auto
    assert_refused(results, ("RLIMIT_MEMLOCK",))
    control = results["control-small-pool"]
    if limit_kib == 64:
        # Refused or not, it must be a clean answer naming the limit, never a crash.
        if control["raised"] is not None:
            assert control["raised"] == "UringUnavailableError", control
            assert "RLIMIT_MEMLOCK" in control["message"], control
        return
    if control["raised"] is not None:
        skip_or_fail(f"io_uring does not work for an unprivileged user here: {control}")
    assert_works(control, "uring")


IO_URING_DISABLED = Path("/proc/sys/kernel/io_uring_disabled")


# The sysctl is machine-wide: other io_uring users on the machine fail while it is set. CI
# runs alone on its machine (and pytest runs one test at a time), so it runs there.
ALONE_ON_MACHINE = STRESS or os.environ.get("CI") == "true"


@pytest.mark.skipif(
    not ALONE_ON_MACHINE,
    reason="changes the machine-wide kernel.io_uring_disabled: only with CI=true or "
    "STORAGE_IO_STRESS=1",
)
def test_sysctl_io_uring_disabled_falls_back_to_sync(tmp_path):
    if not IO_URING_DISABLED.exists():
        pytest.skip("this kernel has no kernel.io_uring_disabled (Linux < 6.6)")
    if os.geteuid() != 0:
        pytest.skip("setting kernel.io_uring_disabled needs root")
    old = IO_URING_DISABLED.read_text().strip()
    try:
        # 2: nobody, root included, may create a ring (1 would still let root through).
        IO_URING_DISABLED.write_text("2\n")
        results = run_child("", tmp_path, {})
    finally:
        IO_URING_DISABLED.write_text(old + "\n")
    assert_refused(results, ("io_uring_disabled",))


SEVERAL_INSTANCES_CHILD = r"""
import json, os, resource
import storage_io
resource.setrlimit(resource.RLIMIT_MEMLOCK, (LIMIT, LIMIT))
os.setgroups([])
os.setgid(NOBODY)
os.setuid(NOBODY)
def opened():
    io = storage_io.open_storage_io()
    return io, [io.backend, io.config.buffer_count if io.backend != "sync" else None]
first, a = opened()
second, b = opened()
first.close()
second.close()
reopened = []
for _ in range(3):
    io, c = opened()
    reopened.append(c)
    io.close()
print(json.dumps({"first": a, "second": b, "reopened": reopened}))
"""


def test_several_instances_share_the_usual_memlock_limit(tmp_path):
    """Under the usual unprivileged 8 MiB limit, open_storage_io() fits two io_uring
    instances (smaller pools), and closing returns the memory at once: reopening right
    after gets the same pool again, not the sync backend."""
    with unprivileged_workdir() as workdir:
        source = f"LIMIT = {8 << 20}\nNOBODY = {NOBODY}\n" + SEVERAL_INSTANCES_CHILD
        proc = subprocess.run(
            [sys.executable, "-c", source],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=workdir,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert results["first"][0] == "uring" and results["second"][0] == "uring", results
    assert results["first"][1] + results["second"][1] <= 128, results  # 2 x <= 4 MiB
    assert all(r == results["first"] for r in results["reopened"]), results
