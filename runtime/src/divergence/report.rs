//! What a divergence measurement reports, how its figures are summarized, and the pass/fail
//! criteria CI judges them by.

use cllm_model::{ModelConfig, Module, Point, TensorId};
use serde::Serialize;
use std::time::Instant;

pub use super::figures::ErrorFigures;
use super::figures::{mean, percentile, Acc};
use super::Totals;

/// Which set a stream came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Prompt,
    Eval,
}

/// KLD summary over positions.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Figures of one stream.
#[derive(Clone, Debug, Serialize)]
pub struct StreamSummary {
    pub kind: StreamKind,
    /// Index within its set.
    pub index: usize,
    pub tokens: usize,
    pub prompt_tokens: usize,
    pub scored_positions: usize,
    pub mean_kld: f64,
    pub top1_agreement: f64,
}

/// Figures of one set of streams (prompts, or evaluation text).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SetSummary {
    pub streams: usize,
    pub positions: usize,
    pub mean_kld: f64,
    pub top1_agreement: f64,
    pub ppl_reference: f64,
    pub ppl_test: f64,
    pub ppl_ratio: f64,
}

/// Free-running greedy continuations of one prompt.
#[derive(Clone, Debug, Serialize)]
pub struct GreedyPair {
    pub prompt: Vec<u32>,
    pub reference: Vec<u32>,
    pub test: Vec<u32>,
    /// Index (into the continuations) of the first token that differs; `None` when equal.
    pub first_divergence: Option<usize>,
}

/// Error of the hidden state after one decoder layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerError {
    pub layer: usize,
    #[serde(flatten)]
    pub figures: ErrorFigures,
    /// `rel_err` minus the previous layer's: how much error this layer added.
    pub growth: f64,
    /// The layer's tensor with the largest own error, and that error.
    pub worst_tensor: Option<String>,
    pub worst_own_rel_err: Option<f64>,
}

/// Error of one weight tensor's output.
#[derive(Clone, Debug, Serialize)]
pub struct TensorError {
    /// The weight (`model.layers.3.mlp.down_proj.weight`).
    pub tensor: String,
    /// The module whose output is measured (`model.layers.3.mlp.down_proj`, `lm_head`).
    pub module: String,
    pub layer: Option<usize>,
    /// The test model's output in its own run against the reference's: upstream error included.
    pub in_model: ErrorFigures,
    /// The test tensor applied to the reference's input: the error this tensor alone adds.
    pub own: Option<ErrorFigures>,
}

impl TensorError {
    /// The figure tensors are ranked by: own error when measured, else in-model error.
    pub fn rank_err(&self) -> f64 {
        self.own
            .as_ref()
            .map_or(self.in_model.rel_err, |o| o.rel_err)
    }
}

/// In-model error of one traced tensor.
#[derive(Clone, Debug, Serialize)]
pub struct PointError {
    pub name: String,
    pub kind: String,
    pub layer: Option<usize>,
    #[serde(flatten)]
    pub figures: ErrorFigures,
}

/// Cached decode against full recompute, for one model.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KvParity {
    pub positions: usize,
    pub identical: bool,
    pub positions_differing: usize,
    pub max_abs_diff: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KvParityPair {
    pub reference: KvParity,
    pub test: KvParity,
}

/// Bit-identity of the two models' logits over every position.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogitIdentity {
    pub identical: bool,
    pub positions: usize,
    pub positions_differing: usize,
    pub max_abs_diff: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timing {
    pub generate_seconds: f64,
    pub forward_seconds: f64,
    pub own_error_seconds: f64,
    pub total_seconds: f64,
}

/// Everything [`measure`] found.
#[derive(Clone, Debug, Serialize)]
pub struct DivergenceReport {
    /// Mean KL(P_ref || P_test) over every scored position, in nats.
    pub mean_kld: f64,
    /// Fraction of positions where both models' most likely next token is the same.
    pub top1_agreement: f64,
    pub kld: Spread,
    /// RMS over positions of p_ref(next) − p_test(next), the stream's next token.
    pub rms_dp: f64,
    pub ppl_reference: f64,
    pub ppl_test: f64,
    /// `ppl_test / ppl_reference`.
    pub ppl_ratio: f64,
    /// Scored positions: in a prompt stream, those that predict a generated token (the prompt
    /// is context); in an evaluation window, its second half (the first half is context, as in
    /// llama.cpp's `llama-perplexity --kl-divergence`). Every figure above is over these.
    pub positions: usize,
    pub prompts: SetSummary,
    pub eval: SetSummary,
    /// The same figures over every position that has a next token, context included.
    pub every_position: SetSummary,
    pub streams: Vec<StreamSummary>,
    /// Mean KLD at each position index (scored or not), over the streams long enough to have it.
    pub kld_by_position: Vec<f64>,
    pub greedy: Vec<GreedyPair>,
    pub logits: LogitIdentity,
    pub kv_cache: KvParityPair,
    /// Per decoder layer, in order.
    pub layers: Vec<LayerError>,
    /// The first layer whose output hidden state differs at all from the reference's.
    pub first_divergent_layer: Option<usize>,
    /// Per weight tensor, largest error first.
    pub tensors: Vec<TensorError>,
    /// Whether error was attributed to single tensors: the backends traced each projection and
    /// the test backend ran each alone on the reference's input. False for a backend that
    /// traces only each layer's output (the CUDA one): `layers` holds the per-layer errors,
    /// `tensors` and the layers' `worst_tensor` are then empty, not "no error".
    pub tensor_attribution: bool,
    /// In-model error of every traced tensor (norms and attention outputs included), in trace order.
    pub points: Vec<PointError>,
    pub timing: Timing,
}

