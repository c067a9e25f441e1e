//! Taking the arguments of a call: ints with range checks, a file descriptor or anything
//! with fileno(), a timeout, a list of tokens; each error names the argument and what is
//! allowed, in the same words as the sync backend's.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;
#[cfg(target_os = "linux")]
use std::time::{Duration, Instant};

/// An integer config field; a value no field could take is a ValueError naming the field.
pub(super) fn config_int<T: TryFrom<i64>>(field: &str, value: &Bound<'_, PyAny>) -> PyResult<T> {
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

pub(super) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

pub(super) fn extract_offset(offset: &Bound<'_, PyAny>) -> PyResult<u64> {
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

pub(super) fn file_descriptor(file: &Bound<'_, PyAny>) -> PyResult<i32> {
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

/// A `timeout` argument: None, or a number of seconds (int or float), the same checks
/// and messages as the sync backend. Returns the deadline (None: no limit).
#[cfg(target_os = "linux")]
pub(super) fn deadline_from(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Instant>> {
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
#[cfg(target_os = "linux")]
pub(super) fn extract_tokens(tokens: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
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

#[cfg(target_os = "linux")]
pub(super) fn extract_length(length: &Bound<'_, PyAny>) -> PyResult<usize> {
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
