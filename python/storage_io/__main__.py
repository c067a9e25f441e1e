"""``python -m storage_io COMMAND``: the package's command line.

Commands:
  bench   measure the workloads of docs/workloads.md on every implementation available here
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, bench


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m storage_io",
        description="storage_io: submission/completion writes for logs on disk.",
    )
    parser.add_argument("--version", action="version", version=f"storage_io {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = commands.add_parser(
        "bench",
        help="measure the workloads of docs/workloads.md on every implementation available here",
        description="Run the workloads W1..W5 on every implementation available here (pwrite "
        "baseline, sync, uring, uring-sqpoll), interleaved, and print the medians and the "
        "ratio to the pwrite loop. The log's workloads (wal_append_256, wal_group_commit, "
        "wal_replay, wal_replay_256) and asyncio's (aio_append_4k, aio_wal_commit), each "
        "against its own hand-written baselines, run when named with --workload. Every run "
        "checks that the file holds exactly the bytes written; a wrong file is reported as "
        "WRONG, with no figure. Exit code 1 if any run went wrong.",
    )
    bench.add_arguments(bench_parser)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.run_bench(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
