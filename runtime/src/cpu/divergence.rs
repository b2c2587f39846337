//! The CPU model as a divergence [`Backend`]: teacher-forced logits with every module's output
//! traced, greedy continuations through the KV cache, and each projection alone on a given
//! input, so reports can name the tensor that adds a layer's error.

use cllm_kernels::cpu::matmul;
use cllm_model::ModelConfig;

use super::forward::Logits;
use super::kv_cache::KvCache;
use super::model::CpuModel;
use crate::divergence::{greedy_loop, Backend, BackendError, Greedy};
use crate::trace::Tracer;

impl Backend for CpuModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_traced(
        &self,
        tokens: &[u32],
        tracer: &mut Tracer<'_>,
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        Ok(self.forward_all_traced(tokens, tracer)?)
    }

    fn trace_layers(&self, tokens: &[u32], tracer: &mut Tracer<'_>) -> Result<(), BackendError> {
        let mut cache = KvCache::with_precision(&self.cfg, tokens.len(), self.kv)?;
        self.forward_tokens(&mut cache, tokens, Logits::Last, Some(tracer))?;
        Ok(())
    }

    fn greedy(&self, prompt: &[u32], max_new: usize, eos: &[u32]) -> Result<Greedy, BackendError> {
        if max_new == 0 {
            return Ok(Greedy::default());
        }
        let mut session = self.session(prompt.len() + max_new)?;
        let first = session.prefill(prompt)?;
        greedy_loop(first, max_new, eos, |t| session.decode(t))
    }

    fn project(
        &self,
        module: &str,
        input: &[f32],
        rows: usize,
    ) -> Option<Result<Vec<f32>, BackendError>> {
        let (weight, bias) = self.projection(module)?;
        let mut out = vec![0f32; rows * weight.rows];
        if let Err(e) = matmul(weight, input, rows, &mut out) {
            return Some(Err(format!("{module}: {e}").into()));
        }
        if let Some(b) = bias {
            for row in out.chunks_exact_mut(b.len()) {
                for (o, &bv) in row.iter_mut().zip(b) {
                    *o += bv;
                }
            }
        }
        Some(Ok(out))
    }
}
