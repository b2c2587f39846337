//! A whole divergence run, as `cllm verify --run` and `cllm diff --run` make it: the two models'
//! weights compared tensor by tensor, both models built on the engine's device from weights
//! decoded once, the token streams chosen (built-in and given prompts, windows of the evaluation
//! text), [`measure`](super::measure)d, and judged against the criteria.

use std::time::Instant;

use cllm_loader::LoadedModel;
use serde::Serialize;

use super::text::{self, TextError};
use super::weights::{self, WeightDiff};
use super::{measure, Criteria, DivergenceError, DivergenceReport, Plan};
use crate::engine::{Engine, EngineError, OpenOptions};
use crate::kv::KvPrecision;
use crate::tokenizer::Tokenizer;

/// What to run the two models on, and how to judge them.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Prompts added to the built-in set (`--prompts FILE`: [`text::read_prompts`]).
    pub prompts: Vec<String>,
    /// Include the built-in prompts.
    pub builtin_prompts: bool,
    /// Tokens each model generates greedily from each prompt.
    pub gen_tokens: usize,
    /// The text scored teacher-forced: the embedded specification, or the user's own.
    pub eval_text: text::EvalText,
    /// Tokens per evaluation window.
    pub window_tokens: usize,
    /// Fail when the mean KL divergence, in nats, exceeds this.
    pub max_kld: Option<f64>,
    /// Fail when the top-1 agreement is below this.
    pub min_top1: Option<f64>,
    /// The test model's KV cache (`--kv-cache`); the reference's is always f32, so the same
    /// model on both sides measures what the cache setting alone costs.
    pub kv_cache: KvPrecision,
}

/// Why a run could not be made (usage and I/O errors; failed checks are in the outcome).
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error("neither {reference} nor {test} has a tokenizer.json")]
    NoTokenizer { reference: String, test: String },
    #[error("{test} against {reference}: {source}")]
    Measure {
        reference: String,
        test: String,
        source: DivergenceError,
    },
    #[error("decoding a continuation: {0}")]
    Decode(crate::tokenizer::TokenizerError),
}

/// Whether both sides are lossless, and so must give bit-identical logits.
#[derive(Clone, Debug, Serialize)]
pub struct Lossless {
    pub reference: bool,
    pub test: bool,
    pub logits_must_be_identical: bool,
}

/// How each side's KV cache stored keys and values.
#[derive(Clone, Debug, Serialize)]
pub struct KvCacheSetting {
    pub reference: String,
    pub test: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CriteriaJson {
    pub max_kld: Option<f64>,
    pub min_top1: Option<f64>,
    pub logits_must_be_identical: bool,
    pub kv_cache_must_be_identical: bool,
}

/// A greedy pair as text: the shared part and where each continuation goes from there.
#[derive(Clone, Debug, Serialize)]
pub struct GreedyText {
    pub prompt: String,
    pub first_divergence: Option<usize>,
    pub generated: usize,
    pub shared: String,
    pub reference: String,
    pub test: String,
}

/// Everything a divergence run produced, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct RunOutcome {
    pub reference: String,
    pub test: String,
    pub device: String,
    /// The GPU's name, on `cuda`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// What this run did not measure, and why, one sentence each.
    pub notes: Vec<String>,
    pub ok: bool,
    pub failures: Vec<String>,
    pub lossless: Lossless,
    /// The KV cache settings (`--kv-cache` sets the test's; the reference's is f32).
    pub kv_cache: KvCacheSetting,
    pub criteria: CriteriaJson,
    pub prompts: Vec<String>,
    /// Where the evaluation windows come from: the embedded text, or the `--eval-text` file.
    pub eval_text: String,
    pub eval_windows: usize,
    pub window_tokens: usize,
    pub gen_tokens: usize,
    pub greedy_text: Vec<GreedyText>,
    pub weights: WeightDiff,
    pub divergence: DivergenceReport,
    /// Wall time including loading both models.
    pub seconds: f64,
    /// The HTML report written, if any.
    pub report: Option<String>,
}

