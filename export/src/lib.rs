//! cllm-export: a packed model (one container or a shard set) written in the form another engine
//! loads, without changing a weight: `gguf` for llama.cpp, `compressed_tensors` for vLLM and
//! SGLang. A tensor whose codec the target cannot carry exactly is refused by name, never
//! silently re-quantized; `--requantize` makes a lossy conversion explicit and measured.

pub mod compressed_tensors;
pub mod error;
pub mod gguf;

pub use error::ExportError;

/// What an export wrote, for the command's report.
#[derive(Clone, Debug, Default)]
pub struct ExportSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes written in all.
    pub bytes: u64,
    /// One line per thing the user should know (a tensor re-quantized and its measured error...).
    pub notes: Vec<String>,
}
