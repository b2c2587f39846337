//! Errors of an export, each naming the tensor or file.

use std::path::PathBuf;

use cllm_loader::LoadError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExportError {
    /// The target format cannot carry this tensor's codec exactly.
    #[error("tensor {tensor}: {reason}")]
    Refused { tensor: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The model itself (config, tokenizer, family) cannot be expressed in the target format.
    #[error("{0}")]
    Unsupported(String),
}

impl ExportError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ExportError {
        ExportError::Io {
            path: path.into(),
            source,
        }
    }
}
