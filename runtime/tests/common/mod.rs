//! Small random Llama models built in memory with a seeded generator, shared by the tests.
#![allow(dead_code)]

use std::collections::HashMap;

use cllm_kernels::{Weight, WeightData};
use cllm_model::ModelConfig;
use cllm_runtime::cpu::CpuModel;
use half::{bf16, f16};

/// splitmix64: a tiny seeded generator for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n)
            .map(|_| (self.next_u64() % vocab as u64) as u32)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Form {
    F32,
    Bf16,
    F16,
    Int8,
    /// Group-wise int8, groups of 32 (the test model's widths, 64 and 96, are multiples of 32).
    Int8Group,
    Int4,
}

pub const FORMS: [Form; 6] = [
    Form::F32,
    Form::Bf16,
    Form::F16,
    Form::Int8,
    Form::Int8Group,
    Form::Int4,
];

/// A random matrix with entries of magnitude about `amp`.
pub fn matrix(rng: &mut Rng, rows: usize, cols: usize, amp: f32, form: Form) -> Weight {
    let n = rows * cols;
    let mut vals = || (0..n).map(|_| rng.f32() * amp).collect::<Vec<f32>>();
    let data = match form {
        Form::F32 => WeightData::F32(vals()),
        Form::Bf16 => WeightData::Bf16(vals().into_iter().map(bf16::from_f32).collect()),
        Form::F16 => WeightData::F16(vals().into_iter().map(f16::from_f32).collect()),
        Form::Int8 => WeightData::Int8Row {
            q: (0..n)
                .map(|_| ((rng.next_u64() % 255) as i16 - 127) as i8)
                .collect(),
            scales: (0..rows)
                .map(|_| amp / 127.0 * (0.5 + rng.f32().abs()))
                .collect(),
        },
        Form::Int8Group => {
            let gs = 32;
            WeightData::Int8Group {
                q: (0..n)
                    .map(|_| ((rng.next_u64() % 255) as i16 - 127) as i8)
                    .collect(),
                scales: (0..rows * (cols / gs))
                    .map(|_| amp / 127.0 * (0.5 + rng.f32().abs()))
                    .collect(),
                group_size: gs,
            }
        }
        Form::Int4 => {
            let gs = 32;
            let groups = rows * cols.div_ceil(gs);
            WeightData::Int4 {
                packed: (0..n / 2).map(|_| rng.next_u64() as u8).collect(),
                scales: (0..groups)
                    .map(|_| f16::from_f32(2.0 * amp / 15.0))
                    .collect(),
                mins: (0..groups)
                    .map(|_| f16::from_f32(-amp * (1.0 + 0.1 * rng.f32())))
                    .collect(),
                group_size: gs,
            }
        }
    };
    Weight { rows, cols, data }
}

/// A norm weight near 1.
pub fn norm_weight(rng: &mut Rng, len: usize) -> Weight {
    Weight {
        rows: 1,
        cols: len,
        data: WeightData::Bf16(
            (0..len)
                .map(|_| bf16::from_f32(1.0 + 0.2 * rng.f32()))
                .collect(),
        ),
    }
}

/// The test model's config: 2 layers, hidden 64, 4 heads, 2 kv heads, head_dim 16,
/// intermediate 96, vocab 300.
pub fn config_json(tied: bool) -> String {
    format!(
        r#"{{
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 300,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": {tied},
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu"
    }}"#
    )
}

/// Every tensor of a model of `cfg`, with matrices in `form`.
pub fn weights(cfg: &ModelConfig, form: Form, seed: u64) -> HashMap<String, Weight> {
    let mut rng = Rng(seed);
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let mut m = HashMap::new();
    m.insert(
        "model.embed_tokens.weight".to_string(),
        matrix(&mut rng, v, h, 1.0, form),
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let a = 1.0 / (h as f32).sqrt() * 1.7;
        m.insert(
            format!("{p}.input_layernorm.weight"),
            norm_weight(&mut rng, h),
        );
        m.insert(
            format!("{p}.self_attn.q_proj.weight"),
            matrix(&mut rng, qd, h, a, form),
        );
        m.insert(
            format!("{p}.self_attn.k_proj.weight"),
            matrix(&mut rng, kvd, h, a, form),
        );
        m.insert(
            format!("{p}.self_attn.v_proj.weight"),
            matrix(&mut rng, kvd, h, a, form),
        );
        m.insert(
            format!("{p}.self_attn.o_proj.weight"),
            matrix(&mut rng, h, qd, a, form),
        );
        m.insert(
            format!("{p}.post_attention_layernorm.weight"),
            norm_weight(&mut rng, h),
        );
        m.insert(
            format!("{p}.mlp.gate_proj.weight"),
            matrix(&mut rng, i, h, a, form),
        );
        m.insert(
            format!("{p}.mlp.up_proj.weight"),
            matrix(&mut rng, i, h, a, form),
        );
        m.insert(
            format!("{p}.mlp.down_proj.weight"),
            matrix(&mut rng, h, i, 1.0 / (i as f32).sqrt() * 1.7, form),
        );
    }
    m.insert("model.norm.weight".to_string(), norm_weight(&mut rng, h));
    if !cfg.tie_word_embeddings {
        m.insert(
            "lm_head.weight".to_string(),
            matrix(&mut rng, v, h, 1.0 / (h as f32).sqrt(), form),
        );
    }
    m
}

pub fn model(tied: bool, form: Form, seed: u64) -> CpuModel {
    let cfg = ModelConfig::from_json(&config_json(tied)).unwrap();
    let w = weights(&cfg, form, seed);
    CpuModel::new(cfg, w).unwrap()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
