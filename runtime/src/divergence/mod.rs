//! Where, and how much, a test model departs from a reference model on the same token streams.
//!
//! Both models run side by side through the [`Backend`] trait (the CPU [`Model`] implements it,
//! and the CUDA [`GpuModel`](crate::cuda::GpuModel), which traces only each layer's output).
//! [`measure`] takes prompts and evaluation windows and reports:
//!
//! - per position, teacher-forced on the reference's tokens: KL(P_ref || P_test) of the next-token
//!   distributions (softmax in f64), top-1 agreement, |Δp| of the stream's next token, and each
//!   model's negative log-likelihood (perplexity), as llama.cpp's `--kl-divergence` does;
//! - free-running greedy continuations of each prompt by each model and where they first part;
//! - per layer and per projection: relative error and cosine similarity of the test model's
//!   hidden states and projection outputs against the reference's ("in-model", errors carried from
//!   upstream included), and of each projection applied to the *reference's* input ("own": the
//!   error that tensor alone adds), so a report can name the tensor that breaks a model;
//! - KV-cache parity: cached decode against full recompute, for each model, bit for bit;
//! - bit-identity of the logits, which a lossless container must have.

use std::collections::HashMap;
use std::time::Instant;

use cllm_kernels::cpu::{matmul, swiglu};
use rayon::prelude::*;
use serde::Serialize;

use crate::config::LlamaConfig;
use crate::forward::{TraceKind, TracePoint, Tracer};
use crate::model::Model;

/// An error from a backend, boxed so that any backend's error type fits.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// A greedy continuation with the logits (from cached decode) that chose each token.
#[derive(Clone, Debug, Default)]
pub struct Greedy {
    pub tokens: Vec<u32>,
    /// `logits[i]` chose `tokens[i]`: the prompt's prefill for `i == 0`, decode steps after.
    pub logits: Vec<Vec<f32>>,
}

/// What a model must offer to be compared: per-position logits with traces, and cached greedy decoding.
pub trait Backend {
    fn config(&self) -> &LlamaConfig;

    /// Logits of every position of `tokens` from a fresh cache in one pass, reporting the
    /// intermediate tensors to `tracer` named as [`TracePoint`] documents.
    fn forward_traced(
        &self,
        tokens: &[u32],
        tracer: &mut Tracer<'_>,
    ) -> Result<Vec<Vec<f32>>, BackendError>;

    /// Greedy continuation of `prompt` through the KV cache (prefill, then one decode per token),
    /// stopping after `max_new` tokens or an `eos` token.
    fn greedy(&self, prompt: &[u32], max_new: usize, eos: &[u32]) -> Result<Greedy, BackendError>;

    /// Applies one projection (`model.layers.3.mlp.down_proj`, or `lm_head`) to `rows` input rows,
    /// bias included. `None` when the backend cannot run a projection alone; the report then has
    /// no "own error" column.
    fn project(
        &self,
        _module: &str,
        _input: &[f32],
        _rows: usize,
    ) -> Option<Result<Vec<f32>, BackendError>> {
        None
    }
}

/// The greedy loop every backend shares: from the prompt's last logits `first`, take the argmax
/// (keeping each step's logits, which KV-cache parity compares with the teacher-forced pass),
/// and feed it to `decode` until `max_new` tokens or an `eos` token.
pub(crate) fn greedy_loop<E: Into<BackendError>>(
    first: Vec<f32>,
    max_new: usize,
    eos: &[u32],
    mut decode: impl FnMut(u32) -> Result<Vec<f32>, E>,
) -> Result<Greedy, BackendError> {
    let mut g = Greedy::default();
    let mut logits = first;
    loop {
        let tok = argmax_lenient(&logits);
        g.tokens.push(tok);
        g.logits.push(logits);
        if g.tokens.len() >= max_new || eos.contains(&tok) {
            return Ok(g);
        }
        logits = decode(tok).map_err(Into::into)?;
    }
}

/// The most likely token; ties go to the lowest id and NaN never wins (a broken model must not
/// stop the report).
pub fn argmax_lenient(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}

