//! The value types `storage_io._native` hands out and takes: `RingMode`, `IoUringConfig`
//! (checked by `config::IoUringConfig::validate`), `IoFd` and `IoCompletion`.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::arguments::config_int;
use super::errors::strerror;
use crate::config::{IoUringConfig, RingMode};

/// How submissions reach the kernel: STANDARD (an io_uring_enter per batch, at flush, poll
/// and wait) or SQPOLL (a kernel thread polls the queue; it takes a CPU while it polls).
#[pyclass(name = "RingMode", module = "storage_io", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PyRingMode {
    #[pyo3(name = "STANDARD")]
    Standard,
    #[pyo3(name = "SQPOLL")]
    Sqpoll,
}

#[pymethods]
impl PyRingMode {
    #[getter]
    fn name(&self) -> &'static str {
        RingMode::from(*self).name()
    }
}

impl From<PyRingMode> for RingMode {
    fn from(m: PyRingMode) -> Self {
        match m {
            PyRingMode::Standard => RingMode::Standard,
            PyRingMode::Sqpoll => RingMode::Sqpoll,
        }
    }
}

impl From<RingMode> for PyRingMode {
    fn from(m: RingMode) -> Self {
        match m {
            RingMode::Standard => PyRingMode::Standard,
            RingMode::Sqpoll => PyRingMode::Sqpoll,
        }
    }
}

/// Settings of one io_uring instance; a field left out (or None) takes its default.
///
/// Defaults: ring_entries=256, mode=RingMode.SQPOLL (open_storage_io() without a config
/// picks the mode for the machine instead), sqpoll_idle_ms=1000, sqpoll_cpu=None,
/// buffer_size=65536, buffer_count=256, max_files=64, background_flush_bytes=1048576 (0 turns
/// background flushing off; see the README). A value out of range raises ValueError naming
/// the field (and, where one can be given, the allowed range).
#[pyclass(name = "IoUringConfig", module = "storage_io", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyIoUringConfig {
    pub(super) inner: IoUringConfig,
}

#[pymethods]
impl PyIoUringConfig {
    #[new]
    #[pyo3(signature = (
        ring_entries = None, mode = None, sqpoll_idle_ms = None, sqpoll_cpu = None,
        buffer_size = None, buffer_count = None, max_files = None, background_flush_bytes = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        ring_entries: Option<&Bound<'_, PyAny>>,
        mode: Option<PyRef<'_, PyRingMode>>,
        sqpoll_idle_ms: Option<&Bound<'_, PyAny>>,
        sqpoll_cpu: Option<&Bound<'_, PyAny>>,
        buffer_size: Option<&Bound<'_, PyAny>>,
        buffer_count: Option<&Bound<'_, PyAny>>,
        max_files: Option<&Bound<'_, PyAny>>,
        background_flush_bytes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let d = IoUringConfig::default();
        let inner = IoUringConfig {
            ring_entries: ring_entries
                .map_or(Ok(d.ring_entries), |v| config_int("ring_entries", v))?,
            mode: mode.map_or(d.mode, |m| RingMode::from(*m)),
            sqpoll_idle_ms: sqpoll_idle_ms
                .map_or(Ok(d.sqpoll_idle_ms), |v| config_int("sqpoll_idle_ms", v))?,
            sqpoll_cpu: sqpoll_cpu
                .map(|v| config_int("sqpoll_cpu", v))
                .transpose()?,
            buffer_size: buffer_size.map_or(Ok(d.buffer_size), |v| config_int("buffer_size", v))?,
            buffer_count: buffer_count
                .map_or(Ok(d.buffer_count), |v| config_int("buffer_count", v))?,
            max_files: max_files.map_or(Ok(d.max_files), |v| config_int("max_files", v))?,
            background_flush_bytes: background_flush_bytes
                .map_or(Ok(d.background_flush_bytes), |v| {
                    config_int("background_flush_bytes", v)
                })?,
        };
        inner.validate().map_err(|e| PyValueError::new_err(e.0))?;
        Ok(Self { inner })
    }

    /// Submission queue entries of the ring.
    #[getter]
    fn ring_entries(&self) -> u32 {
        self.inner.ring_entries
    }
    /// The ring mode asked for: RingMode.STANDARD or RingMode.SQPOLL.
    #[getter]
    fn mode(&self) -> PyRingMode {
        self.inner.mode.into()
    }
    /// How long the SQPOLL thread polls an idle queue before it sleeps, in milliseconds.
    #[getter]
    fn sqpoll_idle_ms(&self) -> u32 {
        self.inner.sqpoll_idle_ms
    }
    /// The CPU the SQPOLL thread is pinned to, or None (not pinned).
    #[getter]
    fn sqpoll_cpu(&self) -> Option<u32> {
        self.inner.sqpoll_cpu
    }
    /// Bytes in each registered buffer (a multiple of 4096).
    #[getter]
    fn buffer_size(&self) -> usize {
        self.inner.buffer_size
    }
    /// Number of registered buffers in the pool.
    #[getter]
    fn buffer_count(&self) -> usize {
        self.inner.buffer_count
    }
    /// Slots in the fixed-file table: how many files may be registered at once.
    #[getter]
    fn max_files(&self) -> u32 {
        self.inner.max_files
    }
    /// Completed bytes of one file after which the backend flushes them in the background (0: never).
    #[getter]
    fn background_flush_bytes(&self) -> usize {
        self.inner.background_flush_bytes
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "IoUringConfig(ring_entries={}, mode=RingMode.{}, sqpoll_idle_ms={}, sqpoll_cpu={}, \
             buffer_size={}, buffer_count={}, max_files={}, background_flush_bytes={})",
            c.ring_entries,
            c.mode.name(),
            c.sqpoll_idle_ms,
            c.sqpoll_cpu.map_or("None".to_string(), |v| v.to_string()),
            c.buffer_size,
            c.buffer_count,
            c.max_files,
            c.background_flush_bytes
        )
    }
}

