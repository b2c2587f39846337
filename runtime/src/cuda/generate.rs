//! The generation loop on the GPU.
//!
//! Both ways of choosing stay on the device. Greedy: the LM head's kernel keeps a running
//! argmax and the next step's embedding reads it. Sampling (temperature > 0): the
//! `sample_token` kernel draws from the step's logits with the CPU [`Sampler`]'s generator,
//! seeding and rules (kernels/src/cuda/sample.cu says what is bit-identical and what is only equal
//! up to f64 rounding) and writes the token where the next step reads it. Either way the host
//! only reads the small result to stream the token and stop at EOS; no logits come back.
//!
//! [`Sampler`]: crate::Sampler

use super::model::{GpuError, GpuModel};
use crate::error::ModelError;
use crate::generate::{drive, GenerateOptions, GenerationResult};
use crate::sampler::Sampler;

/// Generates up to `options.max_new_tokens` tokens after `prompt_ids` on the GPU, calling
/// `on_token` with each one as soon as it is chosen (the stopping EOS id included).
pub fn generate_gpu(
    model: &GpuModel,
    prompt_ids: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32),
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
    // The draw (argmax or sample) happens on the device with each forward pass, so it is timed
    // with the pass, and the loop's `choose` only takes the token.
    drive(
        &mut session,
        prompt_ids.len(),
        options,
        |s| {
            if greedy {
                s.prefill(prompt_ids)?;
                s.argmax()
            } else {
                s.prefill_sampled(prompt_ids)
            }
        },
        Ok,
        |s, _token| {
            // The token is already where the step reads it.
            if greedy {
                s.decode_chained()
            } else {
                s.decode_sampled()
            }
        },
        on_token,
    )
}
