#!/usr/bin/env bash
# The physical limit of this machine on the workloads W1..W5 (docs/workloads.md), as fio
# reaches it: engine io_uring with --fixedbufs --registerfiles, each workload with and
# without --sqthread_poll, REPEATS runs each (interleaved), medians printed as a table.
#
#   bash benches/fio_limits.sh [DIR]      # DIR: where the files go (default: $TMPDIR or /tmp)
#
# Environment: REPEATS (default 3), IODEPTH (default 32, for W1, W3, W5; W2 and W4 use 1),
# JSON_OUT (a file: also write every run's figures there as JSON).
#
# Needs fio (Debian: apt-get install fio) and python3. A fresh directory is made inside DIR
# and removed afterwards; use a directory on the disk you care about, not tmpfs. Not run by
# CI: it writes about 2.5 GiB per repeat and takes a minute or two.
#
# The fio jobs, next to the workloads:
#   W1 append_4k     rw=write bs=4k, 100,000 writes (390.6 MiB) to a new file, end_fsync=1
#   W2 group_commit  rw=write bs=4k, 2,000 x 16 writes, fdatasync=16 (a datasync every 16),
#                    iodepth=1: fio's io_uring engine queues the datasync behind the writes
#                    without waiting for them, and the next writes behind the datasync, so
#                    at a higher depth it is not a group commit (a batch may start before
#                    the previous batch's datasync completed). At depth 1 it is; the cost
#                    is 16 serial page-cache copies of 4 KiB per batch, a few µs each.
#   W3 seq_1m        rw=write bs=1m, 1 GiB, end_fsync=1
#   W4 sync_latency  rw=write bs=4k, 2,000 writes, fdatasync=1, iodepth=1
#   W5 small_256     rw=write bs=256, 200,000 writes (48.8 MiB), end_fsync=1
# W1, W3 and W5 let fio submit and reap in batches (--iodepth_batch_submit=IODEPTH/2,
# --iodepth_batch_complete_max=IODEPTH), as our backend does: fio's default of one
# io_uring_enter per write halves its rate here, which would not be a limit.
# Every file is new, not preallocated and written at its end (--fallocate=none --file_append=1),
# so writes extend it, as appends do. Throughput figures are over fio's job runtime plus an
# fdatasync of the file timed after fio exits (fio 3.33 skips end_fsync with these options;
# the runtime it reports excludes the flush). W4's
# "round trip" is the job runtime divided by the 2,000 write+fdatasync pairs (a mean); fio
# measures the write and the datasync separately, so their p50/p99 are shown as well (not
# with --sqthread_poll: fio 3.33 then reports meaningless completion latencies, seconds).
set -euo pipefail

command -v fio >/dev/null || { echo "fio not found: apt-get install fio" >&2; exit 2; }
base=${1:-${TMPDIR:-/tmp}}
repeats=${REPEATS:-3}
iodepth=${IODEPTH:-32}
work=$(mktemp -d "$base/storage_io-fio-XXXXXX")
trap 'rm -rf "$work"' EXIT
fstype=$(df -T "$work" | awk 'NR == 2 {print $2}')
echo "fio_limits: $(fio --version), files in $work ($fstype), $repeats repeat(s), iodepth $iodepth"
if [ "$fstype" = tmpfs ]; then
    echo "WARNING: $work is on tmpfs: fdatasync does nothing there; pass a DIR on a real disk"
fi

common=(--ioengine=io_uring --fixedbufs --registerfiles --rw=write --fallocate=none --file_append=1
        --direct=0 --thread --group_reporting --output-format=json)

job() { # job ID MODE ARGS... -> $work/ID-MODE-REPEAT.json
    local id=$1 mode=$2 r=$3; shift 3
    local extra=()
    [ "$mode" = sqpoll ] && extra=(--sqthread_poll=1)
    rm -f "$work/$id.dat"
    fio --name="$id-$mode" --filename="$work/$id.dat" "${common[@]}" "${extra[@]}" "$@" \
        --output="$work/$id-$mode-$r.json"
    # fio 3.33 skips end_fsync when iodepth_batch_* meets --fixedbufs --registerfiles (the
    # file is still dirty afterwards: see Dirty in /proc/meminfo). Flush it here, timed, and
    # add that time to fio's runtime, so that W1, W3 and W5 include their final fdatasync as
    # the workloads require. After a flush fio did do, this one finds nothing left to write.
    python3 - "$work/$id.dat" >"$work/$id-$mode-$r.flush" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
start = time.perf_counter()
os.fdatasync(fd)
print(time.perf_counter() - start)
os.close(fd)
PY
    rm -f "$work/$id.dat"
}

