"""API.md "Second round", bounded memory: submissions that cannot be handed to the kernel yet
(writes larger than the buffer pool, datasyncs held behind earlier writes) are bounded too.

30 writes of 4 MiB into a pool of 1 MiB, then 20,000 datasyncs behind them, without
collecting anything in between: the process must not grow by the size of what was
submitted (the issue saw 15 MB grow to 140 MB), or the backend must refuse with
QueueFullError/BufferExhaustedError (the test then waits and retries, as a caller would).
Measured in a child process, where nothing else allocates.
"""

from __future__ import annotations

import json

from _support import run_child

WRITES = 30
WRITE_SIZE = 4 << 20
DATASYNCS = 20_000
# What holding every write would cost is 120 MiB; a backend may keep some bounded amount
# in flight (its pool, a bounded queue of copies).
MAX_GROWTH_MIB = 48

LOAD = r"""
import resource
path = sys.argv[2]
WRITES, WRITE_SIZE, DATASYNCS = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

io = make_io(buffer_size=65536, buffer_count=16)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
handle = io.register_fd(fd)
os.close(fd)
data = os.urandom(WRITE_SIZE)  # one object, reused: the caller's memory does not grow
got = []
refused = 0

def submit(method, *args):
    global refused
    while True:
        try:
            return method(*args)
        except (QueueFullError, BufferExhaustedError):
            refused += 1
            got.extend(io.wait(1, timeout=5.0))

# Warm up (first write, first datasync, completion objects) before the baseline.
for _ in range(2):
    submit(io.submit_write, handle, data, 0)
    submit(io.submit_datasync, handle)
while io.pending_count():
    got.extend(io.wait(1, timeout=5.0))
baseline = rss_kib()
peak = baseline
tokens = [submit(io.submit_write, handle, data, i * WRITE_SIZE) for i in range(WRITES)]
peak = max(peak, rss_kib())
for i in range(DATASYNCS):
    tokens.append(submit(io.submit_datasync, handle))
    if i % 1000 == 0:
        peak = max(peak, rss_kib())
peak = max(peak, rss_kib())
deadline = time.monotonic() + 120
while io.pending_count() and time.monotonic() < deadline:
    got.extend(io.wait(1000, timeout=5.0))
done = {c.token: c.result for c in got}
io.close()
print(json.dumps({
    "baseline_kib": baseline, "peak_kib": peak, "refused": refused,
    "missing": sum(1 for t in tokens if t not in done),
    "failed": sum(1 for t in tokens if t in done and done[t] < 0),
    "peak_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def test_large_writes_and_many_datasyncs_stay_bounded(make_io, backend_kind, tmp_path):
    make_io()
    path = tmp_path / "big"
    out = run_child(
        backend_kind, LOAD, 300.0, str(path), str(WRITES), str(WRITE_SIZE), str(DATASYNCS)
    )
    r = json.loads(out.strip().splitlines()[-1])
    growth_mib = (r["peak_kib"] - r["baseline_kib"]) / 1024
    print(
        f"\n[{backend_kind}] RSS {r['baseline_kib'] / 1024:.1f} MiB -> peak "
        f"{r['peak_kib'] / 1024:.1f} MiB (+{growth_mib:.1f}), refused {r['refused']} times"
    )
    assert r["missing"] == 0 and r["failed"] == 0, r
    assert growth_mib < MAX_GROWTH_MIB, (
        f"memory grew by {growth_mib:.0f} MiB for {WRITES} x {WRITE_SIZE >> 20} MiB writes and "
        f"{DATASYNCS} datasyncs: submissions are not bounded ({r})"
    )
    assert path.stat().st_size == WRITES * WRITE_SIZE
