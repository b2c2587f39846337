//! cllm-model: one description of the model families cllm runs, read by every other crate.
//!
//! - [`family`]: the families (`model_type`, GGUF architecture, transformers class) and the
//!   variant flags that set them apart inside the shared decoder layer.
//! - [`config`]: `config.json` into a checked [`ModelConfig`] (the config mapping).
//! - [`tensors`]: every tensor a model has: what it is ([`TensorId`]), its Hugging Face and GGUF
//!   names, its shape and its [`Role`]. The only place tensor names are written (outside tests).
//! - [`flow`]: the decoder layer's data flow: the values a forward pass traces ([`Point`]), which
//!   input each projection reads, and the MLP's activation.
//!
//! Pure: no I/O, no kernels. The CPU and GPU models, divergence, the GGUF importer, the packing
//! presets and the synthetic fixtures derive from this crate, so a family is described once.
//! docs/ADDING_A_MODEL.md says where a new family touches it.

pub mod config;
pub mod family;
pub mod flow;
pub mod tensors;

pub use config::{AttentionKind, ConfigError, ModelConfig, Rope, RopeScaling};
pub use family::{Activation, Family};
pub use flow::{ActivationInputs, Point};
pub use tensors::{Module, Part, Role, TensorId, TensorSpec};