/// Runs `test` against `reference` on `engine`'s device, as `spec` says; `progress` hears a
/// line per stage. Each model's weights are used as loaded: compared on the CPU, then built on
/// the device (moved into the CPU model, or copied to the GPU).
pub fn compare(
    engine: &Engine,
    reference: LoadedModel,
    test: LoadedModel,
    spec: &RunSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<RunOutcome, CompareError> {
    let start = Instant::now();
    let loading = reference.load_seconds + test.load_seconds;
    let weights = weights::compare(&reference.weights, &test.weights);
    let opts = OpenOptions::default();
    let reference = engine.build(reference, &opts)?;
    let mut test = engine.build(test, &opts)?;
    test.set_kv_cache(spec.kv_cache)?;
    let (ref_name, test_name) = (
        reference.path().display().to_string(),
        test.path().display().to_string(),
    );
    let tok: &Tokenizer =
        reference
            .tokenizer()
            .or(test.tokenizer())
            .ok_or_else(|| CompareError::NoTokenizer {
                reference: ref_name.clone(),
                test: test_name.clone(),
            })?;

    let mut prompts: Vec<String> = Vec::new();
    if spec.builtin_prompts {
        prompts.extend(text::BUILTIN_PROMPTS.iter().map(|p| p.to_string()));
    }
    prompts.extend(spec.prompts.iter().cloned());
    let plan = Plan {
        prompts: text::encode_prompts(tok, &prompts)?,
        windows: spec.eval_text.windows(tok, spec.window_tokens)?,
        gen_tokens: spec.gen_tokens,
        eos: reference.eos_token_ids().to_vec(),
    };
    let report =
        measure(reference.backend(), test.backend(), &plan, progress).map_err(|source| {
            CompareError::Measure {
                reference: ref_name.clone(),
                test: test_name.clone(),
                source,
            }
        })?;
    progress("");

    // A rounded cache changes the test's logits even with the same weights.
    let must_identical =
        reference.is_lossless() && test.is_lossless() && spec.kv_cache == KvPrecision::F32;
    let failures = report.failures(&Criteria {
        max_kld: spec.max_kld,
        min_top1: spec.min_top1,
        require_identical: must_identical,
    });
    let mut notes = Vec::new();
    if !report.tensor_attribution {
        notes.push(format!(
            "per-tensor attribution was not measured: the {} backend traces only each decoder \
             layer's output, so the error is placed by layer (and the weights are compared \
             tensor by tensor); --device cpu names the tensor that adds it",
            engine.device()
        ));
    }
    if spec.kv_cache != KvPrecision::F32 {
        notes.push(format!(
            "the test model's KV cache stores {} (the reference's f32): its figures include the \
             cache's rounding, and its KV parity is checked within that setting",
            spec.kv_cache
        ));
    }
    Ok(RunOutcome {
        reference: ref_name,
        test: test_name,
        device: engine.device().to_string(),
        gpu: engine.gpu().map(|g| g.info().name.clone()),
        notes,
        ok: failures.is_empty(),
        failures,
        lossless: Lossless {
            reference: reference.is_lossless(),
            test: test.is_lossless(),
            logits_must_be_identical: must_identical,
        },
        kv_cache: KvCacheSetting {
            reference: reference.kv_cache().to_string(),
            test: test.kv_cache().to_string(),
        },
        criteria: CriteriaJson {
            max_kld: spec.max_kld,
            min_top1: spec.min_top1,
            logits_must_be_identical: must_identical,
            kv_cache_must_be_identical: true,
        },
        greedy_text: greedy_texts(tok, &prompts, &report)?,
        prompts,
        eval_text: spec.eval_text.source(),
        eval_windows: plan.windows.len(),
        window_tokens: spec.window_tokens,
        gen_tokens: spec.gen_tokens,
        weights,
        divergence: report,
        seconds: loading + start.elapsed().as_secs_f64(),
        report: None,
    })
}

fn greedy_texts(
    tok: &Tokenizer,
    prompts: &[String],
    r: &DivergenceReport,
) -> Result<Vec<GreedyText>, CompareError> {
    let dec = |ids: &[u32]| tok.decode(ids, false).map_err(CompareError::Decode);
    r.greedy
        .iter()
        .zip(prompts)
        .map(|(g, p)| {
            let d = g.first_divergence.unwrap_or(g.reference.len());
            let d_ref = d.min(g.reference.len());
            Ok(GreedyText {
                prompt: p.clone(),
                first_divergence: g.first_divergence,
                generated: g.reference.len(),
                shared: dec(&g.reference[..d_ref])?,
                reference: dec(&g.reference[d_ref..])?,
                test: dec(&g.test[d.min(g.test.len())..])?,
            })
        })
        .collect()
}
