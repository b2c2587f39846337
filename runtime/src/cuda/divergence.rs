//! The GPU model as a divergence [`Backend`]: teacher-forced logits with each decoder layer's
//! output hidden state, and greedy continuations through the KV cache, so `cllm verify --run
//! --device cuda` measures the models as the GPU runs them.
//!
//! The GPU's batched launches fuse a layer's norms, projections and attention, so only the
//! hidden state after each layer is traced (the CPU traces every module output too). The report
//! then has per-layer errors but no per-tensor attribution: [`Backend::project`] is not
//! offered, and `DivergenceReport::tensor_attribution` is false.

use cllm_model::{ModelConfig, Point};

use super::model::GpuModel;
use crate::divergence::{greedy_loop, Backend, BackendError, Greedy};
use crate::trace::{TracePoint, Tracer};

/// A layer hook's rows that do not fit the sequence traced (a session bug, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("layer {layer}: the GPU handed rows {start}..{end} of a {len}-token trace")]
struct TraceShape {
    layer: usize,
    start: usize,
    end: usize,
    len: usize,
}

impl Backend for GpuModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_traced(
        &self,
        tokens: &[u32],
        tracer: &mut Tracer<'_>,
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        // The session hands each layer's rows per prefill launch (up to PREFILL_CHUNK tokens);
        // the report compares whole sequences, so the rows are gathered first and each layer
        // is reported once over every position, as the CPU reports it.
        let (layers, hidden, n) = (
            self.cfg.num_hidden_layers,
            self.cfg.hidden_size,
            tokens.len(),
        );
        let mut states: Vec<Vec<f32>> = vec![Vec::new(); layers];
        let mut misfit: Option<TraceShape> = None;
        let logits = self.forward_all_traced(tokens, &mut |layer, start, rows, data: &[f32]| {
            let span = start * hidden..(start + rows) * hidden;
            let dst = states.get_mut(layer).and_then(|s| {
                if s.is_empty() {
                    s.resize(n * hidden, 0.0);
                }
                s.get_mut(span.clone())
            });
            match dst {
                Some(d) if d.len() == data.len() => d.copy_from_slice(data),
                _ => {
                    misfit.get_or_insert(TraceShape {
                        layer,
                        start,
                        end: start + rows,
                        len: n,
                    });
                }
            }
        })?;
        if let Some(m) = misfit {
            return Err(Box::new(m));
        }
        for (l, data) in states.iter().enumerate() {
            if data.is_empty() {
                continue;
            }
            let name = Point::LayerOutput.name(l);
            tracer(&TracePoint {
                point: Point::LayerOutput,
                layer: Some(l),
                name: &name,
                start_position: 0,
                rows: n,
                data,
            });
        }
        Ok(logits)
    }

    fn greedy(&self, prompt: &[u32], max_new: usize, eos: &[u32]) -> Result<Greedy, BackendError> {
        if max_new == 0 {
            return Ok(Greedy::default());
        }
        // Logits come back each step (KV-cache parity compares them), unlike `generate_gpu`.
        let mut session = self.session(prompt.len() + max_new)?;
        let first = session.prefill(prompt)?;
        greedy_loop(first, max_new, eos, |t| session.decode(t))
    }
}
