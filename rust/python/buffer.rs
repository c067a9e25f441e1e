//! The bytes of a write, borrowed from any object with the buffer protocol without a copy
//! where it allows (`BufferView`), and the payload of a vectored write.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::arguments::type_name;

/// A borrowed view of any object with the buffer protocol, held until dropped.
///
/// A plain PyBUF_SIMPLE view, through the buffer calls of the 3.11 stable ABI as PyO3
/// declares them, rather than PyO3's `PyUntypedBuffer`: that one asks for the full layout
/// (format, shape, strides) and allocates every view on the heap, which a write does not
/// need and which makes a submit of a small bytearray measurably slower (docs/performance.md,
/// "Calling convention").
///
/// What it guarantees: the exporter's memory stays allocated and is not resized until the
/// view is released (a bytearray refuses to resize while exported), so `as_slice` never
/// points at freed memory.
///
/// What it does not guarantee: that nobody writes the bytes meanwhile. Another Python
/// thread cannot while we hold the GIL, and every view is read (copied into a registered
/// buffer, or into a private copy) inside a GIL-holding frame; but native code that has
/// released the GIL (a numpy operation, another extension's thread) can, and then the
/// write carries whatever mix of old and new bytes the copy saw, as `os.write` would.
/// For the same reason it is not `Send`: it is never handed to a thread that runs
/// without the GIL.
pub(super) struct BufferView {
    raw: ffi::Py_buffer,
}

impl BufferView {
    /// A C-contiguous view of `obj` (PyBUF_SIMPLE), or the error the object raised.
    pub(super) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut raw = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
        // SAFETY: `obj` is a live object (we hold the GIL and a reference); on success the
        // view is filled in and must be released exactly once, which Drop does. For a
        // PyBUF_SIMPLE request the exporter leaves shape, strides and format NULL, so the
        // view holds no pointer into itself and stays valid when moved.
        let rc =
            unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), raw.as_mut_ptr(), ffi::PyBUF_SIMPLE) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: GetBuffer succeeded, so the struct is initialised.
        let raw = unsafe { raw.assume_init() };
        Ok(Self { raw })
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        if self.raw.len == 0 || self.raw.buf.is_null() {
            return &[];
        }
        // SAFETY: a PyBUF_SIMPLE view is `len` contiguous bytes at `buf`, valid until the
        // view is released; the exporter cannot resize while the view is held.
        unsafe { std::slice::from_raw_parts(self.raw.buf.cast::<u8>(), self.raw.len as usize) }
    }
}

impl Drop for BufferView {
    fn drop(&mut self) {
        // SAFETY: filled by a successful PyObject_GetBuffer and released only here. Drop runs
        // with the GIL held: views are created and dropped inside GIL-holding frames.
        unsafe { ffi::PyBuffer_Release(&mut self.raw) }
    }
}

/// The bytes of `data`, borrowed without a copy where the object allows it.
pub(super) enum Data<'py> {
    Bytes(Bound<'py, PyBytes>),
    View(BufferView),
}

impl Data<'_> {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Data::Bytes(b) => b.as_bytes(),
            Data::View(v) => v.as_slice(),
        }
    }
}

pub(super) fn extract_data<'py>(data: &Bound<'py, PyAny>) -> PyResult<Data<'py>> {
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
pub(super) enum Payload<'py> {
    One(Data<'py>),
    Many(Vec<Data<'py>>),
}

impl Payload<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Payload::One(d) => d.as_slice().len(),
            Payload::Many(v) => v.iter().map(|d| d.as_slice().len()).sum(),
        }
    }

    pub(super) fn with_slices<R>(&self, f: impl FnOnce(&[&[u8]]) -> R) -> R {
        match self {
            Payload::One(d) => f(&[d.as_slice()]),
            Payload::Many(v) => f(&v.iter().map(Data::as_slice).collect::<Vec<_>>()),
        }
    }
}

pub(super) fn extract_buffers<'py>(buffers: &Bound<'py, PyAny>) -> PyResult<Payload<'py>> {
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
