"""`StorageIo`: the interface every storage_io backend implements.

The docstrings here are the user documentation of the methods; the backends
(`UringStorageIo` in Rust, `SyncStorageIo` in Python) follow them.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType
    from typing import Self

    from typing_extensions import Buffer

    from ._native import IoCompletion, IoFd

__all__ = ["StorageIo"]


class HasFileno(Protocol):
    """Anything with a `fileno()` method, such as a file object or a socket."""

    def fileno(self) -> int: ...


class StorageIo(abc.ABC):
    """A submission/completion I/O path for files on disk (and pipes and sockets).

    Submit writes, appends, reads and datasyncs without waiting for them; each `submit_*`
    returns a token (an int, unique on this instance). Collect the outcomes later: your own
    with `wait_for(tokens)`, or whatever is ready with `poll_completions()` (never blocks)
    or `wait()` (blocks). Every token completes exactly once, as an `IoCompletion` whose
    `result` is the number of bytes written or read (0 for a datasync) or a negative errno,
    and whose `data` holds the bytes of a read.

    Guarantees on every backend: a datasync completes only after all earlier writes and
    appends to the same file; appends to one file land back to back in submission order;
    a write completes whole or with an error, never short; a read is short only at end of
    file; no completion is dropped. On a pipe or socket, operations leave one at a time in
    submission order, each whole, and offsets are ignored.

    One instance may be shared by several threads: each thread collects its own
    completions with `wait_for()`, and a thread sleeping in `wait()` or `wait_for()` holds
    up no other thread's calls. The fast path is still one instance per thread or core. Use
    it as a context manager, or call `close()`, to release its descriptors. Both
    `SyncStorageIo` and `UringStorageIo` are instances of this class, and behave alike
    (same results, same exceptions with the same messages); `open_storage_io()` picks the
    best one for the machine.
    """

    __slots__ = ()

    supports_nowait: ClassVar[bool] = False
    """Whether the instance offers submissions that never wait, for an event loop:
    ``submit_*_nowait`` calls (queued in call order while there is no room, raising
    `QueueFullError` only past a bound), ``take_nowait_completions()`` (their completions,
    and only theirs) and ``register_eventfd()``. `UringStorageIo` does; `storage_io.aio`
    drives such an instance from the event loop directly, and any other (the sync backend,
    whose submissions do the I/O) through one worker thread."""

    # -- identity ---------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """What this instance is: ``"uring-sqpoll"``, ``"uring"`` or ``"sync"``."""

    @property
    @abc.abstractmethod
    def fallback_reason(self) -> str | None:
        """Why this instance is not the backend that was preferred, or None.

        Set when `open_storage_io()` fell back to the sync backend (the reason io_uring could
        not be used), or when an io_uring instance asked for SQPOLL but did not get it.
        """

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once `close()` has been called (or, in a child process, for an instance
        inherited across ``fork()``). Never waits for another thread's call."""

    # -- files ------------------------------------------------------------------------

    @abc.abstractmethod
    def register_fd(self, file: int | HasFileno) -> IoFd:
        """Register a file and return the handle the `submit_*` calls take.

        `file` is an int descriptor or any object with a `fileno()` method. The backend
        keeps its own duplicate of the descriptor, so the caller may close its own object
        at once. The file's append position (used by `submit_append`) starts at the file's
        size at registration. A descriptor opened read-only is fine: reads work, and a
        write to it completes with ``-EBADF``.

        A pipe, socket or terminal (a descriptor ``lseek`` refuses) is a stream: its
        operations leave one at a time, in submission order, each whole; offsets are
        ignored, a read waits until `length` bytes or the end of the stream, and a
        datasync completes with the error the system gives (``-EINVAL`` on a pipe).

        Raises `TypeError` if `file` is neither, `ValueError` for a directory, `OSError`
        (EBADF) if the descriptor is not open, `ClosedError` after `close()`.
        """

    @abc.abstractmethod
    def deregister_fd(self, fd: IoFd) -> None:
        """Wait for that file's operations still in flight, then close the backend's
        descriptor. Their completions stay available to `poll_completions()`/`wait()`.

        The handle is dead afterwards: using it raises `BadFdError`.
        """

    # -- submissions ------------------------------------------------------------------

    @abc.abstractmethod
    def submit_write(self, fd: IoFd, data: Buffer, offset: int) -> int:
        """Submit a write of `data` at byte `offset` of the file; return its token.

        `data` is any bytes-like object (bytes, bytearray, memoryview, array.array...); its
        length is its size in bytes. It is copied (or written) before the call returns, so
        the caller may reuse it at once. A write of any size completes as one token, with
        the full length or a negative errno.

        Raises `ClosedError` after `close()`, `BadFdError` if `fd` is not a live handle of
        this instance, `TypeError` if `data` is not bytes-like or `offset` not an int,
        `ValueError` if `offset` is negative, `QueueFullError`/`BufferExhaustedError` when
        the backend has no room (nothing earlier is affected: wait and retry). A failure of
        the write itself (read-only file, full disk) is not raised: it completes with a
        negative errno.
        """

    @abc.abstractmethod
    def submit_append(self, fd: IoFd, data: Buffer) -> int:
        """Submit a write of `data` at the file's append position; return its token.

        The position advances by the size of `data` at submission, so appends land back to
        back in submission order, whether or not the descriptor was opened with
        ``O_APPEND``. Errors as for `submit_write`.
        """

    @abc.abstractmethod
    def submit_writev(self, fd: IoFd, buffers: Iterable[Buffer], offset: int) -> int:
        """Submit one write of the concatenation of `buffers` at `offset`; return its token.

        Several records in one call, completing as one token whose result is their total
        size. `buffers` is a sequence (list, tuple, any iterable) of bytes-like objects,
        copied before the call returns; a single bytes-like object is a ``TypeError``.
        Otherwise as `submit_write`.
        """

    @abc.abstractmethod
    def submit_appendv(self, fd: IoFd, buffers: Iterable[Buffer]) -> int:
        """Submit one append of the concatenation of `buffers`; return its token.

        As `submit_append` for the joined bytes, and `submit_writev` for `buffers`.
        """

    @abc.abstractmethod
    def submit_read(self, fd: IoFd, length: int, offset: int) -> int:
        """Submit a read of up to `length` bytes at byte `offset` of the file; return its
        token.

        Its completion's `result` is the number of bytes read and its `data` those bytes
        (``len(data) == result``): fewer than `length` only at end of file (0 there), since
        a short read is continued by the backend. `length` 0 completes with ``b""``. A
        failed read completes with a negative errno and `data` None. The read sees every
        write and append to the file submitted on this instance before it (it is held
        behind them, like a datasync), and whatever was written through other descriptors
        before it was submitted; a write submitted after it may or may not be seen.

        Raises `ClosedError` after `close()`, `BadFdError` for a handle that is not live,
        `TypeError` if `length` or `offset` is not an int, `ValueError` if either is
        negative, `QueueFullError` when the backend has no room (wait and retry).
        """

    @abc.abstractmethod
    def submit_datasync(self, fd: IoFd) -> int:
        """Submit an ``fdatasync`` of the file; return its token.

        It completes only after every write and append to that file submitted before it;
        a result of 0 means all those bytes are durable. This is the group-commit point:
        submit a batch of appends, then one datasync. Errors as for `submit_write`.
        """

    @abc.abstractmethod
    def flush(self) -> int:
        """Hand queued submissions to the kernel now; return how many `submit_*` calls
        (tokens) were made since the previous `flush()`, `poll_completions()`, `wait()` or
        `wait_for()` (all of which flush).

        Call this when you want the I/O to start while you do something else before
        collecting completions. It never blocks on I/O.
        """

    # -- completions ------------------------------------------------------------------

    @abc.abstractmethod
    def poll_completions(self) -> list[IoCompletion]:
        """Flush, then return the completions that are ready (possibly none); never blocks.

        Completions of tokens that a `wait_for()` in another thread is waiting for are left
        to it.
        """

    @abc.abstractmethod
    def wait(self, min_complete: int = 1, timeout: float | None = None) -> list[IoCompletion]:
        """Flush, then block until at least `min_complete` completions are ready, and return
        all the ready ones.

        If fewer operations are outstanding than `min_complete`, returns once all of them
        are ready (it never waits for operations nobody submitted). `timeout` is in seconds
        (None: no limit); when it passes, returns what is ready, possibly nothing. Neither
        the GIL nor the instance is held while it sleeps: the other threads' calls go on.
        Tokens that a `wait_for()` is waiting for are neither waited for nor returned.

        The io_uring backend may do the durability work it waits for in the calling thread
        (the writes a pending datasync covers, and the ``fdatasync`` itself) instead of
        sleeping while a kernel worker does it; not when `timeout` is under one second.

        Raises `TypeError` if `min_complete` is not an int or `timeout` not a number,
        `ValueError` if either is negative (or `timeout` not finite), `ClosedError` after
        `close()`, also when another thread closes the instance meanwhile.
        """

    @abc.abstractmethod
    def wait_for(self, tokens: Iterable[int], timeout: float | None = None) -> list[IoCompletion]:
        """Flush, then block until every token in `tokens` has completed, and return
        exactly their completions, in the order of `tokens`.

        Completions of other tokens stay queued for whoever asks for them, and while it
        waits, `wait()` and `poll_completions()` in other threads never hand back one of
        its tokens: several threads may each wait for their own tokens on one shared
        instance. Neither the GIL nor the instance is held while it sleeps. An empty
        `tokens` returns ``[]`` at once; ``timeout=0`` asks without waiting.

        Raises `ValueError` for a token that is unknown, already handed back, repeated in
        `tokens` or already waited for by another `wait_for()` (before waiting: nothing is
        taken), `TypeError` if `tokens` is not an iterable of ints, and `TimeoutError`
        when `timeout` seconds pass first: then nothing is handed back, and the
        completions stay queued for a later call.
        """

    @abc.abstractmethod
    def pending_count(self) -> int:
        """How many submitted operations have not yet been handed back by
        `poll_completions()`, `wait()` or `wait_for()`."""

    @abc.abstractmethod
    def metrics(self) -> dict[str, int]:
        """Counters of this instance: at least ``submitted``, ``completed``, ``failed``
        (completed with a negative errno) and ``bytes_written``."""

    # -- lifetime ---------------------------------------------------------------------

    @abc.abstractmethod
    def close(self, timeout: float | None = None) -> None:
        """Wait for everything in flight, then release the ring, buffers and descriptors.

        Work on regular files is waited for as long as it takes. Work on pipes and sockets
        depends on the other end, which may never read or write: it is waited for 2
        seconds, then cancelled (it completes with ``-ECANCELED``). With `timeout`
        (seconds), everything still in flight when it passes is cancelled; what is already
        running and cannot be stopped (a write the kernel is doing, a datasync) is waited
        for. An instance dropped without `close()`, or left at interpreter exit, closes the
        same way. Ctrl-C (`KeyboardInterrupt`) interrupts the wait; call `close()` again to
        finish closing.

        A second call does nothing; any other call afterwards raises `ClosedError`, and so
        does a `wait()` or `wait_for()` another thread is sleeping in. Completions not
        handed back yet are dropped with the instance. In a child process, on an instance
        inherited across ``fork()``, it raises `ClosedError` like every other call.
        """

    def __enter__(self) -> Self:
        """Return the instance itself; `close()` runs when the ``with`` block ends."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the instance (see `close()`)."""
        self.close()
