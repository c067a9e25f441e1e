//! The Python methods of `UringStorageIo`, each only a crossing: take the arguments, run
//! the backend (`crate::backend`) or wait (`crate::waiters`) through the helpers of
//! `class`, hand back values. Their docstrings are what help() shows.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::arguments::{
    config_int, deadline_from, extract_length, extract_offset, extract_tokens, file_descriptor,
};
use super::buffer::{extract_buffers, extract_data, Payload};
use super::class::{fork_generation, PyUringStorageIo};
use super::errors::UringUnavailableError;
use super::module::new_instance_id;
use super::values::{PyIoFd, PyIoUringConfig, PyRingMode};
use crate::backend::{Request, UringBackend};
use crate::config::RingMode;
use crate::waiters::{CloseDeadlines, Shared, WaitError};

#[pymethods]
impl PyUringStorageIo {
    /// Opens an io_uring instance with `config` (an IoUringConfig; None: the defaults).
    /// `core_id` is the CPU its SQPOLL kernel thread runs on, unless config.sqpoll_cpu names
    /// another; None leaves the thread to the scheduler. A STANDARD ring has no such thread,
    /// so there core_id pins nothing; it never pins the caller's threads. Raises
    /// UringUnavailableError saying why when io_uring cannot be used here, ValueError for an
    /// invalid config or a core_id that is not an online CPU.
    #[new]
    #[pyo3(signature = (core_id = None, config = None))]
    fn new(
        py: Python<'_>,
        core_id: Option<&Bound<'_, PyAny>>,
        config: Option<PyRef<'_, PyIoUringConfig>>,
    ) -> PyResult<Self> {
        let core_id: Option<u32> = core_id.map(|v| config_int("core_id", v)).transpose()?;
        let config = config.map(|c| c.inner.clone()).unwrap_or_default();
        config.validate().map_err(|e| PyValueError::new_err(e.0))?;
        let ring_config = config
            .for_core(core_id)
            .map_err(|e| PyValueError::new_err(e.0))?;
        let owner = new_instance_id();
        let born = fork_generation();
        // The ring manager records the core as a plain number; the pinning is in ring_config.
        let manager_core = core_id.map_or(0, |c| c as usize);
        let backend = py
            .detach(|| UringBackend::new(manager_core, &ring_config, owner))
            .map_err(|e| UringUnavailableError::new_err(e.0))?;
        Ok(Self {
            mode: backend.manager().mode(),
            fallback_reason: backend.manager().fallback_reason().map(str::to_string),
            shared: Shared::new(backend),
            born_in_fork_generation: born,
            core_id,
            config,
        })
    }

    /// Registers a file, pipe or socket (an int descriptor or anything with fileno())
    /// and returns the IoFd the submit_* calls take. The backend keeps its own
    /// descriptor; the file's append position starts at its size. A directory raises
    /// ValueError.
    fn register_fd(&self, py: Python<'_>, file: &Bound<'_, PyAny>) -> PyResult<PyIoFd> {
        let flushes = self.call(py, |b| Ok(b.flushes_in_background()))?;
        let raw = file_descriptor(file)?;
        // Duplicating or reopening the descriptor (through /proc/self/fd, which can wait on
        // NFS or FUSE) holds neither the GIL nor the instance.
        let prepared = py
            .detach(|| crate::backend::prepare_registration(raw, flushes))
            .map_err(super::call_error::CallError::from)?;
        let h = self.call(py, |b| Ok(b.register_prepared(prepared)?))?;
        Ok(PyIoFd {
            owner: h.owner,
            slot: h.slot,
            generation: h.generation,
        })
    }

