//! Why the GPU cannot do something: every error says what was being done.

use cudarc::driver::DriverError;

/// Why the CUDA backend cannot do something.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libcuda could not be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver found (libcuda.so could not be loaded): this machine has no NVIDIA GPU driver; use --device cpu")]
    NoDriver,
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("CUDA {what}: {source}")]
    Driver { what: String, source: DriverError },
    #[error("{0}")]
    Compile(String),
    #[error(
        "not enough GPU memory for {what}: {needed} bytes needed, {free} bytes free (of {total})"
    )]
    OutOfMemory {
        what: String,
        needed: u64,
        free: u64,
        total: u64,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Kernel(String),
}

/// Attaches a description to a driver result.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, CudaError>;
}

impl<T> Ctx<T> for Result<T, DriverError> {
    fn ctx(self, what: impl Into<String>) -> Result<T, CudaError> {
        self.map_err(|source| CudaError::Driver {
            what: what.into(),
            source,
        })
    }
}