impl Backend for Model {
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    fn forward_traced(
        &self,
        tokens: &[u32],
        tracer: &mut Tracer<'_>,
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        Ok(self.forward_all_traced(tokens, tracer)?)
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
        let (weight, bias) = if module == "lm_head" {
            (self.lm_head(), None)
        } else {
            let l: usize = module
                .strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            let layer = self.layers.get(l)?;
            let lin = [
                &layer.q_proj,
                &layer.k_proj,
                &layer.v_proj,
                &layer.o_proj,
                &layer.gate_proj,
                &layer.up_proj,
                &layer.down_proj,
            ]
            .into_iter()
            .find(|p| p.name == module)?;
            (&lin.weight, lin.bias.as_deref())
        };
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

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DivergenceError {
    #[error("{side} model, {stage}: {source}")]
    Backend {
        side: &'static str,
        stage: String,
        source: BackendError,
    },
    #[error("the models' vocabularies differ: reference {reference} tokens, test {test}")]
    VocabMismatch { reference: usize, test: usize },
    #[error("nothing to measure: no prompt and no evaluation window")]
    NoStreams,
    #[error("{what} {index} has no tokens")]
    EmptyStream { what: &'static str, index: usize },
    #[error("{side} model returned {rows} rows of logits for {tokens} tokens (each row must have {vocab} values)")]
    LogitShape {
        side: &'static str,
        rows: usize,
        tokens: usize,
        vocab: usize,
    },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Prompts: each is continued greedily by the reference; prompt plus continuation is a stream.
    pub prompts: Vec<Vec<u32>>,
    /// Evaluation windows: streams as they are.
    pub windows: Vec<Vec<u32>>,
    /// Tokens each model generates from each prompt.
    pub gen_tokens: usize,
    /// Generation stops after any of these.
    pub eos: Vec<u32>,
}

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

/// Error of one traced tensor, summed over every position of every stream.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorFigures {
    /// ‖test − ref‖ / ‖ref‖ over all values.
    pub rel_err: f64,
    /// Mean over positions of the cosine similarity of the two rows.
    pub cosine: f64,
    pub max_abs: f64,
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

/// Sums behind [`ErrorFigures`].
#[derive(Clone, Debug, Default)]
struct Acc {
    diff2: f64,
    ref2: f64,
    cos_sum: f64,
    rows: usize,
    max_abs: f64,
}

impl Acc {
    /// Adds `rows` rows of `width` values; mismatched lengths (models of different shapes) are skipped.
    fn add(&mut self, r: &[f32], t: &[f32], width: usize) {
        if r.len() != t.len() || width == 0 || !r.len().is_multiple_of(width) {
            return;
        }
        let parts: Vec<(f64, f64, f64, f64)> = r
            .par_chunks(width)
            .zip(t.par_chunks(width))
            .map(|(rr, tr)| {
                let (mut d2, mut n2, mut t2, mut dot, mut mx) = (0f64, 0f64, 0f64, 0f64, 0f64);
                for (&a, &b) in rr.iter().zip(tr) {
                    let (a, b) = (a as f64, b as f64);
                    let d = b - a;
                    d2 += d * d;
                    n2 += a * a;
                    t2 += b * b;
                    dot += a * b;
                    mx = mx.max(d.abs());
                }
                let cos = if n2 == 0.0 && t2 == 0.0 {
                    1.0
                } else if n2 == 0.0 || t2 == 0.0 {
                    0.0
                } else {
                    dot / (n2.sqrt() * t2.sqrt())
                };
                (d2, n2, cos, if d2.is_nan() { f64::NAN } else { mx })
            })
            .collect();
        for (d2, n2, cos, mx) in parts {
            self.diff2 += d2;
            self.ref2 += n2;
            self.cos_sum += cos;
            self.max_abs = if mx.is_nan() {
                f64::NAN
            } else {
                self.max_abs.max(mx)
            };
            self.rows += 1;
        }
    }

    fn figures(&self) -> ErrorFigures {
        let rel_err = if self.ref2 > 0.0 {
            (self.diff2 / self.ref2).sqrt()
        } else if self.diff2 == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        ErrorFigures {
            rel_err,
            cosine: if self.rows > 0 {
                self.cos_sum / self.rows as f64
            } else {
                1.0
            },
            max_abs: self.max_abs,
        }
    }
}

/// One position's figures.
#[derive(Clone, Copy, Debug)]
struct Pos {
    index: usize,
    /// Counted in the headline figures (see [`DivergenceReport::positions`]).
    scored: bool,
    kld: f64,
    top1: bool,
    /// `p_ref(next) − p_test(next)`, and each model's −log p(next).
    next: Option<(f64, f64, f64)>,
}

/// `max` and `log Σ exp(l − max)` of a row, in f64.
fn log_norm(l: &[f32]) -> (f64, f64) {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let s: f64 = l.iter().map(|&v| ((v as f64) - m).exp()).sum();
    (m, s.ln())
}

/// KL(P || Q) in nats, and the log-probabilities of `next` under both.
fn kl_row(p: &[f32], q: &[f32], next: Option<u32>) -> (f64, Option<(f64, f64)>) {
    let (mp, lp) = log_norm(p);
    let (mq, lq) = log_norm(q);
    let mut kl = 0f64;
    for (&a, &b) in p.iter().zip(q) {
        let la = a as f64 - mp - lp;
        let lb = b as f64 - mq - lq;
        let pa = la.exp();
        if pa > 0.0 {
            kl += pa * (la - lb);
        }
    }
    let next = next.and_then(|t| {
        let t = t as usize;
        (t < p.len() && t < q.len()).then(|| (p[t] as f64 - mp - lp, q[t] as f64 - mq - lq))
    });
    // Rounding can leave a tiny negative sum for identical rows; KL is never below zero.
    (kl.max(0.0), next)
}

/// Which reference trace point is the input of a projection module.
fn projection_input(module: &str) -> Option<String> {
    let (prefix, last) = module.rsplit_once('.')?;
    let layer = prefix.rsplit_once('.').map(|(p, _)| p)?;
    Some(match last {
        "q_proj" | "k_proj" | "v_proj" => format!("{layer}.input_layernorm"),
        "o_proj" => format!("{prefix}.attention"),
        "gate_proj" | "up_proj" => format!("{layer}.post_attention_layernorm"),
        // down_proj's input (SwiGLU of gate and up) is not traced; it is recomputed.
        "down_proj" => format!("{prefix}.act"),
        _ => return None,
    })
}

/// The reference's traced tensors of one stream, by name.
#[derive(Default)]
struct RefTrace {
    points: HashMap<String, (TraceKind, Option<usize>, usize, Vec<f32>)>,
    /// Projection modules in trace order.
    projections: Vec<String>,
}

fn record(store: &mut RefTrace, p: &TracePoint<'_>) {
    if p.kind == TraceKind::Logits {
        return; // the returned logits are the same values
    }
    if p.kind == TraceKind::Projection {
        store.projections.push(p.name.to_string());
    }
    store.points.insert(
        p.name.to_string(),
        (p.kind, p.layer, p.rows, p.data.to_vec()),
    );
}

/// Sums over all streams.
#[derive(Default)]
struct Totals {
    in_model: HashMap<String, (TraceKind, Option<usize>, Acc)>,
    own: HashMap<String, Acc>,
    own_supported: bool,
    order: Vec<String>,
    logits: Acc,
}

fn stage_err(side: &'static str, stage: String) -> impl FnOnce(BackendError) -> DivergenceError {
    move |source| DivergenceError::Backend {
        side,
        stage,
        source,
    }
}

/// Compares `test` with `reference` over `plan`; `progress` hears a line per stage.
pub fn measure(
    reference: &dyn Backend,
    test: &dyn Backend,
    plan: &Plan,
    progress: &mut dyn FnMut(&str),
) -> Result<DivergenceReport, DivergenceError> {
    let start = Instant::now();
    let (rv, tv) = (reference.config().vocab_size, test.config().vocab_size);
    if rv != tv {
        return Err(DivergenceError::VocabMismatch {
            reference: rv,
            test: tv,
        });
    }
    if plan.prompts.is_empty() && plan.windows.is_empty() {
        return Err(DivergenceError::NoStreams);
    }
    for (what, set) in [
        ("prompt", &plan.prompts),
        ("evaluation window", &plan.windows),
    ] {
        if let Some(index) = set.iter().position(Vec::is_empty) {
            return Err(DivergenceError::EmptyStream { what, index });
        }
    }

    let mut timing = Timing::default();
    let mut totals = Totals {
        own_supported: true,
        ..Totals::default()
    };
    let mut positions: Vec<(StreamKind, Pos)> = Vec::new();
    let mut streams = Vec::new();
    let mut greedy = Vec::new();
    let mut logits_id = LogitIdentity {
        identical: true,
        ..LogitIdentity::default()
    };
    let mut kv = KvParityPair {
        reference: KvParity {
            identical: true,
            ..KvParity::default()
        },
        test: KvParity {
            identical: true,
            ..KvParity::default()
        },
    };

    let jobs: Vec<(StreamKind, usize, &Vec<u32>)> = plan
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (StreamKind::Prompt, i, p))
        .chain(
            plan.windows
                .iter()
                .enumerate()
                .map(|(i, w)| (StreamKind::Eval, i, w)),
        )
        .collect();
    let n_jobs = jobs.len();
    for (job, (kind, index, tokens)) in jobs.into_iter().enumerate() {
        progress(&format!(
            "[{}/{n_jobs}] {} {index}",
            job + 1,
            match kind {
                StreamKind::Prompt => "prompt",
                StreamKind::Eval => "evaluation window",
            }
        ));
        // Build the stream: a prompt continues with the reference's greedy tokens.
        let t0 = Instant::now();
        let (stream, prompt_len, ref_greedy) = match kind {
            StreamKind::Prompt => {
                let g = reference
                    .greedy(tokens, plan.gen_tokens, &plan.eos)
                    .map_err(stage_err(
                        "reference",
                        format!("greedy from prompt {index}"),
                    ))?;
                let mut s = tokens.clone();
                s.extend_from_slice(&g.tokens);
                (s, tokens.len(), Some(g))
            }
            StreamKind::Eval => (tokens.clone(), 0, None),
        };
        timing.generate_seconds += t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let mut trace = RefTrace::default();
        let ref_logits = reference
            .forward_traced(&stream, &mut |p: &TracePoint<'_>| record(&mut trace, p))
            .map_err(stage_err(
                "reference",
                format!("forward on {kind:?} {index}"),
            ))?;
        let test_logits = test
            .forward_traced(&stream, &mut |p: &TracePoint<'_>| {
                if p.kind == TraceKind::Logits {
                    return;
                }
                if let Some((_, _, _, r)) = trace.points.get(p.name) {
                    if !totals.in_model.contains_key(p.name) {
                        totals.order.push(p.name.to_string());
                    }
                    let e = totals
                        .in_model
                        .entry(p.name.to_string())
                        .or_insert_with(|| (p.kind, p.layer, Acc::default()));
                    e.2.add(r, p.data, p.width());
                }
            })
            .map_err(stage_err("test", format!("forward on {kind:?} {index}")))?;
        timing.forward_seconds += t1.elapsed().as_secs_f64();
        for (side, l) in [("reference", &ref_logits), ("test", &test_logits)] {
            if l.len() != stream.len() || l.iter().any(|r| r.len() != rv) {
                return Err(DivergenceError::LogitShape {
                    side,
                    rows: l.len(),
                    tokens: stream.len(),
                    vocab: rv,
                });
            }
        }

        // The error each projection of the test model adds on its own, on the reference's input.
        let t2 = Instant::now();
        if totals.own_supported {
            own_errors(test, &trace, &stream, &ref_logits, &mut totals)?;
        }
        timing.own_error_seconds += t2.elapsed().as_secs_f64();

        // Per-position figures.
        let pos: Vec<Pos> = (0..stream.len())
            .into_par_iter()
            .map(|i| {
                let next = stream.get(i + 1).copied();
                let (kld, lp) = kl_row(&ref_logits[i], &test_logits[i], next);
                // The context part of a stream is run but not scored: a prompt's own tokens, and
                // the first half of an evaluation window (as llama.cpp's perplexity tool does).
                let from = match kind {
                    StreamKind::Prompt => prompt_len - 1,
                    StreamKind::Eval => stream.len() / 2,
                };
                Pos {
                    index: i,
                    scored: i >= from,
                    kld,
                    top1: argmax_lenient(&ref_logits[i]) == argmax_lenient(&test_logits[i]),
                    next: lp.map(|(a, b)| (a.exp() - b.exp(), -a, -b)),
                }
            })
            .collect();
        for (r, t) in ref_logits.iter().zip(&test_logits) {
            totals.logits.add(r, t, r.len());
            logits_id.positions += 1;
            if !bit_equal(r, t) {
                logits_id.identical = false;
                logits_id.positions_differing += 1;
                logits_id.max_abs_diff = nan_max(logits_id.max_abs_diff, max_abs_diff(r, t));
            }
        }
        let scored: Vec<&Pos> = pos
            .iter()
            .filter(|p| p.scored && p.next.is_some())
            .collect();
        streams.push(StreamSummary {
            kind,
            index,
            tokens: stream.len(),
            prompt_tokens: prompt_len,
            scored_positions: scored.len(),
            mean_kld: mean(scored.iter().map(|p| p.kld)),
            top1_agreement: mean(scored.iter().map(|p| f64::from(u8::from(p.top1)))),
        });
        positions.extend(pos.iter().filter(|p| p.next.is_some()).map(|p| (kind, *p)));

        // Greedy continuations, and KV-cache parity on them.
        if let Some(rg) = ref_greedy {
            let t3 = Instant::now();
            let tg = test
                .greedy(tokens, plan.gen_tokens, &plan.eos)
                .map_err(stage_err("test", format!("greedy from prompt {index}")))?;
            timing.generate_seconds += t3.elapsed().as_secs_f64();
            let first = first_divergence(&rg.tokens, &tg.tokens);
            // Cached logits of step j are recomputed at position prompt_len - 1 + j; the test's
            // prefix equals the stream's only up to its first divergence.
            parity(&mut kv.reference, &rg.logits, &ref_logits[prompt_len - 1..]);
            let upto = first.map_or(tg.logits.len(), |d| (d + 1).min(tg.logits.len()));
            parity(
                &mut kv.test,
                &tg.logits[..upto],
                &test_logits[prompt_len - 1..],
            );
            greedy.push(GreedyPair {
                prompt: tokens.clone(),
                reference: rg.tokens,
                test: tg.tokens,
                first_divergence: first,
            });
        }
    }

    let report = summarize(
        positions,
        streams,
        greedy,
        logits_id,
        kv,
        totals,
        reference.config(),
        timing,
        start,
    );
    Ok(report)
}

/// Runs every projection of the test model on the reference's traced inputs.
fn own_errors(
    test: &dyn Backend,
    trace: &RefTrace,
    stream: &[u32],
    ref_logits: &[Vec<f32>],
    totals: &mut Totals,
) -> Result<(), DivergenceError> {
    let mut modules: Vec<(String, String)> = trace
        .projections
        .iter()
        .filter_map(|m| projection_input(m).map(|i| (m.clone(), i)))
        .collect();
    modules.push(("lm_head".into(), "model.norm".into()));
    for (module, input_name) in modules {
        let act;
        let (input, rows): (&[f32], usize) = if let Some(mlp) = input_name.strip_suffix(".act") {
            // `model.layers.3.mlp.act`: SwiGLU of the reference's gate and up outputs.
            let (Some(g), Some(u)) = (
                trace.points.get(&format!("{mlp}.gate_proj")),
                trace.points.get(&format!("{mlp}.up_proj")),
            ) else {
                continue;
            };
            let mut a = vec![0f32; g.3.len()];
            if swiglu(&g.3, &u.3, &mut a).is_err() {
                continue;
            }
            act = a;
            (&act, g.2)
        } else {
            match trace.points.get(&input_name) {
                Some(p) => (&p.3, p.2),
                None => continue,
            }
        };
        let Some(out) = test.project(&module, input, rows) else {
            if module != "lm_head" {
                totals.own_supported = false;
                return Ok(());
            }
            continue;
        };
        let out = out.map_err(stage_err("test", format!("projection {module}")))?;
        let acc = totals.own.entry(module.clone()).or_default();
        if module == "lm_head" {
            // The LM head runs on every position here; compare row by row with the logits.
            let w = out.len() / rows.max(1);
            let first = stream.len().saturating_sub(rows);
            for (r, row) in ref_logits[first..].iter().zip(out.chunks_exact(w.max(1))) {
                acc.add(r, row, w);
            }
        } else if let Some(r) = trace.points.get(&module) {
            acc.add(&r.3, &out, out.len() / rows.max(1));
        }
    }
    Ok(())
}

fn bit_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| nan_max(m, (x as f64 - y as f64).abs()))
}

