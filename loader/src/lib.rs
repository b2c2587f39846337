//! cllm-loader: from disk to a backend's memory. `hf` reads Hugging Face folders, `cllm` reads
//! containers, `model` gives the runtime one entry point for both.

pub mod cllm;
pub mod error;
pub mod gpu;
pub mod hf;
pub mod model;

pub use error::LoadError;
pub use model::{load_cpu, LoadedModel, ModelFiles, SourceKind};
