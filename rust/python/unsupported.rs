//! `UringStorageIo` off Linux: io_uring is Linux only, so construction raises
//! UringUnavailableError saying so, and the package falls back to the sync backend.

use pyo3::prelude::*;

use super::errors::UringUnavailableError;
use super::values::PyIoUringConfig;

/// io_uring is Linux only; elsewhere construction says so and the package falls back.
#[pyclass(name = "UringStorageIo", module = "storage_io", frozen)]
pub struct PyUringStorageIo;

#[pymethods]
impl PyUringStorageIo {
    #[new]
    #[pyo3(signature = (core_id = None, config = None))]
    fn new(core_id: Option<u32>, config: Option<PyRef<'_, PyIoUringConfig>>) -> PyResult<Self> {
        let _ = (core_id, config.is_some());
        Err(UringUnavailableError::new_err(
            "io_uring needs Linux; this is another system",
        ))
    }
}

pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyUringStorageIo>()
}
