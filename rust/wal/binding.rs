//! The PyO3 crossing of the log's native core: `WalFramer`, `WalReplay`,
//! `recover_segments` and `encode_segment_header` in `storage_io._native`. Only crossing
//! here: argument extraction, GIL release around file reads, error mapping. What a record
//! is and what recovery decides lives in `format`, `framer` and `scan`.
//!
//! Payloads that are not `bytes` are copied once through `memoryview(...).tobytes()`
//! instead of borrowing their buffer: the framer copies every payload anyway, and this
//! keeps the unsafe buffer-protocol code in one place (`python.rs`).

use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView, PyTuple};

use super::format::{SegmentHeader, FORMAT_VERSION, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::framer::{Framed, Framer};
use super::scan::{recover, RecoverError, Replay, SegmentFile, TornTail};

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

/// Calls `f` with the bytes of a bytes-like `payload`.
fn with_payload<R>(payload: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = payload.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let view = PyMemoryView::from(payload).map_err(|_| {
        let kind = payload
            .get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string());
        PyTypeError::new_err(format!(
            "payload must be a bytes-like object (bytes, bytearray, memoryview...), not {kind}"
        ))
    })?;
    let copy = view.call_method0("tobytes")?;
    let bytes = copy.cast::<PyBytes>()?;
    Ok(f(bytes.as_bytes()))
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

/// Frames appended records for the current segment (see `framer`). Not thread-safe by
/// itself: the log calls it under its lock.
#[pyclass(module = "storage_io._native")]
pub struct WalFramer {
    inner: Framer,
}

#[pymethods]
impl WalFramer {
    #[new]
    fn new(segment_bytes: u64, next_lsn: u64) -> Self {
        Self {
            inner: Framer::new(segment_bytes, next_lsn),
        }
    }

    /// Appends go to the segment with this header from now on; its valid bytes end at
    /// `end` and it holds `records` records.
    fn start_segment(&mut self, first_lsn: u64, salt: u64, end: u64, records: u64) -> PyResult<()> {
        if !self.inner.pending().1.is_empty() {
            return Err(PyValueError::new_err("framed bytes not handed off yet"));
        }
        let header = SegmentHeader { first_lsn, salt };
        self.inner.start_segment(&header, end, records);
        Ok(())
    }

    /// Frames one record; returns its LSN, or 0 when it needs a new segment first.
    fn append(&mut self, payload: &Bound<'_, PyAny>) -> PyResult<u64> {
        match with_payload(payload, |bytes| self.inner.append(bytes))? {
            Ok(Framed::Lsn(lsn)) => Ok(lsn),
            Ok(Framed::NeedsNewSegment) => Ok(0),
            Err(too_large) => Err(PyValueError::new_err(too_large.to_string())),
        }
    }

    /// Frames records from `payloads` (an iterator) until it is exhausted, a record needs a
    /// new segment, or `pending_len` reaches `stop_at_pending`. Returns (last LSN framed,
    /// the record that needs a new segment or None, whether the iterator is exhausted).
    fn append_many<'py>(
        &mut self,
        payloads: &Bound<'py, PyAny>,
        stop_at_pending: usize,
    ) -> PyResult<(u64, Option<Bound<'py, PyAny>>, bool)> {
        let mut iterator = payloads.try_iter()?;
        loop {
            let Some(item) = iterator.next() else {
                return Ok((self.inner.last_lsn(), None, true));
            };
            let item = item?;
            match with_payload(&item, |bytes| self.inner.append(bytes))? {
                Ok(Framed::Lsn(_)) => {}
                Ok(Framed::NeedsNewSegment) => {
                    return Ok((self.inner.last_lsn(), Some(item), false))
                }
                Err(too_large) => return Err(PyValueError::new_err(too_large.to_string())),
            }
            if self.inner.pending().1.len() >= stop_at_pending {
                return Ok((self.inner.last_lsn(), None, false));
            }
        }
    }

    /// Bytes framed and not handed off yet.
    #[getter]
    fn pending_len(&self) -> usize {
        self.inner.pending().1.len()
    }

    /// (file offset, bytes) of everything framed and not handed off; they are handed off.
    fn take_pending<'py>(&mut self, py: Python<'py>) -> (u64, Bound<'py, PyBytes>) {
        let (offset, bytes) = self.inner.pending();
        let out = (offset, PyBytes::new(py, bytes));
        self.inner.mark_handed_off();
        out
    }

    /// File offset of the end of the last framed record.
    #[getter]
    fn end(&self) -> u64 {
        self.inner.end()
    }

    #[getter]
    fn last_lsn(&self) -> u64 {
        self.inner.last_lsn()
    }

    #[getter]
    fn records_in_segment(&self) -> u64 {
        self.inner.records_in_segment()
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

/// An iterator of (LSN, payload) over `segments` ((path, first LSN) in order), from
/// `from_lsn` to `until_lsn` inclusive, every record checked. The files are opened here.
#[pyclass(module = "storage_io._native")]
pub struct WalReplay {
    inner: Replay,
}

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
        Ok(Self { inner })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<(u64, Bound<'py, PyBytes>)>> {
        if self.inner.wants_segment() {
            // A whole segment is read here: without the GIL.
            let inner = &mut self.inner;
            py.detach(|| inner.load_next_segment())
                .map_err(|e| into_py_error(py, e))?;
        }
        match self.inner.next_record() {
            Ok(Some((lsn, payload))) => Ok(Some((lsn, PyBytes::new(py, payload)))),
            Ok(None) => Ok(None),
            Err(e) => Err(into_py_error(py, e)),
        }
    }
}
