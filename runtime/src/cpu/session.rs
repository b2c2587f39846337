//! A generation session on the CPU: a model plus its own KV cache, advanced by prefill and decode
//! calls.

use super::forward::Logits;
use super::kv_cache::KvCache;
use super::model::CpuModel;
use crate::error::ModelError;
use crate::trace::Tracer;

/// Incremental inference over one sequence. Logits are bit-identical to
/// [`CpuModel::forward_all`] on the whole sequence, however the sequence is split into calls.
#[derive(Debug)]
pub struct CpuSession<'m> {
    model: &'m CpuModel,
    cache: KvCache,
}

impl CpuModel {
    /// A session whose cache holds `capacity` positions (prompt plus generated tokens).
    pub fn session(&self, capacity: usize) -> Result<CpuSession<'_>, ModelError> {
        Ok(CpuSession {
            model: self,
            cache: KvCache::with_precision(&self.cfg, capacity, self.kv)?,
        })
    }
}

impl<'m> CpuSession<'m> {
    pub fn model(&self) -> &'m CpuModel {
        self.model
    }

    /// Number of tokens processed so far: the position the next token gets.
    pub fn position(&self) -> usize {
        self.cache.len()
    }

    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Forgets the sequence; the cache storage is kept.
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    /// Processes `tokens` in one batched pass; returns the logits of the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.model
            .forward_tokens(&mut self.cache, tokens, Logits::Last, None)
    }

    /// Processes `tokens` in one batched pass; returns the logits of every one of them.
    pub fn prefill_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        let flat = self
            .model
            .forward_tokens(&mut self.cache, tokens, Logits::All, None)?;
        Ok(flat
            .chunks_exact(self.model.lm_head().rows)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// [`CpuSession::prefill_all`], calling `tracer` with every intermediate tensor.
    pub fn prefill_traced(
        &mut self,
        tokens: &[u32],
        tracer: &mut Tracer<'_>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let flat = self
            .model
            .forward_tokens(&mut self.cache, tokens, Logits::All, Some(tracer))?;
        Ok(flat
            .chunks_exact(self.model.lm_head().rows)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Processes one token; returns its logits.
    pub fn decode(&mut self, token: u32) -> Result<Vec<f32>, ModelError> {
        self.model
            .forward_tokens(&mut self.cache, &[token], Logits::Last, None)
    }
}
