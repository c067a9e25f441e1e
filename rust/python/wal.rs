//! The PyO3 crossing of the log's native core: `WalFramer`, `WalReplay`,
//! `recover_segments` and `encode_segment_header` in `storage_io._native`. Only crossing
//! here: argument extraction, GIL release around file reads, error mapping. What a record
//! is and what recovery decides lives in `format`, `framer` and `scan`.
//!
//! Payloads that are not `bytes` are copied once through `memoryview(...).tobytes()`
//! instead of borrowing their buffer: the framer copies every payload anyway, and this
//! keeps the unsafe buffer-protocol code in one place (`python::buffer`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PyTuple};

use crate::wal::format::{SegmentHeader, FORMAT_VERSION, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::wal::framer::{Framed, Framer};
use crate::wal::scan::{recover, RecoverError, Replay, SegmentFile, TornTail};

/// Registers the log's native names on the extension module.
pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<WalFramer>()?;
    m.add_class::<WalReplay>()?;
    m.add_function(wrap_pyfunction!(recover_segments, m)?)?;
    m.add_function(wrap_pyfunction!(encode_segment_header, m)?)?;
    m.add("WAL_FORMAT_VERSION", FORMAT_VERSION)?;
    m.add("WAL_SEGMENT_HEADER_LEN", SEGMENT_HEADER_LEN)?;
    m.add("WAL_RECORD_HEADER_LEN", RECORD_HEADER_LEN)?;
    Ok(())
}

fn not_bytes_like(payload: &Bound<'_, PyAny>) -> PyErr {
    let kind = payload
        .get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string());
    PyTypeError::new_err(format!(
        "payload must be a bytes-like object (bytes, bytearray, memoryview...), not {kind}"
    ))
}

/// The bytes of a bytes-like `payload` as a `bytes` object: itself, or a copy.
fn owned_payload<'py>(payload: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(bytes) = payload.cast::<PyBytes>() {
        return Ok(bytes.clone());
    }
    let view = PyMemoryView::from(payload).map_err(|_| not_bytes_like(payload))?;
    Ok(view.call_method0("tobytes")?.cast_into::<PyBytes>()?)
}

fn into_py_error(py: Python<'_>, error: RecoverError) -> PyErr {
    match error {
        RecoverError::Corrupt {
            path,
            offset,
            reason,
        } => {
            let message = format!("{}: at byte {offset}: {reason}", path.display());
            let made = py
                .import("storage_io.wal")
                .and_then(|m| m.getattr("WalCorruptionError"))
                .and_then(|cls| cls.call1((message, path, offset)));
            match made {
                Ok(exc) => PyErr::from_value(exc),
                Err(err) => err,
            }
        }
        RecoverError::Io { path, error } => {
            let errno = error.raw_os_error().unwrap_or(libc::EIO);
            PyOSError::new_err((errno, error.to_string(), path))
        }
    }
}

/// Frames appended records for the current segment (see `framer`), callable from many
/// threads.
///
/// `append` is the log's lock-free fast path: the GIL makes it atomic with respect to other
/// Python code (it runs no Python code while it holds the framer), and it declines (returns
/// 0) whenever the log has set `blocked` (closed, poisoned, rotating, or an `append_many`
/// under way) or another thread holds the framer; the log then takes its lock and calls
/// `append_locked`. Every other method is called under the log's lock.
#[pyclass(module = "storage_io._native", frozen)]
pub struct WalFramer {
    inner: Mutex<Framer>,
    blocked: AtomicBool,
    last_lsn: AtomicU64,
    handoff_bytes: usize,
}

impl WalFramer {
    fn framer(&self) -> MutexGuard<'_, Framer> {
        // A panic cannot leave the framer half-updated in a way a later call trips on:
        // `append` checks everything before it writes.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames `bytes` into `framer`: its LSN, negated when the framed bytes reached the
    /// hand-off size, or 0 when the record needs a new segment.
    fn frame(&self, framer: &mut Framer, bytes: &[u8]) -> PyResult<i64> {
        match framer.append(bytes) {
            Ok(Framed::Lsn(lsn)) => {
                self.last_lsn.store(lsn, Ordering::Release);
                let lsn = lsn as i64;
                Ok(if framer.pending().1.len() >= self.handoff_bytes {
                    -lsn
                } else {
                    lsn
                })
            }
            Ok(Framed::NeedsNewSegment) => Ok(0),
            Err(too_large) => Err(PyValueError::new_err(too_large.to_string())),
        }
    }
}

