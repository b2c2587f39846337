//! Prefill and decode speed of a randomly initialized model with SmolLM2-135M's shapes (bf16).
//!
//! Run: `cargo run -p cllm-runtime --release --example bench_smollm2 [-- PROMPT_LEN DECODE_TOKENS]`;
//! threads: `RAYON_NUM_THREADS`.

use std::collections::HashMap;
use std::time::Instant;

use cllm_kernels::{Weight, WeightData};
use cllm_model::{ModelConfig, Role};
use cllm_runtime::cpu::{generate, CpuModel};
use cllm_runtime::{GenerateOptions, SamplerConfig};
use half::bf16;

const CONFIG: &str = r#"{"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
  "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
  "rms_norm_eps": 1e-5, "rope_theta": 100000, "max_position_embeddings": 8192,
  "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}"#;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let prompt_len = args.first().copied().unwrap_or(128);
    let decode = args.get(1).copied().unwrap_or(64);
    let cfg = ModelConfig::from_json(CONFIG).unwrap();
    let mut seed = 1u32;
    let mut mat = |rows: usize, cols: usize, amp: f32| {
        let data = (0..rows * cols)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                bf16::from_f32(((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * amp)
            })
            .collect();
        Weight {
            rows,
            cols,
            data: WeightData::Bf16(data),
        }
    };
    // Every tensor the description gives the config: norms around one, matrices scaled by their
    // input width.
    let w: HashMap<String, Weight> = cfg
        .tensors()
        .into_iter()
        .map(|t| {
            let (rows, cols) = t.id.module.rows_cols(&cfg);
            let amp = match t.id.module.role() {
                Role::Norm | Role::Embedding => 1.0,
                _ => 1.7 / (cols as f32).sqrt(),
            };
            (t.name, mat(rows, cols, amp))
        })
        .collect();
    let model = CpuModel::new(cfg, w).unwrap();
    println!(
        "{} rayon threads, weights {:.1} MB",
        rayon::current_num_threads(),
        model.resident_bytes() as f64 / 1e6
    );
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|t| (t * 7919) % 49152).collect();
    let opts = GenerateOptions {
        max_new_tokens: decode,
        sampler: SamplerConfig::greedy(),
        eos_token_ids: vec![],
    };
    generate(
        &model,
        &prompt[..prompt_len.min(8)],
        &GenerateOptions {
            max_new_tokens: 4,
            ..opts.clone()
        },
        |_| {},
    )
    .unwrap();
    let t = Instant::now();
    let r = generate(&model, &prompt, &opts, |_| {}).unwrap();
    println!(
        "prompt {prompt_len}: prefill {:.1} ms ({:.1} tok/s); decode {} steps {:.1} ms ({:.1} tok/s, {:.2} GB/s of weights); total {:.1} ms",
        r.prefill_time.as_secs_f64() * 1e3,
        r.prefill_tokens_per_second,
        r.decode_steps,
        r.decode_time.as_secs_f64() * 1e3,
        r.decode_tokens_per_second,
        r.decode_tokens_per_second * model.resident_bytes() as f64 / 1e9,
        t.elapsed().as_secs_f64() * 1e3
    );
}
