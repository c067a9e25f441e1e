//! The hottest methods of a class, called through a positional-only METH_FASTCALL entry
//! point of their own.
//!
//! PyO3 gives every method of a module built for the 3.10 stable ABI or later the
//! METH_FASTCALL | METH_KEYWORDS convention itself, and most methods here use it. Its entry
//! point is general: it counts the thread's attachment to the interpreter, and it sorts
//! positional and keyword arguments into an array of optional slots. For submit_write,
//! submit_append and submit_datasync that generality costs more than 5% of the call,
//! measured with the two entry points built side by side (docs/performance.md, "Calling
//! convention"), so they keep this narrower one: the positional form with the exact arity
//! runs the body directly.
//!
//! A call with keywords or a wrong number of arguments goes to the PyO3 method this one
//! replaces, which keeps its parsing and its error messages.

use std::ffi::{c_char, CString};
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};

/// The C signature of a METH_FASTCALL | METH_KEYWORDS function.
pub type RawFastMethod = unsafe extern "C" fn(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// The body of a fast method: the instance and exactly the positional arguments it takes.
pub type FastBody = for<'a, 'py> fn(&Bound<'py, PyAny>, Args<'a, 'py>) -> PyResult<Py<PyAny>>;

/// The positional arguments of one call, borrowed from CPython's argument array.
#[derive(Clone, Copy)]
pub struct Args<'a, 'py> {
    py: Python<'py>,
    raw: &'a [*mut ffi::PyObject],
}

impl<'a, 'py> Args<'a, 'py> {
    /// Argument `index`; the caller's arity says how many there are.
    pub fn get(&self, index: usize) -> Borrowed<'a, 'py, PyAny> {
        // SAFETY: every pointer of `raw` is a live argument that CPython keeps alive for the
        // whole call, which outlives `'a`.
        unsafe { Borrowed::from_ptr(self.py, self.raw[index]) }
    }
}

/// One fast method: its name, its positional arity, its body, and the PyO3 method it
/// replaces (kept for the calls the fast path does not take).
pub struct FastMethod {
    pub name: &'static str,
    pub arity: usize,
    pub body: FastBody,
    pub generic: OnceLock<Py<PyAny>>,
}

impl FastMethod {
    pub const fn new(name: &'static str, arity: usize, body: FastBody) -> Self {
        Self {
            name,
            arity,
            body,
            generic: OnceLock::new(),
        }
    }
}

/// Replaces the method `method.name` of `ty` (a PyO3 class) with `raw`, a METH_FASTCALL
/// function that calls `method` through `call`. The new method keeps the old one's
/// docstring and signature, so `help()` and `inspect.signature` show the same.
pub fn install(
    ty: &Bound<'_, PyType>,
    method: &'static FastMethod,
    raw: RawFastMethod,
) -> PyResult<()> {
    let generic = ty.getattr(method.name)?;
    let signature: Option<String> = generic.getattr("__text_signature__")?.extract()?;
    let doc: Option<String> = generic.getattr("__doc__")?.extract()?;
    // CPython reads a signature from a docstring that starts "name(...)\n--\n\n".
    let doc = match signature {
        Some(sig) => format!("{}{sig}\n--\n\n{}", method.name, doc.unwrap_or_default()),
        None => doc.unwrap_or_default(),
    };
    if method.generic.set(generic.unbind()).is_err() {
        return Err(PyRuntimeError::new_err(format!(
            "{} was installed twice",
            method.name
        )));
    }
    // The definition must outlive the type, which lives as long as the interpreter: leak it
    // (once per method per process: the module is initialised once).
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: leak_c_string(method.name),
        ml_meth: ffi::PyMethodDefPointer {
            // SAFETY: both are `extern "C"` function pointers of the same size; CPython
            // calls this one with the fast signature, which is `raw`'s, because
            // `ml_flags` below says METH_FASTCALL | METH_KEYWORDS.
            PyCFunction: unsafe { std::mem::transmute::<RawFastMethod, ffi::PyCFunction>(raw) },
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: leak_c_string(&doc),
    }));
    // SAFETY: `ty` is a live type object and `def` is valid for the rest of the process.
    let descriptor = unsafe {
        Bound::from_owned_ptr_or_err(ty.py(), ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))
    }?;
    ty.setattr(method.name, descriptor)
}

