"""WAL.md guarantee 1 under SIGKILL: every LSN a writer saw durable is there after reopen,
with its bytes.

A child process appends records whose bytes follow from their LSN, in small segments (so
kills land in rotations too), committing with `sync()` or `commit()` + `wait_durable()`, and
prints `durable_lsn` after each. The parent SIGKILLs it at a random moment, reopens the log
on the same backend and checks: every record up to the last printed LSN is there with its
bytes, and whatever else was recovered is the intact continuation (records after it were
never acknowledged: present or not, never wrong).

A SIGKILL keeps the page cache, so this catches what the library controls: a durable_lsn
advanced before the covering write and fdatasync completed, records landing out of place,
a torn tail not cut, a rotation that leaves a gap.

Trials: 20 per backend (STORAGE_IO_STRESS=1: 200). STORAGE_IO_SEED replays one sequence.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from _support import STRESS, skip_or_fail
from _wal_support import payload_for, replayed
from storage_io import Wal

TRIALS = 200 if STRESS else 20
PARALLEL = 3
MAX_KILL_DELAY_S = 0.3

CHILD = r"""
import random, sys
sys.path.insert(0, sys.argv[4])
from _wal_support import payload_for
from storage_io import IoUringConfig, RingMode, SyncStorageIo, UringStorageIo, Wal

kind, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "sync":
    io = SyncStorageIo()
else:
    mode = RingMode.SQPOLL if kind == "uring-sqpoll" else RingMode.STANDARD
    io = UringStorageIo(config=IoUringConfig(mode=mode, buffer_size=65536, buffer_count=16))
rng = random.Random(seed)
wal = Wal.open(path, io=io, segment_bytes=64 * 1024)
print("ready", flush=True)
while True:
    for _ in range(rng.randint(1, 40)):
        lsn = wal.last_lsn + 1
        assert wal.append(payload_for(lsn)) == lsn
    if rng.random() < 0.5:
        durable = wal.sync()
    else:
        wal.wait_durable(wal.commit())
        durable = wal.durable_lsn
    print(durable, flush=True)
"""


def run_trial(kind: str, directory: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(directory), str(seed), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_every_lsn_reported_durable_survives_sigkill(make_io, backend_kind, tmp_path):
    if backend_kind != "sync":
        make_io()  # skips (or fails under STORAGE_IO_REQUIRE_URING) where the ring is refused
    seed = int(os.environ.get("STORAGE_IO_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    io = make_io()
    done = 0
    kills_after_a_commit = 0
    while done < TRIALS:
        batch = []
        for i in range(min(PARALLEL, TRIALS - done)):
            directory = tmp_path / f"trial{done + i}"
            child = run_trial(backend_kind, directory, rng.randrange(2**32))
            batch.append((directory, child, rng.uniform(0.0, MAX_KILL_DELAY_S)))
        for directory, child, delay in batch:
            assert child.stdout is not None and child.stderr is not None
            first = child.stdout.readline()
            if first.startswith("Traceback") or not first:
                skip_or_fail(f"writer did not start: {first}{child.stderr.read()}")
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            rest, err = child.communicate(timeout=60)
            lines = rest.split("\n")
            acked = max((int(x) for x in lines[:-1] if x.strip()), default=0)
            kills_after_a_commit += acked > 0
            with Wal.open(directory, io=io, segment_bytes=64 * 1024) as wal:
                got = replayed(wal)
                assert len(got) >= acked, (
                    f"seed {seed}: LSN {acked} was reported durable, reopen found {len(got)}"
                )
                want = [(lsn, payload_for(lsn)) for lsn in range(1, len(got) + 1)]
                assert got == want, f"seed {seed}: recovered records differ"
                assert wal.last_lsn == len(got)
        done += len(batch)
    assert kills_after_a_commit >= TRIALS // 4, "the writers were killed before committing"
