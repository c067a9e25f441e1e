"""One run of one workload on one implementation, split into phases so that only the work
itself is timed: open and register a new file (untimed), execute the body (timed), then
deregister, check the file's bytes and remove it (untimed)."""

from __future__ import annotations

import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

from .implementations import PwriteBaseline, Target
from .model import SLIDING, Outcome, Workload, check_file, record_pool

if TYPE_CHECKING:
    from .._native import IoCompletion, IoFd

__all__ = ["PreparedRun", "form_of", "prepare_run", "run_workload"]


def form_of(target: Target, vectored: bool) -> str:
    """The built-in form that drives `target`: the plain os loops for `PwriteBaseline`, the
    submission API for a backend; their vectored forms with `vectored`."""
    if isinstance(target, PwriteBaseline):
        return "pwritev" if vectored else "pwrite"
    return "apiv" if vectored else "api"


class PreparedRun:
    """One run, split into its phases so that only the work itself is timed.

    Construction opens a new file and registers it (untimed); `execute()` is the timed
    work; `finish()` deregisters, checks the file, removes it and returns the `Outcome`.
    `form` picks the workload's body (default: the built-in form for `target` and
    `vectored`); a workload without a body for it raises ValueError. `pattern` is the
    calling pattern (model.PATTERNS) the body follows.

    What a body may use: `target` and `handle` (a backend and the registered file) or
    `raw_fd` (the plain os loops), `pool` and `count` (the records), `workload`, `pattern`,
    `failures` (completions not ok), `latencies_ns`, `extra_figures` (figures of its own),
    `directory` (where files of its own may go) and `state` (anything a setup hook made).
    """

    def __init__(
        self,
        workload: Workload,
        target: Target,
        directory: str,
        scale: float,
        label: str = "",
        vectored: bool = False,
        pattern: str = SLIDING,
        form: str | None = None,
    ) -> None:
        self.form = form if form is not None else form_of(target, vectored)
        if self.form not in workload.bodies:
            raise ValueError(f"{workload.id} {workload.name} has no {self.form} form")
        if pattern not in workload.patterns:
            raise ValueError(f"{workload.id} {workload.name} does not follow pattern {pattern!r}")
        self.workload = workload
        self.target = target
        self.vectored = self.form in ("pwritev", "apiv")
        self.pattern = pattern
        self.implementation = label or self._default_label()
        self.directory = directory
        self.count = max(1, round(workload.full_count * scale))
        self.pool = record_pool(workload.record_size)
        self.failures: list[IoCompletion] = []
        self.latencies_ns: list[int] = []
        self.extra_figures: dict[str, float] = {}
        self.state: dict[str, Any] = {}
        self.problem: str | None = None
        self.elapsed_s = 0.0
        self._open_file(directory)
        if workload.setup is not None:
            try:
                workload.setup(self)
            except BaseException:
                self._release_file()
                os.unlink(self.path)
                raise

    def _default_label(self) -> str:
        if not self.vectored:
            return self.target.backend
        return "pwritev" if self.target.backend == "pwrite" else self.target.backend + "-v"

    def _open_file(self, directory: str) -> None:
        handle, self.path = tempfile.mkstemp(
            prefix=f"{self.workload.id}-{self.implementation}-", suffix=".dat", dir=directory
        )
        self.raw_fd = -1
        self.handle: IoFd | None = None
        if isinstance(self.target, PwriteBaseline):
            self.raw_fd = handle
        else:
            try:
                self.handle = self.target.register_fd(handle)
            finally:
                os.close(handle)

    @property
    def records(self) -> int:
        """How many records the run writes."""
        return self.count * self.workload.records_per_unit

    @property
    def timed_pattern(self) -> str | None:
        """The pattern this run's loop follows; None for a loop no pattern changes."""
        return self.pattern if self.form not in ("pwrite", "pwritev") else None

    def execute(self) -> None:
        """The timed work. Sets `problem` instead of raising when an operation fails."""
        body = self.workload.bodies[self.form]
        start = time.perf_counter()
        try:
            body(self)
        except Exception as exc:
            self.problem = f"ERROR: {type(exc).__name__}: {exc}"
        self.elapsed_s = time.perf_counter() - start

    def finish(self) -> Outcome:
        """Release the file, check its bytes, remove it; return what was measured."""
        try:
            if self.workload.teardown is not None:
                self.workload.teardown(self)
            self._release_file()
            self._note_failures()
            if self.problem is None:
                wrong = self._check()
                if wrong is not None:
                    self.problem = f"WRONG: {wrong}"
        finally:
            os.unlink(self.path)
            # Freeing the file's blocks (and trimming them, on a disk mounted with discard)
            # happens at the filesystem's next journal commit, which would otherwise be the
            # next run's fdatasync: that run would pay for this one. Commit it now, untimed.
            os.sync()
        return self._outcome()

    def _release_file(self) -> None:
        if self.raw_fd >= 0:
            os.close(self.raw_fd)
            self.raw_fd = -1
        elif self.handle is not None and not isinstance(self.target, PwriteBaseline):
            left = self.target.pending_count()
            if self.problem is None and left:
                self.problem = f"ERROR: pending_count() is {left} after every completion"
            self.target.deregister_fd(self.handle)
            self.handle = None

    def _note_failures(self) -> None:
        if self.problem is None and self.failures:
            first = self.failures[0]
            self.problem = (
                f"FAILED: {len(self.failures)} completion(s) not ok, first: token "
                f"{first.token} result {first.result} ({first.error})"
            )

    def _check(self) -> str | None:
        if self.workload.check is not None:
            return self.workload.check(self)
        return check_file(self.path, self.pool, self.records)

    def _outcome(self) -> Outcome:
        return Outcome(
            workload=self.workload.id,
            implementation=self.implementation,
            elapsed_s=self.elapsed_s,
            records=self.records,
            bytes_written=self.records * self.workload.record_size,
            batches=self.count if self.workload.records_per_unit > 1 else 0,
            latencies_ns=self.latencies_ns,
            problem=self.problem,
            vectored=self.vectored,
            pattern=self.timed_pattern,
            extra_figures=self.extra_figures,
        )


def prepare_run(
    workload: Workload,
    io: Target,
    directory: str,
    scale: float,
    label: str = "",
    vectored: bool = False,
    pattern: str = SLIDING,
    form: str | None = None,
) -> PreparedRun:
    """A run of `workload` on `io` with a new file in `directory`, ready to `execute()`."""
    return PreparedRun(workload, io, directory, scale, label, vectored, pattern, form)


def run_workload(
    workload: Workload,
    io: Target,
    directory: str,
    scale: float,
    label: str = "",
    vectored: bool = False,
    pattern: str = SLIDING,
    form: str | None = None,
) -> Outcome:
    """Run `workload` once on `io` (a backend or `PwriteBaseline`) at `scale` x its
    docs/workloads.md operation count, with a new file in `directory`; check and remove it.
    With `vectored`, its vectored form (``os.pwritev`` / ``submit_appendv``)."""
    run = PreparedRun(workload, io, directory, scale, label, vectored, pattern, form)
    run.execute()
    return run.finish()