    /// Waits (without the GIL) for the file's operations in flight, then closes the
    /// backend's descriptor; their completions stay queued. The IoFd is dead afterwards.
    fn deregister_fd(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<()> {
        let handle = self.handle(py, fd)?;
        Ok(self.blocking(py, |s| s.deregister_fd(handle))?)
    }

    /// Submits a write of `data` (any bytes-like object, copied before returning) at
    /// byte `offset`; returns its token. Ignored offset on a pipe or socket.
    pub(super) fn submit_write(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        Ok(self.submit_payload(py, fd, extract_data(data).map(Payload::One), Some(offset))?)
    }

    /// Submits a write of `data` at the file's append position, which advances by
    /// len(data) now; returns its token.
    pub(super) fn submit_append(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        Ok(self.submit_payload(py, fd, extract_data(data).map(Payload::One), None)?)
    }

    /// One write of the concatenation of `buffers` at `offset`, under one token.
    fn submit_writev(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        Ok(self.submit_payload(py, fd, extract_buffers(buffers), Some(offset))?)
    }

    /// One append of the concatenation of `buffers`, under one token.
    fn submit_appendv(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        Ok(self.submit_payload(py, fd, extract_buffers(buffers), None)?)
    }

    /// Submits an fdatasync of the file; returns its token. It completes only after every
    /// earlier write and append to the file; result 0 means they are durable.
    pub(super) fn submit_datasync(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<u64> {
        let handle = self.handle(py, fd)?;
        Ok(self.submit_with_room(py, (0, true), |b| Ok(b.submit_datasync(handle)?))?)
    }

    /// Submits a read of up to `length` bytes at `offset` (ignored on a pipe or socket);
    /// returns its token. The completion's `data` holds the bytes read, fewer than
    /// `length` only at the end of the file. It sees every write to the file submitted
    /// before it.
    fn submit_read(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        length: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let handle = self.handle(py, fd)?;
        let length = extract_length(length);
        let offset = extract_offset(offset);
        Ok(self.submit_with_room(py, (0, true), |b| {
            b.check_handle(handle)?;
            let length = length.as_ref().map_err(|e| e.clone_ref(py))?;
            let offset = offset.as_ref().map_err(|e| e.clone_ref(py))?;
            Ok(b.submit_read(handle, *length, *offset)?)
        })?)
    }

    /// Hands queued submissions to the kernel now; returns how many submit_* calls were
    /// made since the previous flush(), poll_completions(), wait() or wait_for(). A batch
    /// of appends with nothing of its file in flight before it is written by this thread
    /// (a copy into the page cache, never a wait for the disk), which spares the wait()
    /// that follows a trip through a kernel worker.
    fn flush(&self, py: Python<'_>) -> PyResult<usize> {
        self.check_open()?;
        Ok(self.blocking(py, |s| s.flush())?)
    }

    /// Returns the completions that are ready (possibly none); never blocks.
    fn poll_completions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let ready = self.blocking(py, |s| {
            let mut out = Vec::new();
            s.access().poll(&mut out)?;
            Ok(out)
        })?;
        Self::completions(py, ready)
    }

    /// Flushes, then blocks (without the GIL) until at least `min_complete` completions
    /// are ready or `timeout` seconds pass, and returns all the ready ones. Completions
    /// a wait_for() is waiting for are never among them.
    #[pyo3(
        signature = (min_complete = None, timeout = None),
        text_signature = "($self, min_complete=1, timeout=None)"
    )]
    fn wait<'py>(
        &self,
        py: Python<'py>,
        min_complete: Option<&Bound<'py, PyAny>>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.check_open()?;
        let min_complete: usize = min_complete.map_or(Ok(1), |v| config_int("min_complete", v))?;
        let deadline = deadline_from(timeout)?;
        let mut out = Vec::new();
        self.blocking(py, |s| s.wait(min_complete, deadline, &mut out))?;
        Self::completions(py, out)
    }

    /// Blocks (without the GIL) until every token in `tokens` has completed, and returns
    /// exactly their completions, in the order of `tokens`; other completions stay
    /// queued. A token that is unknown, already handed back, listed twice or waited for
    /// by another wait_for() raises ValueError. After `timeout` seconds it raises
    /// TimeoutError and hands back nothing (timeout=0 makes it a non-blocking probe).
    #[pyo3(signature = (tokens, timeout = None))]
    fn wait_for<'py>(
        &self,
        py: Python<'py>,
        tokens: &Bound<'py, PyAny>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.check_open()?;
        let tokens = extract_tokens(tokens)?;
        let deadline = deadline_from(timeout)?;
        self.blocking(py, |s| s.claim(&tokens))?;
        let result = self.blocking(py, |s| match s.wait_claimed(&tokens, deadline) {
            Err(WaitError::TimedOut) => Ok(None),
            other => other.map(Some),
        });
        match result {
            Ok(Some(done)) => Self::completions(py, done),
            Ok(None) => {
                let finished = py.detach(|| self.shared.withdraw(&tokens));
                let shown = timeout.map_or_else(|| "None".to_string(), |t| t.to_string());
                Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                    "wait_for: {} of {} tokens still not complete after {shown} s",
                    tokens.len() - finished,
                    tokens.len()
                )))
            }
            Err(e) => {
                py.detach(|| self.shared.withdraw(&tokens));
                Err(e.into())
            }
        }
    }

    /// As submit_write, but never waits (for an event loop): without room the write
    /// waits in the instance, with its own copy of the bytes, and goes to the kernel in
    /// call order as completions make room (at the latest in close()). Its completion is
    /// handed back by take_nowait_completions() only. Raises QueueFullError, accepting
    /// nothing, once the queued operations hold 256 MiB.
    fn submit_write_nowait(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let payload = extract_data(data).map(Payload::One);
        Ok(self.submit_payload_nowait(py, fd, payload, Some(offset))?)
    }

    /// As submit_append, never waiting (see submit_write_nowait).
    fn submit_append_nowait(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let payload = extract_data(data).map(Payload::One);
        Ok(self.submit_payload_nowait(py, fd, payload, None)?)
    }

    /// As submit_writev, never waiting (see submit_write_nowait).
    fn submit_writev_nowait(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        Ok(self.submit_payload_nowait(py, fd, extract_buffers(buffers), Some(offset))?)
    }

    /// As submit_appendv, never waiting (see submit_write_nowait).
    fn submit_appendv_nowait(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        Ok(self.submit_payload_nowait(py, fd, extract_buffers(buffers), None)?)
    }

    /// As submit_datasync, never waiting (see submit_write_nowait).
    fn submit_datasync_nowait(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<u64> {
        let handle = self.handle(py, fd)?;
        Ok(self.call(py, |b| Ok(b.submit_nowait(handle, &Request::Datasync)?))?)
    }

    /// As submit_read, never waiting (see submit_write_nowait).
    fn submit_read_nowait(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        length: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let handle = self.handle(py, fd)?;
        let length = extract_length(length);
        let offset = extract_offset(offset);
        Ok(self.call(py, |b| {
            b.check_handle(handle)?;
            let len = *length.as_ref().map_err(|e| e.clone_ref(py))?;
            let offset = *offset.as_ref().map_err(|e| e.clone_ref(py))?;
            Ok(b.submit_nowait(handle, &Request::Read { len, offset })?)
        })?)
    }

    /// Hands back the completions of the submit_*_nowait calls that are ready (possibly
    /// none); never blocks. Completions of other submissions are never among them, and
    /// poll_completions() and wait() never hand these back.
    fn take_nowait_completions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let ready = self.blocking(py, |s| {
            let mut out = Vec::new();
            s.access().take_nowait(&mut out)?;
            Ok(out)
        })?;
        Self::completions(py, ready)
    }

    /// Make the kernel signal the eventfd `fd` for every completion it posts, so that an
    /// event loop can watch it (storage_io.aio does). Read the eventfd, then call
    /// poll_completions() until it returns nothing: a completion arriving after the read
    /// signals the eventfd again. The ring keeps its own reference to the eventfd.
    /// Raises OSError (EBUSY) if one is registered already, (EBADF/EINVAL) if `fd` is
    /// not an eventfd.
    fn register_eventfd(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<()> {
        let raw = file_descriptor(fd)?;
        Ok(self.call(py, |b| Ok(b.register_eventfd(raw)?))?)
    }

    /// Stop signalling the eventfd registered with register_eventfd(). Raises OSError
    /// (ENXIO) if none is registered.
    fn unregister_eventfd(&self, py: Python<'_>) -> PyResult<()> {
        Ok(self.call(py, |b| Ok(b.unregister_eventfd()?))?)
    }

    /// How many submitted operations have not been handed back yet.
    fn pending_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.call(py, |b| Ok(b.pending_count()))?)
    }

    /// Waits (without the GIL) for everything in flight, then releases the ring, buffers
    /// and descriptors. Work on regular files is waited for; work on pipes and sockets for
    /// 2 s, then cancelled. With `timeout` (seconds), everything still in flight then is
    /// cancelled. Ctrl-C interrupts the wait (call close() again to go on). Closing twice
    /// is harmless; threads waiting in wait() or wait_for() get ClosedError.
    #[pyo3(signature = (timeout = None))]
    fn close(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let deadlines = CloseDeadlines::starting_now(deadline_from(timeout)?);
        Ok(self.blocking(py, |s| s.close(deadlines))?)
    }

    /// Returns the instance itself: `with UringStorageIo() as io:` closes it at the end.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the instance (see close()); exceptions propagate.
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py, None)?;
        Ok(false)
    }

    /// True: this backend offers the submit_*_nowait calls, take_nowait_completions() and
    /// register_eventfd(), so an event loop can drive it without a thread
    /// (storage_io.aio does).
    #[classattr]
    fn supports_nowait() -> bool {
        true
    }

    /// "uring-sqpoll" or "uring": the ring mode this instance got.
    #[getter]
    fn backend(&self) -> &'static str {
        match self.mode {
            RingMode::Sqpoll => "uring-sqpoll",
            RingMode::Standard => "uring",
        }
    }

    /// The ring mode this instance got (SQPOLL may fall back to STANDARD).
    #[getter]
    fn mode(&self) -> PyRingMode {
        self.mode.into()
    }

    /// Why the instance is not in the mode asked for (SQPOLL refused), or None.
    #[getter]
    fn fallback_reason(&self) -> Option<String> {
        self.fallback_reason.clone()
    }

    /// The core_id given at construction: the CPU the SQPOLL thread runs on unless
    /// config.sqpoll_cpu names another, or None.
    #[getter]
    fn core_id(&self) -> Option<u32> {
        self.core_id
    }

    /// The IoUringConfig this instance was built with.
    #[getter]
    fn config(&self) -> PyIoUringConfig {
        PyIoUringConfig {
            inner: self.config.clone(),
        }
    }

    /// True once close() has started, or in a child that inherited the instance across
    /// fork(). Never blocks.
    #[getter]
    fn closed(&self) -> bool {
        self.inherited() || self.shared.is_closed()
    }

    /// Counters of this instance: the caller's operations (submitted, completed, failed,
    /// bytes_written) and how they travelled (ring operations, syscalls, SQEs...).
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (m, ops, (syncs_in_caller, writes_in_caller), syncs_joined) = self.call(py, |b| {
            Ok((
                b.metrics(),
                b.operation_counts(),
                b.work_in_caller(),
                b.datasyncs_joined(),
            ))
        })?;
        let d = PyDict::new(py);
        // The caller's operations (tokens), as on every backend.
        d.set_item("submitted", ops.submitted)?;
        d.set_item("completed", ops.completed)?;
        d.set_item("failed", ops.failed)?;
        d.set_item("bytes_written", ops.bytes_written)?;
        d.set_item("bytes_read", ops.bytes_read)?;
        // How they travelled: ring operations (a batch of combined writes is one),
        // their summed time from submission to completion, syscalls, SQEs.
        d.set_item("ring_operations", m.completed)?;
        d.set_item("ring_latency_ns_total", m.latency_ns_total)?;
        d.set_item("sqes_submitted", m.sqes_submitted)?;
        d.set_item("short_writes_continued", m.short_writes_continued)?;
        d.set_item("cancelled_reissued", m.cancelled_reissued)?;
        d.set_item("datasyncs_in_caller", syncs_in_caller)?;
        d.set_item("writes_in_caller", writes_in_caller)?;
        // Datasyncs that completed with an fdatasync made for another of the same file.
        d.set_item("datasyncs_joined", syncs_joined)?;
        d.set_item("enter_calls", m.enter_calls)?;
        d.set_item("background_flushes", m.background_flushes)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "UringStorageIo(backend='{}', core_id={}, closed={})",
            self.backend(),
            self.core_id
                .map_or_else(|| "None".to_string(), |c| c.to_string()),
            if self.closed() { "True" } else { "False" }
        )
    }
}
