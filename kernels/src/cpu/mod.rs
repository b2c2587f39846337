//! The CPU backend: deterministic f32 kernels for a Llama-family forward pass.
//!
//! Determinism is the contract of this module. Every dot product (a matrix row against a vector,
//! a query against a key, a vector against itself in RMSNorm) goes through [`dot::dot`] or its
//! multi-vector twin, which share one fixed reduction order (16 lane accumulators over
//! `chunks_exact(16)`, a fixed tree combine, then the tail in order). Work is split across rayon
//! threads by output rows or by (token, head) only, never inside a reduction, so results do not
//! depend on the thread count, and a batched product gives each row exactly the bits the
//! single-vector product gives.
//!
//! SIMD: inner loops are written to autovectorize; hot loops are compiled twice (baseline x86-64
//! and AVX2) and picked at run time. Both versions perform the same IEEE operations lane by lane
//! (no FMA contraction, which Rust never does implicitly), so they produce identical bits.

pub mod activation;
pub mod attention;
pub mod decode;
pub mod dot;
pub mod embed;
pub mod error;
mod isa;
pub mod matmul;
pub mod norm;
pub mod rope;
mod rows;

pub use activation::{geglu_tanh, gelu_tanh, silu, softmax_in_place, swiglu};
pub use attention::attend;
pub use dot::{dot, LANES};
pub use embed::embedding_row;
pub use error::KernelError;
pub use matmul::{gemv, matmul, matmul_many};
pub use norm::{rms_norm, RmsNorm};
pub use rope::{inv_freq, RopeTable};

#[cfg(test)]
pub(crate) mod testutil;
