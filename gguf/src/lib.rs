//! cllm-gguf: a GGUF v3 (and v2) reader and a GGUF → Hugging Face importer.
//!
//! * [`GgufFile::parse`] is a pure, bounded parser over a byte slice: reads
//!   go through a cursor that never indexes out of bounds, sizes use checked
//!   arithmetic, and every count is checked against [`Limits`] and against
//!   the bytes left in the file before anything is allocated for it.
//! * [`dequant`] converts F32/F16/BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//!   Q5_K and Q6_K blocks to f32.
//! * [`import`] writes a Hugging Face folder (bf16 `model.safetensors`,
//!   `config.json`, `generation_config.json`, `tokenizer.json`,
//!   `tokenizer_config.json`, `chat_template.jinja`) from a GGUF of any family
//!   `cllm-model` describes (its names, shapes, permuted rows and norm offsets
//!   come from that description; [`HyperParams`] and the `hparams` module map
//!   each family's hyper-parameters to its transformers `config.json`).
//! * [`tokenizer`] rebuilds `tokenizer.json` from `tokenizer.ggml.*`: byte-level
//!   BPE (`gpt2`) and SentencePiece BPE with byte fallback (`llama`).

pub mod dequant;
mod error;
mod hparams;
mod import;
mod reader;
pub mod tokenizer;
mod types;
pub mod writer;

pub use error::GgufError;
pub use hparams::HyperParams;
pub use import::{
    f32_to_bf16_bytes, hf_tensor_name, import, import_with, permute_rows, unpermute_rows,
    ImportOptions, ImportSummary, RowPermutation,
};
pub use reader::{
    GgufFile, Limits, MetaArray, MetaValue, Metadata, TensorInfo, ValueType, DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
};
pub use types::{GgmlType, QK_K};
