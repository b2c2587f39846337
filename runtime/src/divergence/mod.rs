//! Where, and how much, a test model departs from a reference model on the same token streams.
//!
//! Both models run side by side through the [`Backend`] trait (the CPU
//! [`CpuModel`](crate::cpu::CpuModel) implements it, and the CUDA
//! [`GpuModel`](crate::cuda::GpuModel), which traces only each layer's output). What each
//! projection reads, and the MLP's activation, come from the model description (`cllm-model`).
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

mod figures;
mod report;
pub mod run;
pub mod text;
pub mod weights;

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use cllm_model::{ActivationInputs, Family, ModelConfig, Module, Point};
use rayon::prelude::*;

use crate::cpu::forward::{activate, split_rows};
use crate::trace::{TracePoint, Tracer};
use figures::{bit_equal, first_divergence, kl_row, max_abs_diff, mean, nan_max};
use report::{summarize, Pos};
pub use report::{
    Criteria, DivergenceReport, ErrorFigures, GreedyPair, KvParity, KvParityPair, LayerError,
    LogitIdentity, PointError, SetSummary, Spread, StreamKind, StreamSummary, TensorError, Timing,
};
pub use run::{compare, CompareError, RunOutcome, RunSpec};
pub use weights::WeightDiff;

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
    fn config(&self) -> &ModelConfig;

    /// Logits of every position of `tokens` from a fresh cache in one pass, reporting the
    /// intermediate tensors to `tracer` named as [`TracePoint`] documents.
    fn forward_traced(
        &self,
        tokens: &[u32],
        tracer: &mut Tracer<'_>,
    ) -> Result<Vec<Vec<f32>>, BackendError>;

    /// [`Backend::forward_traced`] where only the layers' values are wanted: a backend may skip
    /// the final norm and LM head for every position but the last (calibration runs this).
    fn trace_layers(&self, tokens: &[u32], tracer: &mut Tracer<'_>) -> Result<(), BackendError> {
        self.forward_traced(tokens, tracer).map(|_| ())
    }

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

/// One traced value of the reference: what it is, its rows and values.
struct Traced {
    rows: usize,
    data: Vec<f32>,
}

/// The reference's traced tensors of one stream, by name.
#[derive(Default)]
struct RefTrace {
    points: HashMap<String, Traced>,
    /// Projections in trace order: module and layer.
    projections: Vec<(Module, usize)>,
}

fn record(store: &mut RefTrace, p: &TracePoint<'_>) {
    if p.point == Point::Logits {
        return; // the returned logits are the same values
    }
    if let (Point::Projection(m), Some(l)) = (p.point, p.layer) {
        store.projections.push((m, l));
    }
    store.points.insert(
        p.name.to_string(),
        Traced {
            rows: p.rows,
            data: p.data.to_vec(),
        },
    );
}

/// Sums over all streams.
#[derive(Default)]
struct Totals {
    in_model: HashMap<String, (Point, Option<usize>, figures::Acc)>,
    own: HashMap<String, figures::Acc>,
    own_supported: bool,
    order: Vec<String>,
    logits: figures::Acc,
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
                if p.point == Point::Logits {
                    return;
                }
                if let Some(r) = trace.points.get(p.name) {
                    if !totals.in_model.contains_key(p.name) {
                        totals.order.push(p.name.to_string());
                    }
                    let e = totals
                        .in_model
                        .entry(p.name.to_string())
                        .or_insert_with(|| (p.point, p.layer, figures::Acc::default()));
                    e.2.add(&r.data, p.data, p.width());
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

/// Runs every projection of the test model on the reference's traced inputs (what each reads,
/// and the activation, as the model description says).
fn own_errors(
    test: &dyn Backend,
    trace: &RefTrace,
    stream: &[u32],
    ref_logits: &[Vec<f32>],
    totals: &mut Totals,
) -> Result<(), DivergenceError> {
    let cfg = test.config();
    let (activation, family) = (cfg.activation, cfg.family);
    let mut modules: Vec<(Module, usize)> = trace.projections.clone();
    modules.push((Module::LmHead, 0));
    for (module, layer) in modules {
        let name = module.hf_name(layer);
        let Some(input_point) = family.input(module) else {
            continue;
        };
        let act;
        let (input, rows): (&[f32], usize) = if input_point == Point::Activation {
            // Not traced: formed from the reference's gate and up outputs.
            let Some((gate, up, rows)) = activation_parts(family, trace, layer) else {
                continue;
            };
            let mut a = vec![0f32; gate.len()];
            if activate(activation, &gate, &up, &mut a).is_err() {
                continue;
            }
            act = a;
            (&act, rows)
        } else {
            match trace.points.get(&input_point.name(layer)) {
                Some(p) => (&p.data, p.rows),
                None => continue,
            }
        };
        let Some(out) = test.project(&name, input, rows) else {
            if module != Module::LmHead {
                totals.own_supported = false;
                return Ok(());
            }
            continue;
        };
        let out = out.map_err(stage_err("test", format!("projection {name}")))?;
        let acc = totals.own.entry(name.clone()).or_default();
        if module == Module::LmHead {
            // The LM head runs on every position here; compare row by row with the logits.
            let w = out.len() / rows.max(1);
            let first = stream.len().saturating_sub(rows);
            for (r, row) in ref_logits[first..].iter().zip(out.chunks_exact(w.max(1))) {
                acc.add(r, row, w);
            }
        } else if let Some(r) = trace.points.get(&name) {
            acc.add(&r.data, &out, out.len() / rows.max(1));
        }
    }
    Ok(())
}

/// The reference's gate and up values of `layer` (a fused `gate_up_proj`'s rows split in
/// halves; separate projections' traces as they are), and their row count.
fn activation_parts(
    family: Family,
    trace: &RefTrace,
    layer: usize,
) -> Option<(Cow<'_, [f32]>, Cow<'_, [f32]>, usize)> {
    match family.activation_inputs() {
        ActivationInputs::Separate(gate, up) => {
            let g = trace.points.get(&gate.hf_name(layer))?;
            let u = trace.points.get(&up.hf_name(layer))?;
            Some((Cow::Borrowed(&g.data), Cow::Borrowed(&u.data), g.rows))
        }
        ActivationInputs::Fused(gate_up) => {
            let gu = trace.points.get(&gate_up.hf_name(layer))?;
            let half = gu.data.len() / gu.rows.max(1) / 2;
            let (mut g, mut u) = (Vec::new(), Vec::new());
            split_rows(&gu.data, gu.rows, &mut [&mut g, &mut u], &[half, half]);
            Some((Cow::Owned(g), Cow::Owned(u), gu.rows))
        }
    }
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
