//! The generation loop on the CPU: the sampler draws from each step's logits on the host.

use super::model::CpuModel;
use crate::generate::{drive, GenerateError, GenerateOptions, GenerationResult};
use crate::sampler::Sampler;

/// Generates up to `options.max_new_tokens` tokens after `prompt_ids`, calling `on_token` with
/// each one as soon as it is chosen (the stopping EOS id included).
pub fn generate(
    model: &CpuModel,
    prompt_ids: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32),
) -> Result<GenerationResult, GenerateError> {
    if prompt_ids.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let mut sampler = Sampler::new(options.sampler.clone())?;
    // The last generated token is never fed back, so the cache needs one slot less.
    let capacity = prompt_ids.len() + options.max_new_tokens.saturating_sub(1);
    let mut session = model.session(capacity)?;
    drive(
        &mut session,
        prompt_ids.len(),
        options,
        |s| s.prefill(prompt_ids).map_err(GenerateError::from),
        |logits: Vec<f32>| Ok(sampler.sample(&logits)?),
        |s, token| s.decode(token).map_err(GenerateError::from),
        on_token,
    )
}
