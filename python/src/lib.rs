//! `cllm._cllm`: the extension module behind the Python package `cllm` (python/cllm/).
//!
//! It stays small and byte-oriented: the `cllm` command ([`cli_main`]), and an opened packed
//! model ([`Packed`]) whose tensors come back as `bytearray`s in their source dtype (dequantized
//! through the Rust codecs) or as their stored streams (codes, scales, mins), every frame and
//! stream hash checked on the way. The Python layer turns the bytes into NumPy arrays with
//! `numpy.frombuffer` (no NumPy on the Rust side), and the index into dicts.
//!
//! Errors raise `cllm.CllmError` (`FileNotFoundError` for a missing file) with the Rust message,
//! which names the file, the tensor and the frame.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use cllm_format::index::TensorEntry;
use cllm_loader::error::LoadError;
use cllm_loader::packed::Packed as LoadedPacked;
use cllm_loader::verify;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyIndexError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict};

create_exception!(
    _cllm,
    CllmError,
    PyException,
    "A container could not be opened, decoded or checked; the message names the file, tensor and frame."
);

fn py_err(e: LoadError) -> PyErr {
    match &e {
        LoadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        _ => CllmError::new_err(e.to_string()),
    }
}

/// Runs the `cllm` command on `args` (the program name first) and returns its exit code:
/// 0 ok, 1 a verification or comparison failed, 2 a usage or I/O error. The interpreter is
/// released while it runs.
#[pyfunction]
fn cli_main(py: Python<'_>, args: Vec<OsString>) -> u8 {
    py.detach(move || {
        let code = cllm::run_cli(args);
        // The binary's runtime flushes stdout on exit; here the interpreter goes on (or exits
        // without Rust's runtime), so flush what a `print!` left in the buffer.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        code
    })
}

/// A packed model opened from disk: one `.cllm` container or a shard set, memory-mapped.
#[pyclass(module = "cllm._cllm", name = "Packed", frozen)]
struct Packed {
    inner: LoadedPacked,
}

impl Packed {
    fn check(&self, i: usize) -> PyResult<&TensorEntry> {
        if i < self.inner.len() {
            Ok(self.inner.tensor(i))
        } else {
            Err(PyIndexError::new_err(format!(
                "tensor index {i} out of range ({} tensors)",
                self.inner.len()
            )))
        }
    }

    /// For a lossless tensor: fails when the payload hash (checked against the decoded bytes)
    /// is not the hash of the source it was packed from.
    fn check_lossless_source(&self, i: usize) -> PyResult<()> {
        let (s, k) = self.inner.locate(i);
        let shard = &self.inner.shards()[s];
        match cllm_format::lossless_source_failure(&shard.container, k) {
            Some(msg) => Err(CllmError::new_err(format!(
                "{}: {msg}",
                shard.path.display()
            ))),
            None => Ok(()),
        }
    }
}

