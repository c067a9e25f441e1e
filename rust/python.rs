//! The PyO3 layer only: argument extraction, GIL release, error mapping. Semantics live in
//! `backend`; nothing here decides what an operation does.

use pyo3::exceptions::{PyException, PyOSError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList};
use pyo3::{create_exception, ffi};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{IoUringConfig, RingMode};

create_exception!(
    storage_io,
    StorageIoError,
    PyException,
    "Base of every storage_io error."
);
create_exception!(
    storage_io,
    QueueFullError,
    StorageIoError,
    "The submission queue is full."
);
create_exception!(
    storage_io,
    BadFdError,
    StorageIoError,
    "Not a live IoFd of this instance."
);
create_exception!(
    storage_io,
    ClosedError,
    StorageIoError,
    "The instance is closed."
);
create_exception!(
    storage_io,
    BufferExhaustedError,
    StorageIoError,
    "No registered buffer is free and none can come back."
);
create_exception!(
    storage_io,
    UringUnavailableError,
    StorageIoError,
    "io_uring cannot be used here; the message says why."
);

static NEXT_INSTANCE_ID: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique id for a backend instance (both backends take one), so a handle
/// from one instance is recognised as foreign by another.
#[pyfunction]
fn new_instance_id() -> u64 {
    NEXT_INSTANCE_ID.fetch_add(1, Ordering::Relaxed)
}

/// A new descriptor, owned by the caller, for writing to the file behind `fd` at explicit
/// offsets: a duplicate, or where `fd` has O_APPEND (which makes Linux ignore write
/// offsets) a reopening without it. Both backends keep one of these per registered file.
#[pyfunction]
fn descriptor_for_writes(py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<i32> {
    let raw = file_descriptor(fd)?;
    let owned = py
        .detach(|| crate::descriptor::descriptor_for_writes(raw))
        .map_err(|e| os_error(&e))?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(owned))
}

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
    inner: IoUringConfig,
}

/// An integer config field; a value no field could take is a ValueError naming the field.
fn config_int<T: TryFrom<i64>>(field: &str, value: &Bound<'_, PyAny>) -> PyResult<T> {
    if !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{field} must be an int, not {}",
            type_name(value)
        )));
    }
    value
        .extract::<i64>()
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| PyValueError::new_err(format!("{field}={value} is out of range")))
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
    owner: u64,
    #[pyo3(get)]
    slot: u32,
    #[pyo3(get)]
    generation: u32,
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
    token: u64,
    #[pyo3(get)]
    result: i64,
    data: Option<Py<PyBytes>>,
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

/// An OSError whose `errno` is set (so Python maps it to FileNotFoundError and friends).
fn os_error(err: &std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, strerror(errno))),
        None => {
            // An error of ours that explains an errno underneath it: keep both.
            let inner = err
                .get_ref()
                .and_then(|e| e.source())
                .and_then(|e| e.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error);
            match inner {
                Some(errno) => PyOSError::new_err((errno, err.to_string())),
                None => PyOSError::new_err(err.to_string()),
            }
        }
    }
}

/// An `IoCompletion` built for handing back in bulk. It can never be part of a reference
/// cycle: untracking it spares the cyclic GC from
/// traversing every completion (measured: GC was ~10% of a W5 run's CPU before).
fn new_completion(
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
    // SAFETY: `completion` is a live, GC-tracked object we own. Its only reference is to a
    // bytes object, which refers to nothing, so it can never be part of a cycle; untracking
    // it is sound, and its dealloc copes with it untracked.
    unsafe { ffi::PyObject_GC_UnTrack(completion.as_ptr().cast()) };
    Ok(completion)
}

fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// A borrowed view of any object with the buffer protocol, held until dropped.
///
/// The stable ABI declares PyObject_GetBuffer only from 3.11, but CPython has exported it,
/// with this `Py_buffer` layout, since 3.0, so a wheel built for 3.9 can still call it.
#[repr(C)]
struct RawBuffer {
    buf: *mut std::ffi::c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: std::ffi::c_int,
    ndim: std::ffi::c_int,
    format: *mut std::ffi::c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut std::ffi::c_void,
}

