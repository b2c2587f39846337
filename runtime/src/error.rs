//! Why a model could not be built or run: errors every backend shares, each naming the tensor,
//! token or position it is about.

use cllm_kernels::cpu::KernelError;

/// Why a model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` is {rows}x{cols}, expected {expected_rows}x{expected_cols}")]
    Shape {
        name: String,
        expected_rows: usize,
        expected_cols: usize,
        rows: usize,
        cols: usize,
    },
    #[error("tensor `{name}`: {source}")]
    InvalidWeight { name: String, source: KernelError },
    #[error("token id {token} is out of range for vocab_size {vocab_size}")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error("no tokens given")]
    EmptyInput,
    #[error(
        "KV cache full: capacity {capacity}, at position {position}, {requested} more requested"
    )]
    CacheFull {
        capacity: usize,
        position: usize,
        requested: usize,
    },
    #[error(
        "KV cache capacity {capacity} exceeds max_position_embeddings {max_position_embeddings}"
    )]
    CapacityTooLarge {
        capacity: usize,
        max_position_embeddings: usize,
    },
    #[error("KV cache: {reason}")]
    KvCacheForm { reason: String },
    #[error("kernel error: {0}")]
    Kernel(#[from] KernelError),
}
