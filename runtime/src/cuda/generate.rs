//! The generation loop on the GPU.
//!
//! Greedy decoding stays on the device: the LM head's kernel keeps a running argmax, the next
//! step's embedding reads it, and the host only reads the 8-byte result to stream the token and
//! stop at EOS. Sampling (temperature > 0) reads the logits back and draws with the CPU
//! [`Sampler`], so a seed gives the same choices as the CPU backend would on the same logits.

use std::time::{Duration, Instant};

use super::model::{GpuError, GpuModel};
use crate::generate::{GenerateOptions, GenerationResult, StopReason};
use crate::model::ModelError;
use crate::sampler::Sampler;

/// Generates up to `options.max_new_tokens` tokens after `prompt_ids` on the GPU, calling
/// `on_token` with each one as soon as it is chosen (the stopping EOS id included).
pub fn generate_gpu(
    model: &GpuModel,
    prompt_ids: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<GenerationResult, GpuError> {
    if prompt_ids.is_empty() {
        return Err(ModelError::EmptyInput.into());
    }
    let mut sampler = Sampler::new(options.sampler.clone())?;
    let greedy = options.sampler.is_greedy();
    let capacity = prompt_ids.len() + options.max_new_tokens.saturating_sub(1);
    let mut session = model.session(capacity)?;
    let mut generated = Vec::with_capacity(options.max_new_tokens);
    let mut stop_reason = StopReason::MaxTokens;
    let t0 = Instant::now();
    let mut next = None;
    if options.max_new_tokens > 0 {
        let logits = session.prefill(prompt_ids)?;
        next = Some(if greedy {
            session.argmax()?
        } else {
            sampler.sample(&logits)?
        });
    }
    let prefill_time = t0.elapsed();
    let mut decode_time = Duration::ZERO;
    let mut decode_steps = 0;
    while let Some(token) = next {
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
        next = Some(if greedy {
            session.decode_chained()?
        } else {
            let logits = session.decode(token)?;
            sampler.sample(&logits)?
        });
        decode_time += t.elapsed();
        decode_steps += 1;
    }
    Ok(GenerationResult::new(
        generated,
        stop_reason,
        prompt_ids.len(),
        prefill_time,
        decode_time,
        decode_steps,
    ))
}
