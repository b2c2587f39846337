//! Generation: what to generate, what came out, and the loop every backend runs (prefill the
//! prompt, then choose and decode one token at a time). The backends' loops are
//! `cpu::generate` and `cuda::generate_gpu`; [`crate::Model::generate`] picks the one its
//! device has.

use std::time::{Duration, Instant};

use cllm_model::ModelConfig;

use crate::error::ModelError;
use crate::sampler::{SamplerConfig, SamplerError};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("empty prompt: at least one token is needed to start from")]
    EmptyPrompt,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Upper bound on generated tokens (the EOS token, if produced, counts).
    pub max_new_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops right after producing any of these (usually the config's `eos_token_ids`).
    pub eos_token_ids: Vec<u32>,
}

impl GenerateOptions {
    /// Greedy decoding that stops at the config's EOS ids.
    pub fn greedy(cfg: &ModelConfig, max_new_tokens: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            sampler: SamplerConfig::greedy(),
            eos_token_ids: cfg.eos_token_ids.clone(),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// This EOS id was generated (it is the last of `generated_ids`).
    Eos(u32),
    /// `max_new_tokens` were generated.
    MaxTokens,
}

/// The generated tokens and how long it took.
#[derive(Clone, Debug)]
pub struct GenerationResult {
    /// Generated ids, in order, including the EOS id that stopped generation (as transformers).
    pub generated_ids: Vec<u32>,
    pub stop_reason: StopReason,
    pub prompt_tokens: usize,
    /// Time for the prompt's forward pass (which also yields the first token's logits).
    pub prefill_time: Duration,
    /// Time for all single-token forward passes.
    pub decode_time: Duration,
    /// Single-token forward passes run (usually `generated_ids.len() - 1`).
    pub decode_steps: usize,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

impl GenerationResult {
    /// A result with its rates derived from the counts and times.
    pub(crate) fn new(
        generated_ids: Vec<u32>,
        stop_reason: StopReason,
        prompt_tokens: usize,
        prefill_time: Duration,
        decode_time: Duration,
        decode_steps: usize,
    ) -> GenerationResult {
        GenerationResult {
            generated_ids,
            stop_reason,
            prompt_tokens,
            prefill_time,
            decode_time,
            decode_steps,
            prefill_tokens_per_second: per_second(prompt_tokens, prefill_time),
            decode_tokens_per_second: per_second(decode_steps, decode_time),
        }
    }
}

fn per_second(count: usize, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        count as f64 / s
    } else {
        0.0
    }
}

/// The loop of `cpu::generate` and `cuda::generate_gpu`: `prefill` runs the prompt (timed as
/// prefill), `choose` takes a token from what a forward pass left (not timed), `decode` feeds a
/// token back (timed as decode). Each token goes to `on_token` as soon as it is chosen;
/// generation stops right after an EOS id or at `max_new_tokens`, and the last token is never
/// fed back.
pub(crate) fn drive<S, T, E>(
    session: &mut S,
    prompt_tokens: usize,
    options: &GenerateOptions,
    prefill: impl FnOnce(&mut S) -> Result<T, E>,
    mut choose: impl FnMut(T) -> Result<u32, E>,
    mut decode: impl FnMut(&mut S, u32) -> Result<T, E>,
    mut on_token: impl FnMut(u32),
) -> Result<GenerationResult, E> {
    let mut generated = Vec::with_capacity(options.max_new_tokens);
    let mut stop_reason = StopReason::MaxTokens;
    let t0 = Instant::now();
    let mut out = if options.max_new_tokens > 0 {
        Some(prefill(session)?)
    } else {
        None
    };
    let prefill_time = t0.elapsed();
    let mut decode_time = Duration::ZERO;
    let mut decode_steps = 0;
    while let Some(o) = out.take() {
        let token = choose(o)?;
        generated.push(token);
        on_token(token);
        if options.eos_token_ids.contains(&token) {
            stop_reason = StopReason::Eos(token);
            break;
        }
        if generated.len() == options.max_new_tokens {
            break;
        }
        let t = Instant::now();
        out = Some(decode(session, token)?);
        decode_time += t.elapsed();
        decode_steps += 1;
    }
    Ok(GenerationResult::new(
        generated,
        stop_reason,
        prompt_tokens,
        prefill_time,
        decode_time,
        decode_steps,
    ))
}
