//! The CUDA backend of the runtime: a GPU-resident [`GpuModel`], a [`GpuSession`] mirroring
//! the CPU [`Session`](crate::Session) (prefill, decode, bit-identical KV-cache decoding),
//! [`generate_gpu`] mirroring [`generate`](crate::generate), and the divergence
//! [`Backend`](crate::divergence::Backend) for `cllm verify --run --device cuda`.
//!
//! Logits agree with the CPU backend to float32 rounding (the reduction orders differ), and
//! on the GPU they do not depend on how a sequence is split into prefill and decode calls.

mod divergence;
mod generate;
mod model;
mod plan;
mod session;

pub use generate::generate_gpu;
pub use model::{GpuError, GpuModel};
pub use session::{GpuSession, LayerHook, PREFILL_CHUNK};