fn leak_c_string(text: &str) -> *const c_char {
    let owned = CString::new(text.replace('\0', " ")).expect("NULs replaced above");
    Box::leak(owned.into_boxed_c_str()).as_ptr()
}

/// Runs `method` for a METH_FASTCALL call: its body when the call is positional with the
/// right arity, else the PyO3 method it replaced. Errors are raised as Python exceptions and
/// panics as PanicException, never unwound into CPython.
///
/// # Safety
/// Called only by CPython through a method installed by `install`, with the thread attached
/// to the interpreter, `args` holding `nargs` positional arguments followed by one value per
/// name in `kwnames` (NULL when there are none).
pub unsafe fn call(
    method: &FastMethod,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a method only from a thread attached to the interpreter (holding
    // the GIL). `Python::attach` would say the same at the price of a
    // PyGILState_Ensure/Release pair on every call; PyO3's own method trampolines assume it
    // without one too.
    let py = unsafe { Python::assume_attached() };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let nargs = nargs as usize;
        // SAFETY: CPython passes the live instance the method was called on, borrowed for
        // the call.
        let instance = unsafe { Borrowed::from_ptr(py, slf) };
        if kwnames.is_null() && nargs == method.arity {
            // SAFETY: no keywords, so `args` holds exactly `nargs` live argument pointers,
            // borrowed for the call (the caller's contract, see `# Safety`).
            let raw = unsafe { arguments(args, nargs) };
            return (method.body)(&instance, Args { py, raw });
        }
        let keywords = if kwnames.is_null() {
            None
        } else {
            Some(
                // SAFETY: `kwnames` is not NULL here, so it is the live tuple of keyword
                // names CPython passes with a vectorcall, borrowed for the call.
                unsafe { Borrowed::from_ptr(py, kwnames) }
                    .cast::<PyTuple>()?
                    .to_owned(),
            )
        };
        let total = nargs + keywords.as_ref().map_or(0, |k| k.len());
        // SAFETY: with keyword names, `args` holds `nargs` positional values followed by
        // one value per name: `total` live pointers, borrowed for the call.
        let values: Vec<Bound<'_, PyAny>> = unsafe { arguments(args, total) }
            .iter()
            // SAFETY: each is one of those live argument pointers; `to_owned` takes a
            // reference of our own before the borrow ends.
            .map(|&p| unsafe { Borrowed::from_ptr(py, p) }.to_owned())
            .collect();
        call_generic(py, method, &instance, &values, nargs, keywords)
    }));
    match outcome {
        Ok(Ok(value)) => value.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic in storage_io".to_string());
            PanicException::new_err(message).restore(py);
            std::ptr::null_mut()
        }
    }
}

/// The `count` argument pointers at `args`, which CPython may pass as NULL when there are
/// none (PyObject_CallNoArgs, `iter(method, sentinel)`).
///
/// # Safety
/// `args` points at `count` live argument pointers, or `count` is 0.
unsafe fn arguments<'a>(args: *const *mut ffi::PyObject, count: usize) -> &'a [*mut ffi::PyObject] {
    if count == 0 {
        return &[];
    }
    // SAFETY: per the contract above.
    unsafe { std::slice::from_raw_parts(args, count) }
}

/// The slow path: the PyO3 method, called with a tuple and a dict as usual.
fn call_generic<'py>(
    py: Python<'py>,
    method: &FastMethod,
    instance: &Bound<'py, PyAny>,
    values: &[Bound<'py, PyAny>],
    nargs: usize,
    keywords: Option<Bound<'py, PyTuple>>,
) -> PyResult<Py<PyAny>> {
    let generic = method
        .generic
        .get()
        .expect("installed before it can be called")
        .bind(py);
    let mut positional = Vec::with_capacity(nargs + 1);
    positional.push(instance.clone());
    positional.extend(values[..nargs].iter().cloned());
    let kwargs = match keywords {
        Some(names) => {
            let dict = PyDict::new(py);
            for (name, value) in names.iter().zip(&values[nargs..]) {
                dict.set_item(name, value)?;
            }
            Some(dict)
        }
        None => None,
    };
    Ok(generic
        .call(PyTuple::new(py, positional)?, kwargs.as_ref())?
        .unbind())
}
