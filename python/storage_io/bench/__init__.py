"""The benchmark workloads and the ``python -m storage_io bench`` command.

The workloads of docs/workloads.md (W1..W5) are defined here, once: the ``bench`` command
and the pytest-benchmark suite in ``benches/`` both run them, so every figure the project
quotes measures the same work. After each run the file is read back and compared with the
bytes that were written; a run that wrote anything else is reported as WRONG, with no
figure.

Where things live:

- `model`: `Workload`, `Outcome`, the calling patterns, the workload registry, the records
  and the file check;
- `implementations`: what a workload runs on (pwrite, sync, uring, uring-sqpoll and their
  vectored forms) and the implementation registry;
- `run`: `PreparedRun`, one run split into untimed set-up, timed body, untimed check;
- `loops`: the pieces of every loop (collecting completions, retrying after back-pressure,
  waiting for a round trip);
- `standard`: W1..W5, their loops per form and pattern;
- `runner`: the rows of the table, the interleaved repeats, the medians;
- `report`: the table, the JSON document, the chart; `machine`: the filesystem check;
- `cli`: the command's options and its run.

Adding a workload (bench/wal.py, bench/aio.py, ...)
---------------------------------------------------
Write a module in this package that registers its workloads when imported, and import it
at the bottom of this file (one line). In it:

1. Write one body per *form* of implementation it runs on: a function
   ``body(run: PreparedRun) -> None`` holding the timed hot loop. The built-in forms are
   ``"pwrite"`` (a plain os loop on ``run.raw_fd``: the baseline), ``"api"`` (one
   ``submit_*`` per record on ``run.target`` / ``run.handle``), ``"pwritev"`` and
   ``"apiv"``; bind attributes to locals before the loop, choose the pattern once per run
   (``run.pattern``), and use `loops` (`collect`, `retry`, `drain`, `commit`) for the rest.
2. ``register_workload(Workload(id, name, description, full_count, record_size,
   bodies={"pwrite": ..., "api": ...}, headline=..., shown=(...)))``. Figures of its own go
   into ``run.extra_figures`` from the body and are named in ``shown``, with their table
   words in ``labels`` (a key ending in ``_us`` is a latency: lower is better).
   ``patterns=PATTERNS`` if its "api" loop follows --pattern; ``setup`` / ``teardown``
   (untimed, e.g. opening a log in ``run.directory``, keeping it in ``run.state``) and
   ``check`` (what is wrong with the bytes on disk, or None) if the default file check
   (the record pool, cycled, in ``run.path``) does not fit; ``note`` for a line under the
   table; ``in_default_run=False`` when its full counts are too slow for the default run
   (it then runs when named), ``quick_scale`` for the single untimed pass over
   ``benches/``.
3. For an implementation of its own (an asyncio driver, a baseline such as "fsync each
   record"), ``register_implementation(Implementation(name, create, form,
   compared_with=("pwrite", ...)))``; ``create()`` returns a fresh target (a backend, or
   `PwriteBaseline` for the plain loops) or raises `ImplementationUnavailable`. A workload
   runs on exactly the implementations whose form it has a body for, and each row gets a
   ratio column per baseline it names in ``compared_with``.

``--workload``, ``--backend`` and the table pick them up from the registries; ``benches/``
generates its cases from them too.
"""

from __future__ import annotations

from .cli import add_arguments, run_bench
from .implementations import (
    Backend,
    Implementation,
    ImplementationUnavailable,
    PwriteBaseline,
    Target,
    all_implementations,
    create_implementation,
    find_implementation,
    is_vectored,
    register_implementation,
)
from .model import (
    PATTERNS,
    SLIDING,
    WINDOW,
    WINDOW_NOFLUSH,
    Body,
    Outcome,
    Workload,
    all_workloads,
    check_file,
    find_workload,
    record_pool,
    register_workload,
)
from .run import PreparedRun, prepare_run, run_workload
from .standard import VECTOR_BATCH, W1, W2, W3, W4, W5

__all__ = [
    "PATTERNS",
    "SLIDING",
    "VECTOR_BATCH",
    "W1",
    "W2",
    "W3",
    "W4",
    "W5",
    "WINDOW",
    "WINDOW_NOFLUSH",
    "Backend",
    "Body",
    "Implementation",
    "ImplementationUnavailable",
    "Outcome",
    "PreparedRun",
    "PwriteBaseline",
    "Target",
    "Workload",
    "add_arguments",
    "all_implementations",
    "all_workloads",
    "check_file",
    "create_implementation",
    "find_implementation",
    "find_workload",
    "is_vectored",
    "prepare_run",
    "record_pool",
    "register_implementation",
    "register_workload",
    "run_bench",
    "run_workload",
]

# Workload modules beyond W1..W5 (`standard`, imported above): each registers its workloads
# when imported. A new one adds its line here.
from . import aio as _aio  # noqa: E402, F401 (registers A1, A2: storage_io.aio)
from . import wal as _wal  # noqa: E402, F401 (registers WAL1..WAL4: the write-ahead log)