/// Pass/fail bounds.
#[derive(Clone, Debug, Default)]
pub struct Criteria {
    pub max_kld: Option<f64>,
    pub min_top1: Option<f64>,
    /// Both sides lossless: logits must be bit-identical.
    pub require_identical: bool,
}

impl DivergenceReport {
    /// The checks that fail, each one sentence. KV-cache parity is always required.
    pub fn failures(&self, c: &Criteria) -> Vec<String> {
        let mut f = Vec::new();
        if let Some(max) = c.max_kld {
            // A NaN mean fails too.
            if self.mean_kld.is_nan() || self.mean_kld > max {
                f.push(format!(
                    "mean KLD {:.6} exceeds --max-kld {max}",
                    self.mean_kld
                ));
            }
        }
        if let Some(min) = c.min_top1 {
            if self.top1_agreement.is_nan() || self.top1_agreement < min {
                f.push(format!(
                    "top-1 agreement {:.4} is below --min-top1 {min}",
                    self.top1_agreement
                ));
            }
        }
        if c.require_identical && !self.logits.identical {
            f.push(format!(
                "lossless models must give bit-identical logits: {} of {} positions differ (max |Δlogit| {:.3e})",
                self.logits.positions_differing, self.logits.positions, self.logits.max_abs_diff
            ));
        }
        for (side, p) in [
            ("reference", &self.kv_cache.reference),
            ("test", &self.kv_cache.test),
        ] {
            if !p.identical {
                f.push(format!(
                    "{side} model: cached decode differs from full recompute at {} of {} positions (max |Δlogit| {:.3e})",
                    p.positions_differing, p.positions, p.max_abs_diff
                ));
            }
        }
        f
    }

    /// Tensors ranked by the error they add, largest first (the order of `tensors`).
    pub fn worst_tensors(&self, n: usize) -> &[TensorError] {
        &self.tensors[..n.min(self.tensors.len())]
    }

    /// Layers ranked by the error they add (growth), largest first.
    pub fn worst_layers(&self, n: usize) -> Vec<&LayerError> {
        let mut v: Vec<&LayerError> = self.layers.iter().collect();
        v.sort_by(|a, b| b.growth.total_cmp(&a.growth).then(a.layer.cmp(&b.layer)));
        v.truncate(n);
        v
    }
}

/// One position's figures.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pos {
    pub index: usize,
    /// Counted in the headline figures (see [`DivergenceReport::positions`]).
    pub scored: bool,
    pub kld: f64,
    pub top1: bool,
    /// `p_ref(next) − p_test(next)`, and each model's −log p(next).
    pub next: Option<(f64, f64, f64)>,
}

