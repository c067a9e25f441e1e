"""Guarantee 2 under SIGKILL: every record a group commit acknowledged is in the file, whole.

A child process appends self-describing records (magic, sequence number, length, CRC32) in
group commits -- a random number of appends, then a datasync, then a wait for all of them --
and after each commit whose completions all succeeded prints the number of records it now
knows are durable. The parent SIGKILLs it at a random moment, then reads the file: the
records 0..acknowledged-1 must all be there, back to back and intact. (Records after that
may be missing or torn: they were never acknowledged.)

A SIGKILL does not lose the page cache, so this catches what the library controls: a
datasync reported before the writes it covers had completed (the kernel cancels a dead
process's unfinished io_uring work), appends landing out of place, or a commit acknowledged
with a failed write in it.

Trials: 20 per backend by default (a few seconds); STORAGE_IO_STRESS=1 runs 200. Set
STORAGE_IO_SEED to replay one sequence of kill delays and record sizes.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from _support import STRESS, skip_or_fail

TRIALS = 200 if STRESS else 20
# Trials run this many children at a time: on 2 cores the interpreter start-up of one child
# overlaps the work of another, and the extra contention only varies the timings more.
PARALLEL = 3
MAX_KILL_DELAY_S = 0.25

MAGIC = b"REC1"
HEADER = struct.Struct("<4sQII")  # magic, sequence number, payload length, crc32

CHILD = r"""
import os, random, struct, sys, zlib
from storage_io import IoUringConfig, RingMode, SyncStorageIo, UringStorageIo
from storage_io import UringUnavailableError

kind, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
HEADER = struct.Struct("<4sQII")
rng = random.Random(seed)

def say(line):
    sys.stdout.write(line + "\n")  # one write(2) per line: a kill cannot tear it
    sys.stdout.flush()

if kind == "sync":
    io = SyncStorageIo()
else:
    mode = RingMode.SQPOLL if kind == "uring-sqpoll" else RingMode.STANDARD
    try:
        io = UringStorageIo(config=IoUringConfig(mode=mode, buffer_size=65536, buffer_count=16))
    except UringUnavailableError as exc:
        say(f"SKIP io_uring unavailable: {exc}")
        sys.exit(0)
    if kind == "uring-sqpoll" and io.backend != "uring-sqpoll":
        say(f"SKIP SQPOLL not granted: {io.fallback_reason}")
        sys.exit(0)

flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if rng.random() < 0.5 else 0)
fd = os.open(path, flags, 0o644)
handle = io.register_fd(fd)
os.close(fd)
say("ready")
seq = 0
for _ in range(100_000):
    tokens = []
    for _ in range(rng.randint(1, 16)):
        # Mostly small records; now and then one larger than a registered buffer.
        size = rng.randint(0, 3000) if rng.random() < 0.95 else rng.randint(65536, 200_000)
        payload = rng.randbytes(size)
        crc = zlib.crc32(struct.pack("<QI", seq, size) + payload)
        tokens.append(io.submit_append(handle, HEADER.pack(b"REC1", seq, size, crc) + payload))
        seq += 1
        if rng.random() < 0.2:
            io.flush()
    tokens.append(io.submit_datasync(handle))
    done = {}
    while len(done) < len(tokens):
        for c in io.wait(min_complete=len(tokens) - len(done), timeout=10.0):
            done[c.token] = c
    failed = [(c.token, c.result) for c in done.values() if not c.ok]
    if failed or set(done) != set(tokens):
        say(f"ERR {failed} {sorted(set(done) ^ set(tokens))}")
        sys.exit(3)
    say(f"ack {seq}")