extern "C" {
    fn PyObject_GetBuffer(
        obj: *mut ffi::PyObject,
        view: *mut RawBuffer,
        flags: std::ffi::c_int,
    ) -> std::ffi::c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

struct BufferView {
    raw: RawBuffer,
}

impl BufferView {
    /// A C-contiguous view of `obj` (PyBUF_SIMPLE), or the error the object raised.
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut raw = std::mem::MaybeUninit::<RawBuffer>::zeroed();
        // SAFETY: `obj` is a live object (we hold the GIL and a reference); on success the
        // view is filled in and must be released exactly once, which Drop does.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), raw.as_mut_ptr(), 0) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: GetBuffer succeeded, so the struct is initialised.
        Ok(Self {
            raw: unsafe { raw.assume_init() },
        })
    }

    fn as_slice(&self) -> &[u8] {
        if self.raw.len == 0 || self.raw.buf.is_null() {
            return &[];
        }
        // SAFETY: a PyBUF_SIMPLE view is `len` contiguous bytes at `buf`, valid until the
        // view is released; the exporter cannot resize while the view is held.
        unsafe { std::slice::from_raw_parts(self.raw.buf.cast::<u8>(), self.raw.len as usize) }
    }
}

// SAFETY: the view pins its exporter's memory until release; reading the bytes from another
// thread while the GIL is released is what the buffer protocol permits for a held export.
unsafe impl Send for BufferView {}

impl Drop for BufferView {
    fn drop(&mut self) {
        // SAFETY: filled by a successful PyObject_GetBuffer and released only here. Drop runs
        // with the GIL held: views are created and dropped inside GIL-holding frames.
        unsafe { PyBuffer_Release(&mut self.raw) }
    }
}

/// The bytes of `data`, borrowed without a copy where the object allows it.
enum Data<'py> {
    Bytes(Bound<'py, PyBytes>),
    View(BufferView),
}

impl Data<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Data::Bytes(b) => b.as_bytes(),
            Data::View(v) => v.as_slice(),
        }
    }
}

fn extract_data<'py>(data: &Bound<'py, PyAny>) -> PyResult<Data<'py>> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(Data::Bytes(bytes.clone()));
    }
    match BufferView::get(data) {
        Ok(view) => Ok(Data::View(view)),
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyBufferError>(data.py()) => {
            // Bytes-like but not contiguous (a strided memoryview): take a contiguous copy.
            let copy = data.py().get_type::<PyBytes>().call1((data,))?;
            Ok(Data::Bytes(copy.cast_into::<PyBytes>()?))
        }
        Err(_) => Err(PyTypeError::new_err(format!(
            "data must be a bytes-like object (bytes, bytearray, memoryview, array...), not {}",
            type_name(data)
        ))),
    }
}

/// What a write carries: one bytes-like object, or several written back to back.
enum Payload<'py> {
    One(Data<'py>),
    Many(Vec<Data<'py>>),
}

impl Payload<'_> {
    fn len(&self) -> usize {
        match self {
            Payload::One(d) => d.as_slice().len(),
            Payload::Many(v) => v.iter().map(|d| d.as_slice().len()).sum(),
        }
    }

    fn with_slices<R>(&self, f: impl FnOnce(&[&[u8]]) -> R) -> R {
        match self {
            Payload::One(d) => f(&[d.as_slice()]),
            Payload::Many(v) => f(&v.iter().map(Data::as_slice).collect::<Vec<_>>()),
        }
    }
}

fn extract_buffers<'py>(buffers: &Bound<'py, PyAny>) -> PyResult<Payload<'py>> {
    if buffers.is_instance_of::<PyBytes>() || BufferView::get(buffers).is_ok() {
        return Err(PyTypeError::new_err(
            "buffers must be a sequence of bytes-like objects, not one bytes-like object \
             (use submit_write/submit_append for that)",
        ));
    }
    let items = buffers.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "buffers must be a sequence of bytes-like objects, not {}",
            type_name(buffers)
        ))
    })?;
    let mut parts = Vec::new();
    for item in items {
        parts.push(extract_data(&item?)?);
    }
    Ok(Payload::Many(parts))
}

