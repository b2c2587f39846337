//! Generation: what to generate, what came out, and the loop every backend runs (prefill the
//! prompt, then choose and decode one token at a time). The backends' loops are
//! `cpu::generate` and `cuda::generate_gpu`; [`crate::Model::generate`] picks the one its
//! device has. [`generate_scored`] runs the same loop over a [`Session`] with the logits on the
//! host, for the log-probabilities of each step; [`generation_config_eos`] reads the EOS ids of
//! `generation_config.json`, which transformers stops at.

use std::time::{Duration, Instant};

use cllm_model::ModelConfig;

use crate::engine::{EngineError, Session};
use crate::error::ModelError;
use crate::sampler::{LogSoftmax, Sampler, SamplerConfig, SamplerError};

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
    /// One per generated token when asked for ([`generate_scored`]), else empty.
    pub logprobs: Vec<TokenLogprobs>,
}

/// The log-probabilities of one generated position, from the raw logits.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The token chosen.
    pub id: u32,
    /// The chosen token's log-probability.
    pub logprob: f64,
    /// The most likely tokens with their log-probabilities, most likely first (ties to the
    /// lower id, so greedy decoding chose the first).
    pub top: Vec<(u32, f64)>,
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
            logprobs: Vec::new(),
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

/// Generation over `session` (sized for the prompt and `options.max_new_tokens - 1` more), with
/// the `top` most likely tokens' log-probabilities at each generated position. The tokens are
/// chosen on the host by [`Sampler`], as `cpu::generate` chooses them; on the GPU the logits
/// are copied back at each step, which the device-side loop avoids.
pub(crate) fn generate_scored(
    session: &mut Session<'_>,
    prompt_ids: &[u32],
    options: &GenerateOptions,
    top: usize,
    on_token: impl FnMut(u32),
) -> Result<GenerationResult, EngineError> {
    let sampler_err = |e: SamplerError| EngineError::from(GenerateError::from(e));
    if prompt_ids.is_empty() {
        return Err(GenerateError::EmptyPrompt.into());
    }
    if !(1..=crate::sampler::MAX_TOP_LOGPROBS).contains(&top) {
        return Err(sampler_err(SamplerError::TopLogprobs(top)));
    }
    let mut sampler = Sampler::new(options.sampler.clone()).map_err(sampler_err)?;
    let mut logprobs = Vec::with_capacity(options.max_new_tokens);
    let mut result = drive(
        session,
        prompt_ids.len(),
        options,
        |s| s.prefill(prompt_ids),
        |logits: Vec<f32>| {
            let id = sampler.sample(&logits).map_err(sampler_err)?;
            let ls = LogSoftmax::new(&logits).map_err(sampler_err)?;
            logprobs.push(TokenLogprobs {
                id,
                logprob: ls.logprob(id),
                top: ls.top(top).map_err(sampler_err)?,
            });
            Ok(id)
        },
        |s, token| s.decode(token),
        on_token,
    )?;
    result.logprobs = logprobs;
    Ok(result)
}

/// Why `generation_config.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GenerationConfigError {
    #[error("generation_config.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("generation_config.json is not a JSON object")]
    NotObject,
    #[error(
        "generation_config.json: `eos_token_id` should be a token id or a list of them, got {0}"
    )]
    EosTokenId(String),
}

/// The EOS ids `generation_config.json` names (`eos_token_id`: an id or a list, such as Llama 3
/// Instruct's `[128001, 128009]`); `None` where it names none (absent, null or an empty list),
/// so that `config.json`'s apply.
pub fn generation_config_eos(json: &[u8]) -> Result<Option<Vec<u32>>, GenerationConfigError> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let o = v.as_object().ok_or(GenerationConfigError::NotObject)?;
    let id = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| GenerationConfigError::EosTokenId(v.to_string()))
    };
    let ids = match o.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Array(items)) => {
            items.iter().map(id).collect::<Result<Vec<u32>, _>>()?
        }
        Some(v) => vec![id(v)?],
    };
    Ok((!ids.is_empty()).then_some(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_eos_takes_an_id_or_a_list() {
        let eos = |s: &str| generation_config_eos(s.as_bytes());
        assert_eq!(eos(r#"{"eos_token_id": 2}"#).unwrap(), Some(vec![2]));
        assert_eq!(
            eos(r#"{"eos_token_id": [128001, 128009]}"#).unwrap(),
            Some(vec![128001, 128009])
        );
        assert_eq!(eos(r#"{"bos_token_id": 1}"#).unwrap(), None);
        assert_eq!(eos(r#"{"eos_token_id": null}"#).unwrap(), None);
        assert_eq!(eos(r#"{"eos_token_id": []}"#).unwrap(), None);
        for bad in [
            r#"{"eos_token_id": -1}"#,
            r#"{"eos_token_id": "2"}"#,
            r#"{"eos_token_id": [1, 4294967296]}"#,
            "[1]",
            "{not json",
        ] {
            let e = eos(bad).unwrap_err().to_string();
            assert!(e.contains("generation_config.json"), "{bad}: {e}");
        }
    }
}