#[pymethods]
impl Packed {
    /// The path users named (the single file, or a shard set's first shard).
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// Every container's path, in shard order.
    fn shard_paths(&self) -> Vec<PathBuf> {
        self.inner.shards().iter().map(|s| s.path.clone()).collect()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The first container's index as JSON (format, version, files, policy, provenance; its
    /// `tensors` are that container's own: see `tensors_json` for the whole set).
    fn index_json(&self) -> PyResult<String> {
        serde_json::to_string(self.inner.index()).map_err(|e| CllmError::new_err(e.to_string()))
    }

    /// Every tensor's index entry of the whole set, in name order, as a JSON list.
    fn tensors_json(&self) -> PyResult<String> {
        let all: Vec<&TensorEntry> = self.inner.tensors().collect();
        serde_json::to_string(&all).map_err(|e| CllmError::new_err(e.to_string()))
    }

    /// Position of the tensor named `name` in name order, or `None`.
    fn find(&self, name: &str) -> Option<usize> {
        self.inner.find(name)
    }

    /// Tensor `i` in its source dtype (lossless tensors bit-exact, quantized ones dequantized and
    /// rounded to the source dtype), decoded a frame at a time straight into a `bytearray`.
    fn source_bytes<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyByteArray>> {
        let t = self.check(i)?;
        let len = usize::try_from(t.raw_bytes()).map_err(|_| {
            CllmError::new_err(format!("tensor {}: too large for this machine", t.name))
        })?;
        if self.inner.codec(i).is_lossless() {
            self.check_lossless_source(i)?;
        }
        PyByteArray::new_with(py, len, |buf| {
            py.detach(|| fill(buf, &t.name, |each| self.inner.source_chunks(i, each)))
        })
    }

    /// Stream `stream` of tensor `i` as stored (codes, scales or mins), hash checked.
    fn stream_bytes<'py>(
        &self,
        py: Python<'py>,
        i: usize,
        stream: usize,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let t = self.check(i)?;
        let Some(s) = t.streams.get(stream) else {
            return Err(PyIndexError::new_err(format!(
                "tensor {}: stream {stream} out of range ({} streams)",
                t.name,
                t.streams.len()
            )));
        };
        let len = usize::try_from(s.len).map_err(|_| {
            CllmError::new_err(format!("tensor {}: too large for this machine", t.name))
        })?;
        if stream == 0 && self.inner.codec(i).is_lossless() {
            self.check_lossless_source(i)?;
        }
        PyByteArray::new_with(py, len, |buf| {
            py.detach(|| {
                fill(buf, &t.name, |each| {
                    self.inner.stream_chunks(i, stream, each)
                })
            })
        })
    }

    /// An embedded file (config.json, tokenizer.json, ...), checked; `None` when absent.
    fn read_file<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let bytes = py.detach(|| self.inner.read_file(name)).map_err(py_err)?;
        Ok(bytes.map(|b| PyBytes::new(py, &b)))
    }

    /// Checks every byte of every container (as `cllm verify` without `--against`): frame
    /// checksums, stream and payload hashes, embedded files, padding. Returns a dict; its
    /// `failures` (each naming the file, tensor or file entry, and frame) is empty when every
    /// check holds.
    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let start = Instant::now();
        let reports = py.detach(|| verify::verify_shards(&self.inner));
        let seconds = start.elapsed().as_secs_f64();
        let shards: Vec<String> = reports
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        // A report handed to Python outlives the call that named the file: every failure names it.
        let r = verify::sum_reports(reports, true);
        let d = PyDict::new(py);
        d.set_item("ok", r.failures.is_empty())?;
        d.set_item("shards", shards)?;
        d.set_item("tensors", r.tensors)?;
        d.set_item("files", r.files)?;
        d.set_item("frames", r.frames)?;
        d.set_item("stored_bytes", r.stored_bytes)?;
        d.set_item("decoded_bytes", r.decoded_bytes)?;
        d.set_item("seconds", seconds)?;
        d.set_item("failures", r.failures)?;
        Ok(d)
    }
}

/// Fills `buf` from a frame-at-a-time decoder; the decoded length must be the buffer's.
fn fill(
    buf: &mut [u8],
    name: &str,
    decode: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), LoadError>) -> Result<(), LoadError>,
) -> PyResult<()> {
    let mut at = 0usize;
    let mut each = |chunk: &[u8]| -> Result<(), LoadError> {
        let end = at + chunk.len();
        if end > buf.len() {
            return Err(LoadError::Model {
                path: PathBuf::new(),
                msg: format!(
                    "tensor {name}: decodes to more than the {} bytes its shape and dtype give",
                    buf.len()
                ),
            });
        }
        buf[at..end].copy_from_slice(chunk);
        at = end;
        Ok(())
    };
    decode(&mut each).map_err(py_err)?;
    if at != buf.len() {
        return Err(CllmError::new_err(format!(
            "tensor {name}: decoded {at} bytes, its shape and dtype give {}",
            buf.len()
        )));
    }
    Ok(())
}

/// Opens a `.cllm` container or a shard set (named by any shard or its first).
#[pyfunction]
fn open(py: Python<'_>, path: PathBuf) -> PyResult<Packed> {
    let inner = py.detach(|| LoadedPacked::open(&path)).map_err(py_err)?;
    Ok(Packed { inner })
}

#[pymodule]
fn _cllm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CllmError", m.py().get_type::<CllmError>())?;
    m.add_class::<Packed>()?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    Ok(())
}