fn parity(p: &mut KvParity, cached: &[Vec<f32>], full: &[Vec<f32>]) {
    for (c, f) in cached.iter().zip(full) {
        p.positions += 1;
        if !bit_equal(c, f) {
            p.identical = false;
            p.positions_differing += 1;
            p.max_abs_diff = nan_max(p.max_abs_diff, max_abs_diff(c, f));
        }
    }
}

fn first_divergence(a: &[u32], b: &[u32]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0f64, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn set_summary(positions: &[&Pos], streams: usize) -> SetSummary {
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
fn summarize(
    positions: Vec<(StreamKind, Pos)>,
    streams: Vec<StreamSummary>,
    greedy: Vec<GreedyPair>,
    logits: LogitIdentity,
    kv_cache: KvParityPair,
    totals: Totals,
    cfg: &LlamaConfig,
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
        let Some((kind, layer, acc)) = totals.in_model.get(name) else {
            continue;
        };
        match kind {
            TraceKind::Projection | TraceKind::Embeddings => {}
            _ => continue,
        }
        let own = if *kind == TraceKind::Embeddings {
            // Same token ids in, so the in-model error is the tensor's own.
            Some(acc.figures())
        } else {
            totals.own.get(name).map(Acc::figures)
        };
        tensors.push(TensorError {
            tensor: format!("{name}.weight"),
            module: name.clone(),
            layer: *layer,
            in_model: acc.figures(),
            own,
        });
    }
    if let Some(acc) = totals.own.get("lm_head") {
        // The LM head's in-model output is the logits; its figures use the same sums.
        tensors.push(TensorError {
            tensor: if cfg.tie_word_embeddings {
                "model.embed_tokens.weight".into()
            } else {
                "lm_head.weight".into()
            },
            module: "lm_head".into(),
            layer: None,
            in_model: totals.logits.figures(),
            own: Some(acc.figures()),
        });
    }
    tensors.sort_by(|a, b| b.rank_err().total_cmp(&a.rank_err()));

    let mut layers: Vec<LayerError> = Vec::new();
    let mut prev = 0.0;
    for l in 0..cfg.num_hidden_layers {
        let Some((_, _, acc)) = totals.in_model.get(&format!("model.layers.{l}")) else {
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
            let (kind, layer, acc) = totals.in_model.get(name)?;
            Some(PointError {
                name: name.clone(),
                kind: format!("{kind:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_identical_rows_is_zero_and_of_different_rows_positive() {
        let p = [1.0f32, 2.0, 3.0, -1.0];
        let (k, n) = kl_row(&p, &p, Some(2));
        assert_eq!(k, 0.0);
        let (a, b) = n.unwrap();
        assert_eq!(a, b);
        let q = [3.0f32, 2.0, 1.0, -1.0];
        assert!(kl_row(&p, &q, None).0 > 0.1);
        // P = (1/4, 3/4), Q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2).
        let (k, _) = kl_row(&[0.0, 3f32.ln()], &[5.0, 5.0], None);
        let want = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
        assert!((k - want).abs() < 1e-7, "{k} vs {want}");
    }

    #[test]
    fn projection_inputs_follow_the_llama_block() {
        let f = |m: &str| projection_input(m).unwrap();
        assert_eq!(
            f("model.layers.3.self_attn.k_proj"),
            "model.layers.3.input_layernorm"
        );
        assert_eq!(
            f("model.layers.3.self_attn.o_proj"),
            "model.layers.3.self_attn.attention"
        );
        assert_eq!(
            f("model.layers.3.mlp.up_proj"),
            "model.layers.3.post_attention_layernorm"
        );
        assert_eq!(f("model.layers.3.mlp.down_proj"), "model.layers.3.mlp.act");
        assert!(projection_input("model.norm").is_none());
    }

    #[test]
    fn errors_and_percentiles() {
        let mut a = Acc::default();
        a.add(&[1.0, 0.0, 0.0, 2.0], &[1.0, 0.0, 0.0, 2.0], 2);
        assert_eq!(a.figures().rel_err, 0.0);
        assert_eq!(a.figures().cosine, 1.0);
        a.add(&[1.0, 0.0], &[0.0, 1.0], 2);
        assert!(a.figures().rel_err > 0.0);
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&s, 0.5), 2.0);
        assert_eq!(percentile(&s, 0.99), 4.0);
        assert_eq!(first_divergence(&[1, 2, 3], &[1, 2, 4]), Some(2));
        assert_eq!(first_divergence(&[1, 2], &[1, 2, 4]), Some(2));
        assert_eq!(first_divergence(&[1, 2], &[1, 2]), None);
        assert_eq!(argmax_lenient(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
    }
}
