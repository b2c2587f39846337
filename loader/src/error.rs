//! Errors of loading a model, each naming the file or tensor.

use std::path::{Path, PathBuf};

use cllm_format::{Dtype, FormatError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: FormatError },
    #[error(transparent)]
    Hf(#[from] crate::hf::HfError),
    #[error("tensor {tensor}: dtype {dtype} cannot be used as a weight (bf16, f16, f32 only)")]
    UnsupportedDtype { tensor: String, dtype: Dtype },
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },
}

impl LoadError {
    pub fn io(path: &Path, e: std::io::Error) -> LoadError {
        LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}