fn extract_offset(offset: &Bound<'_, PyAny>) -> PyResult<u64> {
    if !offset.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "offset must be an int, not {}",
            type_name(offset)
        )));
    }
    match offset.extract::<i64>() {
        Ok(v) if v >= 0 => Ok(v as u64),
        _ => Err(PyValueError::new_err(format!(
            "offset={offset} is out of range: allowed 0..={}",
            i64::MAX
        ))),
    }
}

fn file_descriptor(file: &Bound<'_, PyAny>) -> PyResult<i32> {
    let number = if file.is_instance_of::<PyInt>() {
        file.clone()
    } else {
        match file.getattr("fileno") {
            Ok(method) => method.call0()?,
            Err(_) => {
                return Err(PyTypeError::new_err(format!(
                    "file must be an int descriptor or have fileno(), not {}",
                    type_name(file)
                )))
            }
        }
    };
    if !number.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "fileno() must return an int, not {}",
            type_name(&number)
        )));
    }
    number
        .extract::<i32>()
        .map_err(|_| PyValueError::new_err(format!("file descriptor {number} is out of range")))
}

#[cfg(target_os = "linux")]
mod uring {
    use super::*;
    use crate::backend::{BackendError, Completion, Handle, UringBackend};
    use crate::fastcall::{self, FastMethod};
    use crate::waiters::{Shared, WaitError};
    use std::sync::Once;
    use std::time::Instant;

    /// Bumped in every child after fork(): an instance remembers the value it was made under,
    /// and a mismatch means "inherited from a parent", whose ring this process must not drive.
    static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
    static WATCH_FORKS: Once = Once::new();

    extern "C" fn after_fork_in_child() {
        FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
    }

    fn fork_generation() -> u64 {
        WATCH_FORKS.call_once(|| {
            // SAFETY: registers a handler that only touches an atomic, which is
            // async-signal-safe as fork handlers must be.
            unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        });
        FORK_GENERATION.load(Ordering::SeqCst)
    }

    /// A failure of a call, before or inside the backend.
    enum CallError {
        Backend(BackendError),
        Python(PyErr),
        Closed,
    }

    impl From<BackendError> for CallError {
        fn from(e: BackendError) -> Self {
            CallError::Backend(e)
        }
    }

    impl From<std::io::Error> for CallError {
        fn from(e: std::io::Error) -> Self {
            CallError::Backend(BackendError::Os(e))
        }
    }

    impl From<PyErr> for CallError {
        fn from(e: PyErr) -> Self {
            CallError::Python(e)
        }
    }

    impl From<WaitError> for CallError {
        fn from(e: WaitError) -> Self {
            match e {
                WaitError::Closed => CallError::Closed,
                WaitError::Backend(b) => CallError::Backend(b),
                WaitError::Claim(c) => CallError::Python(PyValueError::new_err(c.to_string())),
                // Callers handle these two themselves; reaching here is a bug of ours.
                WaitError::Interrupted | WaitError::TimedOut => {
                    CallError::Python(PyTimeoutError::new_err("interrupted wait was not retried"))
                }
            }
        }
    }

    impl From<CallError> for PyErr {
        fn from(e: CallError) -> PyErr {
            match e {
                CallError::Closed => ClosedError::new_err("this StorageIo instance is closed"),
                CallError::Python(err) => err,
                CallError::Backend(BackendError::BadFd(m)) => BadFdError::new_err(m),
                CallError::Backend(BackendError::BufferExhausted(m)) => {
                    BufferExhaustedError::new_err(m)
                }
                CallError::Backend(BackendError::QueueFull(m)) => QueueFullError::new_err(m),
                CallError::Backend(BackendError::TooManyFiles(m)) => StorageIoError::new_err(m),
                CallError::Backend(BackendError::Invalid(m)) => PyValueError::new_err(m),
                CallError::Backend(BackendError::NoRoom) => {
                    BufferExhaustedError::new_err("no registered buffer is free")
                }
                CallError::Backend(BackendError::Os(err)) => os_error(&err),
            }
        }
    }

    type CallResult<T> = Result<T, CallError>;