pub(super) fn set_summary(positions: &[&Pos], streams: usize) -> SetSummary {
    let nll = |f: fn(&(f64, f64, f64)) -> f64| {
        mean(positions.iter().filter_map(|p| p.next.as_ref().map(f)))
    };
    let (ppl_reference, ppl_test) = (nll(|n| n.1).exp(), nll(|n| n.2).exp());
    SetSummary {
        streams,
        positions: positions.len(),
        mean_kld: mean(positions.iter().map(|p| p.kld)),
        top1_agreement: mean(positions.iter().map(|p| f64::from(u8::from(p.top1)))),
        ppl_reference,
        ppl_test,
        ppl_ratio: ppl_test / ppl_reference,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn summarize(
    positions: Vec<(StreamKind, Pos)>,
    streams: Vec<StreamSummary>,
    greedy: Vec<GreedyPair>,
    logits: LogitIdentity,
    kv_cache: KvParityPair,
    totals: Totals,
    cfg: &ModelConfig,
    mut timing: Timing,
    start: Instant,
) -> DivergenceReport {
    let every: Vec<&Pos> = positions.iter().map(|(_, p)| p).collect();
    let all: Vec<&Pos> = positions
        .iter()
        .filter(|(_, p)| p.scored)
        .map(|(_, p)| p)
        .collect();
    let of = |k: StreamKind| -> Vec<&Pos> {
        positions
            .iter()
            .filter(|(kind, p)| *kind == k && p.scored)
            .map(|(_, p)| p)
            .collect()
    };
    let count = |k: StreamKind| streams.iter().filter(|s| s.kind == k).count();
    let overall = set_summary(&all, streams.len());
    let mut sorted: Vec<f64> = all.iter().map(|p| p.kld).collect();
    sorted.sort_by(f64::total_cmp);
    let kld = Spread {
        mean: overall.mean_kld,
        p50: percentile(&sorted, 0.50),
        p90: percentile(&sorted, 0.90),
        p99: percentile(&sorted, 0.99),
        max: sorted.last().copied().unwrap_or(0.0),
    };
    let rms_dp = mean(all.iter().filter_map(|p| p.next.map(|n| n.0 * n.0))).sqrt();
    let longest = every.iter().map(|p| p.index + 1).max().unwrap_or(0);
    let mut by_pos = vec![(0f64, 0usize); longest];
    for p in &every {
        by_pos[p.index].0 += p.kld;
        by_pos[p.index].1 += 1;
    }
    let kld_by_position = by_pos
        .into_iter()
        .map(|(s, n)| if n > 0 { s / n as f64 } else { 0.0 })
        .collect();

    // Per-tensor table: projections, the embeddings and the LM head.
    let mut tensors: Vec<TensorError> = Vec::new();
    for name in &totals.order {
        let Some((point, layer, acc)) = totals.in_model.get(name) else {
            continue;
        };
        let (weight, own) = match point {
            // Same token ids in, so the in-model error is the tensor's own.
            Point::Embeddings => (TensorId::weight(Module::Embed, None), Some(acc.figures())),
            Point::Projection(m) => (
                TensorId::weight(*m, *layer),
                totals.own.get(name).map(Acc::figures),
            ),
            _ => continue,
        };
        tensors.push(TensorError {
            tensor: weight.hf_name(),
            module: name.clone(),
            layer: *layer,
            in_model: acc.figures(),
            own,
        });
    }
    let head = Module::LmHead.hf_name(0);
    if let Some(acc) = totals.own.get(&head) {
        // The LM head's in-model output is the logits; its figures use the same sums.
        let weight = if cfg.tie_word_embeddings {
            Module::Embed
        } else {
            Module::LmHead
        };
        tensors.push(TensorError {
            tensor: TensorId::weight(weight, None).hf_name(),
            module: head,
            layer: None,
            in_model: totals.logits.figures(),
            own: Some(acc.figures()),
        });
    }
    tensors.sort_by(|a, b| b.rank_err().total_cmp(&a.rank_err()));

    let mut layers: Vec<LayerError> = Vec::new();
    let mut prev = 0.0;
    for l in 0..cfg.num_hidden_layers {
        let Some((_, _, acc)) = totals.in_model.get(&Point::LayerOutput.name(l)) else {
            continue;
        };
        let figures = acc.figures();
        let worst = tensors
            .iter()
            .filter(|t| t.layer == Some(l) && t.own.is_some())
            .max_by(|a, b| a.rank_err().total_cmp(&b.rank_err()));
        layers.push(LayerError {
            layer: l,
            growth: figures.rel_err - prev,
            worst_tensor: worst.map(|t| t.tensor.clone()),
            worst_own_rel_err: worst.map(TensorError::rank_err),
            figures: figures.clone(),
        });
        prev = figures.rel_err;
    }

    let points = totals
        .order
        .iter()
        .filter_map(|name| {
            let (point, layer, acc) = totals.in_model.get(name)?;
            Some(PointError {
                name: name.clone(),
                kind: point.kind().to_string(),
                layer: *layer,
                figures: acc.figures(),
            })
        })
        .collect();
    timing.total_seconds = start.elapsed().as_secs_f64();
    let (pk, ek) = (of(StreamKind::Prompt), of(StreamKind::Eval));
    DivergenceReport {
        mean_kld: overall.mean_kld,
        top1_agreement: overall.top1_agreement,
        kld,
        rms_dp,
        ppl_reference: overall.ppl_reference,
        ppl_test: overall.ppl_test,
        ppl_ratio: overall.ppl_ratio,
        positions: overall.positions,
        prompts: set_summary(&pk, count(StreamKind::Prompt)),
        eval: set_summary(&ek, count(StreamKind::Eval)),
        every_position: set_summary(&every, streams.len()),
        streams,
        kld_by_position,
        greedy,
        logits,
        kv_cache,
        first_divergent_layer: layers
            .iter()
            .find(|l| l.figures.rel_err != 0.0)
            .map(|l| l.layer),
        layers,
        tensor_attribution: totals.own_supported && !totals.own.is_empty(),
        tensors,
        points,
        timing,
    }
}
