//! Embedding lookup: one dequantized row of the embedding matrix per token id.

use super::error::KernelError;
use crate::weights::Weight;

/// Writes row `token` of `embeddings` (any storage form, int8 scale applied) into `out`.
pub fn embedding_row(embeddings: &Weight, token: u32, out: &mut [f32]) -> Result<(), KernelError> {
    embeddings.dequantize_row(token as usize, out)
}