say("finished")  # never reached in time: the parent kills it long before
"""


def whole_records(data: bytes) -> int:
    """How many records, from the start of the file, are present back to back and intact."""
    pos = 0
    seq = 0
    while pos + HEADER.size <= len(data):
        magic, got_seq, size, crc = HEADER.unpack_from(data, pos)
        if magic != MAGIC or got_seq != seq:
            break
        payload = data[pos + HEADER.size : pos + HEADER.size + size]
        if len(payload) != size or zlib.crc32(struct.pack("<QI", seq, size) + payload) != crc:
            break
        pos += HEADER.size + size
        seq += 1
    return seq


class Trial:
    def __init__(self, kind: str, path: Path, seed: int, delay: float, base_seed: int) -> None:
        self.path = path
        self.base_seed = base_seed
        self.seed = seed
        self.delay = delay
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, str(path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.first_line = b""
        self.killed_at = 0.0

    def describe(self) -> str:
        return (
            f"STORAGE_IO_SEED={self.base_seed}: trial seed={self.seed} "
            f"delay={self.delay:.3f}s file={self.path}"
        )


def start_and_kill(trials: list[Trial]) -> None:
    """Wait for each child to be ready, then kill each one `delay` seconds later."""
    for trial in trials:
        assert trial.proc.stdout is not None
        trial.first_line = trial.proc.stdout.readline()
        trial.killed_at = time.monotonic() + trial.delay
    for trial in sorted(trials, key=lambda t: t.killed_at):
        pause = trial.killed_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if trial.first_line == b"ready\n":
            os.kill(trial.proc.pid, signal.SIGKILL)


def check(trial: Trial) -> int:
    """Verify one killed trial; return how many records it had acknowledged."""
    out, err = trial.proc.communicate(timeout=60)
    lines = (trial.first_line + out).decode(errors="replace").splitlines(keepends=True)
    context = f"{trial.describe()}\nstdout tail: {lines[-5:]}\nstderr: {err.decode()[-2000:]}"
    if trial.first_line.startswith(b"SKIP"):
        skip_or_fail(trial.first_line.decode().strip()[5:])
    assert trial.first_line == b"ready\n", f"child did not start:\n{context}"
    assert trial.proc.returncode == -signal.SIGKILL, f"child did not die by SIGKILL:\n{context}"
    acks = []
    for line in lines[1:]:
        assert line.endswith("\n"), f"torn status line {line!r}:\n{context}"
        assert line.startswith("ack "), f"child reported {line.strip()!r}:\n{context}"
        acks.append(int(line.split()[1]))
    assert acks == sorted(acks), f"acknowledged counts went backwards: {acks}\n{context}"
    acknowledged = acks[-1] if acks else 0
    present = whole_records(trial.path.read_bytes())
    assert present >= acknowledged, (
        f"{acknowledged} records acknowledged by datasync, only the first {present} are in "
        f"the file whole\n{context}"
    )
    return acknowledged


def test_acknowledged_records_survive_sigkill(backend_kind, tmp_path):
    base_seed = int(os.environ.get("STORAGE_IO_SEED", random.randrange(1 << 30)))
    rng = random.Random(base_seed)
    acknowledged = []
    started = time.monotonic()
    for first in range(0, TRIALS, PARALLEL):
        trials = [
            Trial(
                backend_kind,
                tmp_path / f"log{i}",
                rng.randrange(1 << 30),
                rng.uniform(0.0, MAX_KILL_DELAY_S),
                base_seed,
            )
            for i in range(first, min(first + PARALLEL, TRIALS))
        ]
        try:
            start_and_kill(trials)
            for trial in trials:
                acknowledged.append(check(trial))
        finally:
            for trial in trials:
                if trial.proc.poll() is None:
                    trial.proc.kill()
                    trial.proc.wait()
        for trial in trials:
            trial.path.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    # The kills must land while commits are going on, not all before the first one.
    with_acks = sum(1 for a in acknowledged if a > 0)
    assert with_acks >= TRIALS // 2, (
        f"only {with_acks} of {TRIALS} trials acknowledged anything before the kill "
        f"(STORAGE_IO_SEED={base_seed}): the kills come too early to test anything"
    )
    print(
        f"{backend_kind}: {TRIALS} kills in {elapsed:.1f}s, STORAGE_IO_SEED={base_seed}, "
        f"records acknowledged per trial: min {min(acknowledged)} max {max(acknowledged)}"
    )
