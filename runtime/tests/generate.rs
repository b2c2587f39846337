//! The generation loop on a small random model.

mod common;

use cllm_runtime::cpu::generate;
use cllm_runtime::{GenerateOptions, SamplerConfig, StopReason};
use common::{model, Form};

#[test]
fn greedy_generation_matches_manual_argmax_loop() {
    let m = model(true, Form::Bf16, 31);
    let prompt = [5u32, 17, 42, 99];
    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampler: SamplerConfig::greedy(),
        eos_token_ids: vec![],
    };
    let mut streamed = Vec::new();
    let r = generate(&m, &prompt, &opts, |t| streamed.push(t)).unwrap();
    assert_eq!(r.generated_ids, streamed);
    assert_eq!(r.generated_ids.len(), 10);
    assert_eq!(r.stop_reason, StopReason::MaxTokens);
    assert_eq!(r.decode_steps, 9);
    assert_eq!(r.prompt_tokens, 4);
    // The same tokens from full forward passes.
    let mut seq = prompt.to_vec();
    for &t in &r.generated_ids {
        let logits = m.forward_all(&seq).unwrap();
        assert_eq!(cllm_runtime::argmax(logits.last().unwrap()).unwrap(), t);
        seq.push(t);
    }
}

#[test]
fn stops_at_eos_and_sampling_is_reproducible() {
    let m = model(false, Form::Int8, 32);
    let prompt = [3u32, 1, 4, 1, 5];
    let first = generate(&m, &prompt, &GenerateOptions::greedy(m.config(), 3), |_| {})
        .unwrap()
        .generated_ids;
    let eos = first[2];
    let k = first.iter().position(|&t| t == eos).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 20,
        sampler: SamplerConfig::greedy(),
        eos_token_ids: vec![eos],
    };
    let r = generate(&m, &prompt, &opts, |_| {}).unwrap();
    assert_eq!(r.generated_ids, first[..=k]);
    assert_eq!(r.stop_reason, StopReason::Eos(eos));

    let opts = GenerateOptions {
        max_new_tokens: 15,
        sampler: SamplerConfig {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            seed: 1234,
        },
        eos_token_ids: vec![],
    };
    let a = generate(&m, &prompt, &opts, |_| {}).unwrap();
    let b = generate(&m, &prompt, &opts, |_| {}).unwrap();
    assert_eq!(a.generated_ids, b.generated_ids);
    assert!(a.decode_tokens_per_second > 0.0 && a.prefill_tokens_per_second > 0.0);
    assert!(generate(&m, &[], &opts, |_| {}).is_err());
}