#[pymethods]
impl WalFramer {
    #[new]
    fn new(segment_bytes: u64, next_lsn: u64, handoff_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Framer::new(segment_bytes, next_lsn)),
            blocked: AtomicBool::new(false),
            last_lsn: AtomicU64::new(next_lsn - 1),
            handoff_bytes,
        }
    }

    /// Appends go to the segment with this header from now on; its valid bytes end at
    /// `end` and it holds `records` records.
    fn start_segment(&self, first_lsn: u64, salt: u64, end: u64, records: u64) -> PyResult<()> {
        let mut framer = self.framer();
        if !framer.pending().1.is_empty() {
            return Err(PyValueError::new_err("framed bytes not handed off yet"));
        }
        framer.start_segment(&SegmentHeader { first_lsn, salt }, end, records);
        Ok(())
    }

    /// While true, `append` declines every record.
    #[getter]
    fn get_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    #[setter]
    fn set_blocked(&self, value: bool) {
        self.blocked.store(value, Ordering::Release);
    }

    /// The fast path: the record's LSN; its negation when the framed bytes reached the
    /// hand-off size; 0 when it was not framed (blocked, busy, or it needs a new segment).
    /// Anything but `bytes` is declined too: copying it may run its exporter's code.
    fn append(&self, payload: &Bound<'_, PyAny>) -> PyResult<i64> {
        let Ok(bytes) = payload.cast::<PyBytes>() else {
            return Ok(0);
        };
        if self.blocked.load(Ordering::Acquire) {
            return Ok(0);
        }
        let Ok(mut framer) = self.inner.try_lock() else {
            return Ok(0);
        };
        self.frame(&mut framer, bytes.as_bytes())
    }

    /// As `append`, ignoring `blocked`; under the log's lock.
    fn append_locked(&self, payload: &Bound<'_, PyAny>) -> PyResult<i64> {
        let owned = owned_payload(payload)?;
        let mut framer = self.framer();
        self.frame(&mut framer, owned.as_bytes())
    }

    /// Frames records from `payloads` (an iterator) until it is exhausted, a record needs a
    /// new segment, or `pending_len` reaches the hand-off size. Returns (last LSN framed,
    /// the record that needs a new segment or None, whether the iterator is exhausted).
    /// Under the log's lock, with `blocked` set so that no other record comes between.
    fn append_many<'py>(
        &self,
        payloads: &Bound<'py, PyAny>,
    ) -> PyResult<(u64, Option<Bound<'py, PyAny>>, bool)> {
        let mut iterator = payloads.try_iter()?;
        loop {
            // The caller's iterator runs Python code: the framer is not held meanwhile.
            let Some(item) = iterator.next() else {
                return Ok((self.last_lsn.load(Ordering::Acquire), None, true));
            };
            let item = item?;
            let owned = owned_payload(&item)?;
            let framed = self.frame(&mut self.framer(), owned.as_bytes())?;
            let last = self.last_lsn.load(Ordering::Acquire);
            if framed == 0 {
                return Ok((last, Some(item), false));
            }
            if framed < 0 {
                return Ok((last, None, false));
            }
        }
    }

    /// Bytes framed and not handed off yet.
    #[getter]
    fn pending_len(&self) -> usize {
        self.framer().pending().1.len()
    }

    /// (file offset, bytes) of everything framed and not handed off; they are handed off.
    fn take_pending<'py>(&self, py: Python<'py>) -> (u64, Bound<'py, PyBytes>) {
        let mut framer = self.framer();
        let (offset, bytes) = framer.pending();
        let out = (offset, PyBytes::new(py, bytes));
        framer.mark_handed_off();
        out
    }

    /// File offset of the end of the last framed record.
    #[getter]
    fn end(&self) -> u64 {
        self.framer().end()
    }

    /// The last LSN framed; read without the framer, so never held up by an append.
    #[getter]
    fn last_lsn(&self) -> u64 {
        self.last_lsn.load(Ordering::Acquire)
    }

    #[getter]
    fn records_in_segment(&self) -> u64 {
        self.framer().records_in_segment()
    }
}