/// The opaque handle `register_fd` returns: the instance it belongs to (`owner`), its slot
/// in the instance's file table and the slot's generation (so a handle kept after
/// `deregister_fd` is recognised as stale). Pass it to the submit_* calls as it is.
#[pyclass(name = "IoFd", module = "storage_io", frozen, eq, hash)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PyIoFd {
    #[pyo3(get)]
    pub(super) owner: u64,
    #[pyo3(get)]
    pub(super) slot: u32,
    #[pyo3(get)]
    pub(super) generation: u32,
}

#[pymethods]
impl PyIoFd {
    #[new]
    fn new(owner: u64, slot: u32, generation: u32) -> Self {
        Self {
            owner,
            slot,
            generation,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "IoFd(owner={}, slot={}, generation={})",
            self.owner, self.slot, self.generation
        )
    }
}

/// One finished operation, as poll_completions(), wait() and wait_for() hand it back.
///
/// `token`: what submit_* returned. `result`: bytes written or read, 0 for a datasync, or a
/// negative errno. `ok`: result >= 0. `error`: an OSError with that errno, or None. `data`:
/// the bytes a read returned (len(data) == result), None for every other operation.
/// `check()` returns the completion when ok and raises its error otherwise.
#[pyclass(name = "IoCompletion", module = "storage_io", frozen)]
pub struct PyIoCompletion {
    #[pyo3(get)]
    pub(super) token: u64,
    #[pyo3(get)]
    pub(super) result: i64,
    pub(super) data: Option<Py<PyBytes>>,
}

#[pymethods]
impl PyIoCompletion {
    #[new]
    #[pyo3(signature = (token, result, data = None))]
    fn new(token: u64, result: i64, data: Option<Bound<'_, PyBytes>>) -> Self {
        Self {
            token,
            result,
            data: data.map(Bound::unbind),
        }
    }

    /// True when the operation succeeded (result >= 0).
    #[getter]
    fn ok(&self) -> bool {
        self.result >= 0
    }

    /// The bytes a read returned (`bytes`, len == result); None for writes and datasyncs.
    #[getter]
    fn data(&self, py: Python<'_>) -> Option<Py<PyBytes>> {
        self.data.as_ref().map(|d| d.clone_ref(py))
    }

    /// An OSError carrying the errno of a failed operation, or None.
    #[getter]
    fn error(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        if self.result >= 0 {
            return None;
        }
        Some(self.os_error().into_value(py).into_any())
    }

    /// Returns this completion if it succeeded; raises its error (an OSError) otherwise.
    fn check(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        if slf.get().result >= 0 {
            Ok(slf)
        } else {
            Err(slf.get().os_error())
        }
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> Py<PyAny> {
        let Ok(other) = other.cast::<PyIoCompletion>() else {
            return py.NotImplemented();
        };
        let other = other.get();
        let same_data = match (&self.data, &other.data) {
            (None, None) => true,
            (Some(a), Some(b)) => a.bind(py).as_bytes() == b.bind(py).as_bytes(),
            _ => false,
        };
        let same = self.token == other.token && self.result == other.result && same_data;
        pyo3::types::PyBool::new(py, same)
            .to_owned()
            .into_any()
            .unbind()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let mut text = format!("IoCompletion(token={}, result={}", self.token, self.result);
        if self.result < 0 {
            let errno = i32::try_from(-self.result).unwrap_or(libc::EIO);
            text += &format!(", error={:?}", strerror(errno));
        }
        if let Some(data) = &self.data {
            let data = data.bind(py);
            if data.as_bytes().len() <= 32 {
                let shown = data
                    .repr()
                    .map_or_else(|_| "?".to_string(), |r| r.to_string());
                text += &format!(", data={shown}");
            } else {
                text += &format!(", data=<{} bytes>", data.as_bytes().len());
            }
        }
        text + ")"
    }
}

impl PyIoCompletion {
    fn os_error(&self) -> PyErr {
        let errno = i32::try_from(-self.result).unwrap_or(libc::EIO);
        PyOSError::new_err((errno, strerror(errno)))
    }
}

/// An `IoCompletion` built for handing back in bulk. It can never be part of a reference
/// cycle: untracking it spares the cyclic GC from
/// traversing every completion (measured: GC was ~10% of a W5 run's CPU before).
pub(super) fn new_completion(
    py: Python<'_>,
    token: u64,
    result: i64,
    data: Option<Vec<u8>>,
) -> PyResult<Bound<'_, PyIoCompletion>> {
    let data = data.map(|d| PyBytes::new(py, &d).unbind());
    let completion = Bound::new(
        py,
        PyIoCompletion {
            token,
            result,
            data,
        },
    )?;
    // SAFETY: `completion` is a live object we own. PyObject_GC_IsTracked answers 0 for an
    // object whose type has no GC header, and UnTrack is called only on one that has it and
    // is tracked. Its only reference is to a bytes object, which refers to nothing, so it
    // can never be part of a cycle; untracking it is sound, and its dealloc copes with it
    // untracked.
    unsafe {
        if ffi::PyObject_GC_IsTracked(completion.as_ptr()) == 1 {
            ffi::PyObject_GC_UnTrack(completion.as_ptr().cast());
        }
    }
    Ok(completion)
}
