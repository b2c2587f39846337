//! cllm-runtime: the engine that runs a model described by `cllm-model` on a device.
//!
//! - [`engine`]: [`Engine::open`] takes a path (a `.cllm` file or a Hugging Face folder) onto a
//!   [`Device`] and gives one [`Model`]: config, tokenizer, weights and a backend behind one
//!   interface for sessions, generation and divergence tracing.
//! - [`cpu`] and [`cuda`]: the two backends, each a model, its sessions (prefill, decode,
//!   bit-identical KV-cache decoding) and its generation loop.
//! - [`generate`](mod@generate), [`sampler`]: what to generate and how tokens are chosen.
//! - [`tokenizer`] and [`chat`]: text in and out.
//! - [`trace`] and [`divergence`]: the values a forward pass hands out, and where and how much a
//!   test model departs from a reference.
//!
//! Logits are deterministic: bit-identical across prefill/decode splits and, on the CPU, rayon
//! thread counts.

pub mod calibrate;
pub mod chat;
pub mod cpu;
pub mod cuda;
pub mod divergence;
pub mod engine;
pub mod error;
pub mod generate;
pub mod kv;
pub mod sampler;
mod tensors;
pub mod tokenizer;
pub mod trace;

pub use chat::{ChatError, ChatMessage, ChatTemplate};
pub use engine::{Device, Engine, EngineError, LoadStats, Model, OpenOptions, Session};
pub use error::ModelError;
pub use generate::{GenerateError, GenerateOptions, GenerationResult, StopReason};
pub use kv::KvPrecision;
pub use sampler::{argmax, Sampler, SamplerConfig, SamplerError, Xoshiro256};
pub use tokenizer::{TextStream, Tokenizer, TokenizerError};
pub use trace::{HiddenStates, TracePoint, Tracer};