/// The 32-byte header of a new segment.
#[pyfunction]
fn encode_segment_header(py: Python<'_>, first_lsn: u64, salt: u64) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &SegmentHeader { first_lsn, salt }.encode())
}

type SegmentRow = (PathBuf, u64, u64, u64, u64, u64);

/// Checks a log's segments (`files`: (path, LSN its name says), sorted) without changing
/// them. Returns (segments, torn): each segment as (path, first LSN, salt, records, end of
/// its last valid record, file length); torn is None, ("cut", path, at, file length) or
/// ("remove", path, file length). Raises WalCorruptionError, or OSError.
#[pyfunction]
fn recover_segments<'py>(
    py: Python<'py>,
    files: Vec<(PathBuf, u64)>,
) -> PyResult<(Vec<SegmentRow>, Option<Bound<'py, PyTuple>>)> {
    let files: Vec<SegmentFile> = files
        .into_iter()
        .map(|(path, name_lsn)| SegmentFile { path, name_lsn })
        .collect();
    let recovery = py
        .detach(|| recover(&files))
        .map_err(|e| into_py_error(py, e))?;
    let rows = recovery
        .segments
        .into_iter()
        .map(|s| (s.path, s.first_lsn, s.salt, s.records, s.end, s.file_len))
        .collect();
    let torn = match recovery.torn {
        None => None,
        Some(TornTail::Cut { path, at, file_len }) => {
            Some(("cut", path, at, file_len).into_pyobject(py)?)
        }
        Some(TornTail::Remove { path, file_len }) => {
            Some(("remove", path, file_len).into_pyobject(py)?)
        }
    };
    Ok((rows, torn))
}

/// Batches of records over `segments` ((path, first LSN) in order), from `from_lsn` to
/// `until_lsn` inclusive, every record checked: an iterator of lists of (LSN, payload),
/// which `Wal.replay` flattens with `itertools.chain.from_iterable`. The files are opened
/// here.
///
/// Batches, not one record per `__next__`: the call into the extension cost about as much
/// as the record itself (measured: 256-byte records at ~370 ns each one by one); a list
/// iterated in C costs ~20 ns an item. A batch stops at a failed check, which the next
/// call raises, so every good record before it is still yielded first.
#[pyclass(module = "storage_io._native")]
pub struct WalReplay {
    inner: Replay,
    failed: Option<RecoverError>,
}

/// Records per batch, and payload bytes per batch (whichever is reached first).
const BATCH_RECORDS: usize = 512;
const BATCH_BYTES: usize = 1 << 20;

#[pymethods]
impl WalReplay {
    #[new]
    fn new(
        py: Python<'_>,
        segments: Vec<(PathBuf, u64)>,
        from_lsn: u64,
        until_lsn: u64,
    ) -> PyResult<Self> {
        let inner = py
            .detach(|| Replay::open(&segments, from_lsn, until_lsn))
            .map_err(PyErr::from)?;
        Ok(Self {
            inner,
            failed: None,
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        if let Some(error) = self.failed.take() {
            return Err(into_py_error(py, error));
        }
        let batch = PyList::empty(py);
        let mut bytes = 0;
        while batch.len() < BATCH_RECORDS && bytes < BATCH_BYTES {
            if self.inner.wants_segment() {
                // Mapping a segment (and faulting it in) happens without the GIL.
                let inner = &mut self.inner;
                if let Err(error) = py.detach(|| inner.load_next_segment()) {
                    self.failed = Some(error);
                    break;
                }
            }
            match self.inner.next_record() {
                Ok(Some((lsn, payload))) => {
                    bytes += payload.len();
                    batch.append((lsn, PyBytes::new(py, payload)))?;
                }
                Ok(None) => break,
                Err(error) => {
                    self.failed = Some(error);
                    break;
                }
            }
        }
        if batch.is_empty() {
            return match self.failed.take() {
                Some(error) => Err(into_py_error(py, error)),
                None => Ok(None),
            };
        }
        Ok(Some(batch))
    }
}
