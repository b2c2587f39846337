//! The CPU backend: a [`CpuModel`] whose weights are in memory (quantized ones stay quantized),
//! its forward pass, KV cache and [`CpuSession`], generation, and the divergence
//! [`Backend`](crate::divergence::Backend) that traces every module output.
//!
//! Logits are deterministic: bit-identical across prefill/decode splits and rayon thread counts
//! (the kernels' contract, `cllm_kernels::cpu`).

mod divergence;
pub(crate) mod forward;
mod generate;
mod kv_cache;
mod model;
mod session;

pub use generate::generate;
pub use kv_cache::KvCache;
pub use model::CpuModel;
pub use session::CpuSession;
