//! cllm-runtime: a small Llama-family runtime on the CPU kernels of `cllm-kernels`.
//!
//! - [`config`]: `config.json` into a checked [`LlamaConfig`].
//! - [`model`]: weights by Hugging Face name into a [`Model`].
//! - [`forward`]: the forward pass, [`Model::forward_all`] and tracing.
//! - [`kv_cache`] and [`session`]: cached prefill/decode.
//! - [`sampler`] and [`generate`](mod@generate): choosing tokens and the generation loop.
//! - [`tokenizer`] and [`chat`]: text in and out.
//!
//! Logits are deterministic: bit-identical across prefill/decode splits and rayon thread counts.

pub mod chat;
pub mod config;
pub mod cuda;
pub mod divergence;
pub mod forward;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod sampler;
pub mod session;
pub mod tokenizer;

pub use chat::{ChatError, ChatMessage, ChatTemplate};
pub use config::{Architecture, ConfigError, LlamaConfig};
pub use forward::{HiddenStates, TraceKind, TracePoint, Tracer};
pub use generate::{generate, GenerateError, GenerateOptions, GenerationResult, StopReason};
pub use kv_cache::KvCache;
pub use model::{Model, ModelError};
pub use sampler::{argmax, Sampler, SamplerConfig, SamplerError, Xoshiro256};
pub use session::Session;
pub use tokenizer::{TextStream, Tokenizer, TokenizerError};
