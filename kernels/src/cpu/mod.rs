//! The CPU backend: deterministic f32 kernels for a Llama-family forward pass.
//!
//! Determinism is the contract of this module. Every dot product (a matrix row against a vector,
//! a query against a key, a vector against itself in RMSNorm) goes through [`dot::dot`] or its
//! multi-vector twin, which share one fixed reduction order (16 lane accumulators over
//! `chunks_exact(16)`, a fixed tree combine, then the tail in order). Work is split across
//! threads by output rows or by (token, head) only, never inside a reduction, so results do not
//! depend on the thread count, and a batched product gives each row exactly the bits the
//! single-vector product gives.
//!
//! SIMD: hot loops are compiled three times (baseline x86-64, AVX2, AVX-512) and picked at run
//! time. Every version performs the same IEEE operations lane by lane (no FMA contraction, which
//! Rust never does implicitly), so they produce identical bits; a faster version may only change
//! how values reach the lanes (int4 nibbles looked up in a per-group table of their values, four
//! weight rows side by side so one activation row is not held to an addition's latency), never
//! what is added in which order. Decision record 0022.
//!
//! Int8 weights multiply the activation row held in exact fixed point (module `fixed`): integer lane
//! sums, exact whatever the instructions (VNNI, AVX2 or plain loops), each rounded once to f32.
//! Decision record 0025. Int4 weights (group sizes a multiple of 8) follow in the same fixed point
//! (module `fixed4`, decision records 0026 and 0028), read from a layout of sixteen interleaved
//! rows that [`prepare`] makes at load (module `int4_blocks`).
//!
//! Parallel sections (blocks of weight rows, attention heads) run on [`pool`], whose workers spin
//! between the many short sections of a token instead of sleeping (decision record 0026).

pub mod activation;
pub mod attention;
pub mod decode;
pub mod dot;
pub mod embed;
pub mod error;
mod fixed;
mod fixed4;
mod fixed_task;
pub(crate) mod int4_blocks;
mod isa;
pub mod matmul;
pub mod norm;
pub mod pool;
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

use crate::weights::{Int4Blocks, Weight, WeightData};

/// `w` in the layout the CPU's kernels read fastest, with the same values: int4 weights whose
/// group size is a multiple of 8 as [`Int4Blocks`] (decision record 0028); anything else as it
/// is. The CPU runtime prepares every weight it loads.
pub fn prepare(w: Weight) -> Weight {
    let Weight { rows, cols, data } = w;
    let data = match data {
        WeightData::Int4 {
            packed,
            scales,
            mins,
            group_size,
        } => match Int4Blocks::from_rows(rows, cols, &packed, &scales, &mins, group_size) {
            Some(b) => WeightData::Int4Blocked(b),
            None => WeightData::Int4 {
                packed,
                scales,
                mins,
                group_size,
            },
        },
        other => other,
    };
    Weight { rows, cols, data }
}

#[cfg(test)]
pub(crate) mod testutil;