    /// A `timeout` argument: None, or a number of seconds (int or float), the same checks
    /// and messages as the sync backend. Returns the deadline (None: no limit).
    fn deadline_from(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Instant>> {
        let Some(timeout) = timeout.filter(|t| !t.is_none()) else {
            return Ok(None);
        };
        let is_number =
            timeout.is_instance_of::<PyInt>() || timeout.is_instance_of::<pyo3::types::PyFloat>();
        if !is_number {
            return Err(PyTypeError::new_err(format!(
                "timeout must be None or a number of seconds, not {}",
                type_name(timeout)
            )));
        }
        let seconds: f64 = timeout.extract().unwrap_or(f64::INFINITY);
        if !(seconds >= 0.0 && seconds.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "timeout={} is out of range: allowed None or a finite number >= 0",
                timeout.str()?
            )));
        }
        // A timeout too long to represent waits as long as no timeout does.
        Ok(Duration::try_from_secs_f64(seconds)
            .ok()
            .and_then(|d| Instant::now().checked_add(d)))
    }

    /// The tokens of a wait_for() call, checked for type.
    fn extract_tokens(tokens: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
        let items = tokens.try_iter().map_err(|_| {
            PyTypeError::new_err(format!(
                "tokens must be an iterable of tokens (ints), not {}",
                type_name(tokens)
            ))
        })?;
        let mut out = Vec::new();
        for item in items {
            let item = item?;
            if !item.is_instance_of::<PyInt>() {
                return Err(PyTypeError::new_err(format!(
                    "a token must be an int, not {}",
                    type_name(&item)
                )));
            }
            // A negative or huge int was never a token: say so as for any unknown one.
            out.push(item.extract::<u64>().map_err(|_| {
                PyValueError::new_err(
                    crate::backend::ClaimError::NotOutstanding(0)
                        .to_string()
                        .replacen('0', &item.to_string(), 1),
                )
            })?);
        }
        Ok(out)
    }

    fn extract_length(length: &Bound<'_, PyAny>) -> PyResult<usize> {
        if !length.is_instance_of::<PyInt>() {
            return Err(PyTypeError::new_err(format!(
                "length must be an int, not {}",
                type_name(length)
            )));
        }
        match length.extract::<i64>() {
            Ok(v) if v >= 0 => Ok(v as usize),
            _ => Err(PyValueError::new_err(format!(
                "length={length} is out of range: allowed 0..={}",
                i64::MAX
            ))),
        }
    }

    /// The io_uring backend: one ring per instance ("per core"), registered buffers and
    /// files, an optional SQPOLL kernel thread. Every method is documented on
    /// storage_io.StorageIo (help(storage_io.StorageIo)) and in the README.
    ///
    /// One instance may be shared by threads: no call holds the instance while it sleeps,
    /// so a thread waiting in wait() or wait_for() holds up nobody's submissions.
    #[pyclass(name = "UringStorageIo", module = "storage_io", frozen)]
    pub struct PyUringStorageIo {
        shared: std::sync::Arc<Shared>,
        born_in_fork_generation: u64,
        core_id: usize,
        config: IoUringConfig,
        mode: RingMode,
        fallback_reason: Option<String>,
    }

    impl PyUringStorageIo {
        fn inherited(&self) -> bool {
            fork_generation() != self.born_in_fork_generation
        }

        fn check_not_inherited(&self) -> CallResult<()> {
            if self.inherited() {
                return Err(CallError::Python(ClosedError::new_err(
                    "this StorageIo instance was inherited across fork(); it belongs to the \
                     parent process: create a new instance in the child",
                )));
            }
            Ok(())
        }

        /// Checks that the instance is usable (not inherited, not closed) without waiting.
        fn check_open(&self) -> CallResult<()> {
            self.check_not_inherited()?;
            if self.shared.is_closed() {
                return Err(CallError::Closed);
            }
            Ok(())
        }

        /// Runs `f` on the backend with the GIL held: for calls that never sleep. The lock
        /// is only ever held for bookkeeping; when another thread has it, wait for it without
        /// the GIL, then try again.
        fn call<R>(
            &self,
            py: Python<'_>,
            f: impl FnOnce(&mut UringBackend) -> CallResult<R>,
        ) -> CallResult<R> {
            self.check_not_inherited()?;
            loop {
                if let Some(access) = self.shared.try_access() {
                    let mut failure = None;
                    let result = access.run(|b| match f(b) {
                        Ok(v) => Ok(Some(v)),
                        Err(CallError::Backend(e)) => Err(e),
                        Err(other) => {
                            failure = Some(other);
                            Ok(None)
                        }
                    });
                    return match (result, failure) {
                        (_, Some(e)) => Err(e),
                        (Ok(Some(v)), None) => Ok(v),
                        (Ok(None), None) => unreachable!("no value without a failure"),
                        (Err(e), None) => Err(e.into()),
                    };
                }
                py.detach(|| drop(self.shared.access()));
            }
        }

        /// Runs a call that may wait, with the GIL released; a signal (or a slice of a
        /// long wait) comes back here so that Python runs its handlers, which may raise
        /// (KeyboardInterrupt), and the call goes on otherwise.
        fn blocking<R: Send>(
            &self,
            py: Python<'_>,
            mut f: impl FnMut(&Shared) -> Result<R, WaitError> + Send,
        ) -> CallResult<R> {
            self.check_not_inherited()?;
            loop {
                match py.detach(|| f(&self.shared)) {
                    Err(WaitError::Interrupted) => py.check_signals()?,
                    other => return Ok(other?),
                }
            }
        }

        fn handle(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> CallResult<Handle> {
            match fd.cast::<PyIoFd>() {
                Ok(h) => {
                    let h = h.get();
                    Ok(Handle {
                        owner: h.owner,
                        slot: h.slot,
                        generation: h.generation,
                    })
                }
                Err(_) => {
                    // Closed wins over a bad handle, as for every other check.
                    self.call(py, |_| Ok(()))?;
                    Err(BackendError::BadFd(format!(
                        "expected an IoFd from register_fd(), got {}",
                        type_name(fd)
                    ))
                    .into())
                }
            }
        }

        /// Runs a submission, waiting (GIL released) for room when there is none:
        /// `room` = (bytes of the write, whether it is a held datasync or read).
        fn submit_with_room(
            &self,
            py: Python<'_>,
            room: (usize, bool),
            mut f: impl FnMut(&mut UringBackend) -> CallResult<u64>,
        ) -> CallResult<u64> {
            loop {
                match self.call(py, &mut f) {
                    Err(CallError::Backend(BackendError::NoRoom)) => {
                        self.blocking(py, |s| s.make_room(room.0, room.1))?;
                    }
                    other => return other,
                }
            }
        }

        /// Submits a write with the given placement.
        fn submit_payload(
            &self,
            py: Python<'_>,
            fd: &Bound<'_, PyAny>,
            payload: PyResult<Payload<'_>>,
            offset: Option<&Bound<'_, PyAny>>,
        ) -> CallResult<u64> {
            let handle = self.handle(py, fd)?;
            let offset = offset.map(extract_offset);
            let len = payload.as_ref().map_or(0, Payload::len);
            self.submit_with_room(py, (len, false), |backend| {
                backend.check_handle(handle)?;
                let payload = payload
                    .as_ref()
                    .map_err(|e| CallError::Python(e.clone_ref(py)))?;
                payload.with_slices(|parts| match &offset {
                    Some(Ok(at)) => Ok(backend.submit_writev(handle, parts, *at)?),
                    Some(Err(e)) => Err(CallError::Python(e.clone_ref(py))),
                    None => Ok(backend.submit_appendv(handle, parts)?),
                })
            })
        }

        fn completions(py: Python<'_>, ready: Vec<Completion>) -> PyResult<Bound<'_, PyList>> {
            let list = PyList::empty(py);
            for c in ready {
                list.append(new_completion(py, c.token, c.result, c.data)?)?;
            }
            Ok(list)
        }
    }

    #[pymethods]
    impl PyUringStorageIo {
        /// Opens an io_uring instance on `core_id` with `config` (an IoUringConfig; None:
        /// the defaults). Raises UringUnavailableError saying why when io_uring cannot be
        /// used here, ValueError for an invalid config.
        #[new]
        #[pyo3(signature = (core_id = None, config = None), text_signature = "(core_id=0, config=None)")]
        fn new(
            py: Python<'_>,
            core_id: Option<&Bound<'_, PyAny>>,
            config: Option<PyRef<'_, PyIoUringConfig>>,
        ) -> PyResult<Self> {
            let core_id: usize = core_id.map_or(Ok(0), |v| config_int("core_id", v))?;
            let config = config.map(|c| c.inner.clone()).unwrap_or_default();
            config.validate().map_err(|e| PyValueError::new_err(e.0))?;
            let owner = new_instance_id();
            let born = fork_generation();
            let backend = py
                .detach(|| UringBackend::new(core_id, &config, owner))
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
            self.call(py, |_| Ok(()))?;
            let raw = file_descriptor(file)?;
            let h = self.call(py, |b| Ok(b.register_fd(raw)?))?;
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
        fn submit_write(
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
        fn submit_append(
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
        fn submit_datasync(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<u64> {
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
        /// made since the previous flush(), poll_completions(), wait() or wait_for().
        fn flush(&self, py: Python<'_>) -> PyResult<usize> {
            self.check_open()?;
            Ok(self.blocking(py, |s| {
                s.access().run(|b| {
                    b.flush()?;
                    Ok(b.take_submit_count())
                })
            })?)
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
            let min_complete: usize =
                min_complete.map_or(Ok(1), |v| config_int("min_complete", v))?;
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
                    let finished = self.shared.withdraw(&tokens);
                    let shown = timeout.map_or_else(|| "None".to_string(), |t| t.to_string());
                    Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                        "wait_for: {} of {} tokens still not complete after {shown} s",
                        tokens.len() - finished,
                        tokens.len()
                    )))
                }
                Err(e) => {
                    self.shared.withdraw(&tokens);
                    Err(e.into())
                }
            }
        }

        /// How many submitted operations have not been handed back yet.
        fn pending_count(&self, py: Python<'_>) -> PyResult<usize> {
            Ok(self.call(py, |b| Ok(b.pending_count()))?)
        }

        /// Waits (without the GIL) for everything in flight, then releases the ring, buffers
        /// and descriptors. Closing twice is harmless; threads waiting in wait() or
        /// wait_for() get ClosedError.
        fn close(&self, py: Python<'_>) -> PyResult<()> {
            Ok(self.blocking(py, |s| s.close())?)
        }

        /// Returns the instance itself: `with UringStorageIo() as io:` closes it at the end.
        fn __enter__(slf: Py<Self>) -> Py<Self> {
            slf
        }

        /// Closes the instance (see close()); exceptions propagate.
        #[pyo3(signature = (*_args))]
        fn __exit__(
            &self,
            py: Python<'_>,
            _args: &Bound<'_, pyo3::types::PyTuple>,
        ) -> PyResult<bool> {
            self.close(py)?;
            Ok(false)
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

        /// The core_id given at construction.
        #[getter]
        fn core_id(&self) -> usize {
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
            let (m, ops, (syncs_in_caller, writes_in_caller)) = self.call(py, |b| {
                Ok((b.metrics(), b.operation_counts(), b.work_in_caller()))
            })?;
            let d = PyDict::new(py);
            // The caller's operations (tokens), as on every backend.
            d.set_item("submitted", ops.submitted)?;
            d.set_item("completed", ops.completed)?;
            d.set_item("failed", ops.failed)?;
            d.set_item("bytes_written", ops.bytes_written)?;
            // How they travelled: ring operations (a batch of combined writes is one),
            // their summed time from submission to completion, syscalls, SQEs.
            d.set_item("ring_operations", m.completed)?;
            d.set_item("ring_latency_ns_total", m.latency_ns_total)?;
            d.set_item("sqes_submitted", m.sqes_submitted)?;
            d.set_item("short_writes_continued", m.short_writes_continued)?;
            d.set_item("cancelled_reissued", m.cancelled_reissued)?;
            d.set_item("datasyncs_in_caller", syncs_in_caller)?;
            d.set_item("writes_in_caller", writes_in_caller)?;
            d.set_item("enter_calls", m.enter_calls)?;
            d.set_item("background_flushes", m.background_flushes)?;
            Ok(d)
        }

        fn __repr__(&self) -> String {
            format!(
                "UringStorageIo(backend='{}', core_id={}, closed={})",
                self.backend(),
                self.core_id,
                if self.closed() { "True" } else { "False" }
            )
        }
    }

    impl Drop for PyUringStorageIo {
        fn drop(&mut self) {
            if self.inherited() {
                // The parent's ring and buffers: this process must neither wait on nor
                // unregister them. Leak our copy; the process image goes with exit.
                std::mem::forget(self.shared.clone());
                return;
            }
            // Dropped without close(): wait for the I/O in flight (nothing is lost), but
            // without the GIL, so that a Python thread that has to act for it to finish
            // (drain a pipe, say) can.
            let shared = &self.shared;
            Python::attach(|py| {
                py.detach(|| while let Err(WaitError::Interrupted) = shared.close() {})
            });
        }
    }

    /// Declares a method of `PyUringStorageIo` taken over by a METH_FASTCALL function
    /// (see `fastcall`): `$method` is the definition, `$raw` the C entry point. `$call`
    /// calls the PyO3 method of the same name with the `$arity` positional arguments, so
    /// both paths run the same code and only the argument passing differs.
    macro_rules! fast_method {
        (
            $method:ident, $raw:ident, $name:literal, $arity:literal,
            |$this:ident, $py:ident, $args:ident| $call:expr
        ) => {
            static $method: FastMethod = FastMethod::new($name, $arity, |slf, $args| {
                let $py = slf.py();
                let $this = slf.cast::<PyUringStorageIo>()?.get();
                let token: u64 = $call?;
                Ok(token.into_pyobject($py)?.into_any().unbind())
            });

            unsafe extern "C" fn $raw(
                slf: *mut ffi::PyObject,
                args: *const *mut ffi::PyObject,
                nargs: ffi::Py_ssize_t,
                kwnames: *mut ffi::PyObject,
            ) -> *mut ffi::PyObject {
                // SAFETY: only CPython calls this, as the method `install` put on the type.
                unsafe { fastcall::call(&$method, slf, args, nargs, kwnames) }
            }
        };
    }

    fast_method!(
        SUBMIT_WRITE,
        raw_submit_write,
        "submit_write",
        3,
        |this, py, args| this.submit_write(py, &args.get(0), &args.get(1), &args.get(2))
    );
    fast_method!(
        SUBMIT_APPEND,
        raw_submit_append,
        "submit_append",
        2,
        |this, py, args| this.submit_append(py, &args.get(0), &args.get(1))
    );
    fast_method!(
        SUBMIT_DATASYNC,
        raw_submit_datasync,
        "submit_datasync",
        1,
        |this, py, args| this.submit_datasync(py, &args.get(0))
    );

    pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<PyUringStorageIo>()?;
        let ty = m.py().get_type::<PyUringStorageIo>();
        fastcall::install(&ty, &SUBMIT_WRITE, raw_submit_write)?;
        fastcall::install(&ty, &SUBMIT_APPEND, raw_submit_append)?;
        fastcall::install(&ty, &SUBMIT_DATASYNC, raw_submit_datasync)
    }
}

#[cfg(not(target_os = "linux"))]
mod uring {
    use super::*;

    /// io_uring is Linux only; elsewhere construction says so and the package falls back.
    #[pyclass(name = "UringStorageIo", module = "storage_io", frozen)]
    pub struct PyUringStorageIo;

    #[pymethods]
    impl PyUringStorageIo {
        #[new]
        #[pyo3(signature = (core_id = 0, config = None))]
        fn new(core_id: usize, config: Option<PyRef<'_, PyIoUringConfig>>) -> PyResult<Self> {
            let _ = (core_id, config.is_some());
            Err(UringUnavailableError::new_err(
                "io_uring needs Linux; this is another system",
            ))
        }
    }

    pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<PyUringStorageIo>()
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StorageIoError", py.get_type::<StorageIoError>())?;
    m.add("QueueFullError", py.get_type::<QueueFullError>())?;
    m.add("BadFdError", py.get_type::<BadFdError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add(
        "BufferExhaustedError",
        py.get_type::<BufferExhaustedError>(),
    )?;
    m.add(
        "UringUnavailableError",
        py.get_type::<UringUnavailableError>(),
    )?;
    m.add_class::<PyRingMode>()?;
    m.add_class::<PyIoUringConfig>()?;
    m.add_class::<PyIoFd>()?;
    m.add_class::<PyIoCompletion>()?;
    m.add_function(wrap_pyfunction!(new_instance_id, m)?)?;
    m.add_function(wrap_pyfunction!(descriptor_for_writes, m)?)?;
    uring::add(m)?;
    crate::wal::binding::add(m)
}
