//! The `UringStorageIo` class: its state, the crossings every method shares (holding the
//! instance with or without the GIL, waiting for room, a handle from an `IoFd`), what it
//! does when dropped or inherited across fork(), and the three submit methods taken over by
//! positional-only METH_FASTCALL entry points (`fastcall`). Its Python methods are in
//! `methods`.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use super::arguments::{extract_offset, type_name};
use super::buffer::Payload;
use super::call_error::{CallError, CallResult};
use super::errors::ClosedError;
use super::fastcall::{self, FastMethod};
use super::values::{new_completion, PyIoFd};
use crate::backend::{BackendError, Completion, Handle, Request, UringBackend};
use crate::config::{IoUringConfig, RingMode};
use crate::waiters::{Shared, WaitError};

/// Bumped in every child after fork(): an instance remembers the value it was made under,
/// and a mismatch means "inherited from a parent", whose ring this process must not drive.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

static WATCH_FORKS: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

pub(super) fn fork_generation() -> u64 {
    WATCH_FORKS.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic, which is
        // async-signal-safe as fork handlers must be.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    FORK_GENERATION.load(Ordering::SeqCst)
}

/// The io_uring backend: one ring per instance ("per core"), registered buffers and
/// files, an optional SQPOLL kernel thread. Every method is documented on
/// storage_io.StorageIo (help(storage_io.StorageIo)) and in the README.
///
/// One instance may be shared by threads: no call holds the instance while it sleeps,
/// so a thread waiting in wait() or wait_for() holds up nobody's submissions.
#[pyclass(name = "UringStorageIo", module = "storage_io", frozen)]
pub struct PyUringStorageIo {
    pub(super) shared: std::sync::Arc<Shared>,
    pub(super) born_in_fork_generation: u64,
    pub(super) core_id: Option<u32>,
    pub(super) config: IoUringConfig,
    pub(super) mode: RingMode,
    pub(super) fallback_reason: Option<String>,
}

impl PyUringStorageIo {
    pub(super) fn inherited(&self) -> bool {
        fork_generation() != self.born_in_fork_generation
    }

    pub(super) fn check_not_inherited(&self) -> CallResult<()> {
        if self.inherited() {
            return Err(CallError::Python(ClosedError::new_err(
                "this StorageIo instance was inherited across fork(); it belongs to the \
                 parent process: create a new instance in the child",
            )));
        }
        Ok(())
    }

    /// Checks that the instance is usable (not inherited, not closed) without waiting.
    pub(super) fn check_open(&self) -> CallResult<()> {
        self.check_not_inherited()?;
        if self.shared.is_closed() {
            return Err(CallError::Closed);
        }
        Ok(())
    }

    /// Runs `f` on the backend with the GIL held: for calls that never sleep. The lock
    /// is only ever held for bookkeeping; when another thread has it, wait for it without
    /// the GIL, then try again.
    pub(super) fn call<R>(
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
    pub(super) fn blocking<R: Send>(
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

    pub(super) fn handle(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> CallResult<Handle> {
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
    pub(super) fn submit_with_room(
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
    pub(super) fn submit_payload(
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

    /// Submits a write with the given placement without ever waiting (`submit_nowait`).
    pub(super) fn submit_payload_nowait(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        payload: PyResult<Payload<'_>>,
        offset: Option<&Bound<'_, PyAny>>,
    ) -> CallResult<u64> {
        let handle = self.handle(py, fd)?;
        let offset = offset.map(extract_offset).transpose();
        self.call(py, |backend| {
            backend.check_handle(handle)?;
            let payload = payload
                .as_ref()
                .map_err(|e| CallError::Python(e.clone_ref(py)))?;
            let offset = offset
                .as_ref()
                .map_err(|e| CallError::Python(e.clone_ref(py)))?;
            payload.with_slices(|parts| {
                Ok(backend.submit_nowait(
                    handle,
                    &Request::Write {
                        parts,
                        offset: *offset,
                    },
                )?)
            })
        })
    }

    pub(super) fn completions(
        py: Python<'_>,
        ready: Vec<Completion>,
    ) -> PyResult<Bound<'_, PyList>> {
        let list = PyList::empty(py);
        for c in ready {
            list.append(new_completion(py, c.token, c.result, c.data)?)?;
        }
        Ok(list)
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
        // Dropped without close(): close as close() does (regular-file work waited for,
        // pipes and sockets given their grace, then cancelled), but without the GIL, so
        // that a Python thread that has to act for it to finish (drain a pipe, say) can.
        let shared = &self.shared;
        let deadlines = crate::waiters::CloseDeadlines::starting_now(None);
        Python::attach(|py| {
            py.detach(|| while let Err(WaitError::Interrupted) = shared.close(deadlines) {})
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