batch=(--iodepth="$iodepth" --iodepth_batch_submit=$(((iodepth + 1) / 2))
       --iodepth_batch_complete_max="$iodepth")

started=$(date +%s)
for r in $(seq 1 "$repeats"); do
    for mode in standard sqpoll; do
        echo "repeat $r/$repeats, $mode" >&2
        job W1 "$mode" "$r" --bs=4k --size=$((100000 * 4096)) "${batch[@]}" --end_fsync=1
        job W2 "$mode" "$r" --bs=4k --size=$((2000 * 16 * 4096)) --iodepth=1 --fdatasync=16
        job W3 "$mode" "$r" --bs=1m --size=1g "${batch[@]}" --end_fsync=1
        job W4 "$mode" "$r" --bs=4k --size=$((2000 * 4096)) --iodepth=1 --fdatasync=1
        job W5 "$mode" "$r" --bs=256 --size=$((200000 * 256)) "${batch[@]}" --end_fsync=1
    done
done
echo "fio runs took $(($(date +%s) - started))s" >&2

python3 - "$work" "${JSON_OUT:-}" <<'EOF'
import glob, json, os, re, statistics, sys

work, json_out = sys.argv[1], sys.argv[2]
runs = {}  # (workload, mode) -> list of figure dicts
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
    wid, mode, _ = re.match(r"(W\d)-(\w+)-(\d+)\.json$", os.path.basename(path)).groups()
    with open(path) as f:
        text = f.read()
    job = json.loads(text[text.index("{"):])["jobs"][0]  # fio may print notes before the JSON
    with open(path[: -len(".json")] + ".flush") as f:
        flush_s = float(f.read())
    write, seconds = job["write"], job["write"]["runtime"] / 1000 + flush_s
    ios = write["total_ios"]
    fig = {"records_per_s": ios / seconds, "mib_per_s": write["io_bytes"] / 2**20 / seconds}
    if wid == "W2":
        fig["batches_per_s"] = ios / 16 / seconds
    if wid == "W4":
        fig["round_trip_us"] = seconds / ios * 1e6
        if mode == "standard":  # with sqthread_poll fio's latencies are not meaningful
            clat = write["clat_ns"]["percentile"]
            sync = job["sync"]["lat_ns"]["percentile"]
            fig.update(
                write_p50_us=clat["50.000000"] / 1000, write_p99_us=clat["99.000000"] / 1000,
                sync_p50_us=sync["50.000000"] / 1000, sync_p99_us=sync["99.000000"] / 1000,
            )
    runs.setdefault((wid, mode), []).append(fig)

shown = {
    "W1": ("{records_per_s:,.0f} appends/s  {mib_per_s:,.0f} MiB/s", "append_4k"),
    "W2": ("{batches_per_s:,.0f} batches/s  {records_per_s:,.0f} records/s", "group_commit"),
    "W3": ("{mib_per_s:,.0f} MiB/s", "seq_1m"),
    "W4": ("round trip {round_trip_us:,.0f} µs (mean)", "sync_latency"),
    "W5": ("{records_per_s:,.0f} appends/s  {mib_per_s:,.1f} MiB/s", "small_256"),
}
print(f"\n{'workload':<16}  {'fio io_uring':<13}  figure (median of {len(next(iter(runs.values())))})")
print(f"{'-' * 16}  {'-' * 13}  {'-' * 60}")
medians = {}
for (wid, mode) in sorted(runs, key=lambda k: (k[0], k[1] != "standard")):
    figs = runs[(wid, mode)]
    med = {k: statistics.median(f[k] for f in figs) for k in figs[0]}
    medians[f"{wid}-{mode}"] = {"median": med, "runs": figs}
    fmt, name = shown[wid]
    text = fmt.format(**med)
    if "sync_p50_us" in med:
        text += (f"; write p50 {med['write_p50_us']:,.0f} / p99 {med['write_p99_us']:,.0f} µs,"
                 f" fdatasync p50 {med['sync_p50_us']:,.0f} / p99 {med['sync_p99_us']:,.0f} µs")
    print(f"{wid + ' ' + name:<16}  {mode:<13}  {text}")
if json_out:
    with open(json_out, "w") as f:
        json.dump(medians, f, indent=2)
    print(f"results written to {json_out}")
EOF
