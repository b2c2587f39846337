//! The generation loop on the GPU.
//!
//! Both ways of choosing stay on the device. Greedy: the LM head's kernel keeps a running
//! argmax and the next step's embedding reads it. Sampling (temperature > 0): the
//! `sample_token` kernel draws from the step's logits with the CPU [`Sampler`]'s generator,
//! seeding and rules (kernels/cuda/sample.cu says what is bit-identical and what is only equal
//! up to f64 rounding) and writes the token where the next step reads it. Either way the host
//! only reads the small result to stream the token and stop at EOS; no logits come back.
//!
//! [`Sampler`]: crate::Sampler

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
    // The CPU sampler's checks of the configuration, for both paths.
    Sampler::new(options.sampler.clone())?;
    let greedy = options.sampler.is_greedy();
    let capacity = prompt_ids.len() + options.max_new_tokens.saturating_sub(1);
    let mut session = model.session(capacity)?;
    if !greedy {
        session.set_sampler(&options.sampler)?;
    }
    let mut generated = Vec::with_capacity(options.max_new_tokens);
    let mut stop_reason = StopReason::MaxTokens;
    let t0 = Instant::now();
    let mut next = None;
    if options.max_new_tokens > 0 {
        next = Some(if greedy {
            session.prefill(prompt_ids)?;
            session.argmax()?
        } else {
            session.prefill_sampled(prompt_ids)?
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
            session.decode_sampled()?
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
