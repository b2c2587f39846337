//! The forward pass against an independent, naive f64 implementation of the Llama architecture
//! (HF semantics: rotate-half RoPE, GQA with kv head = head / group, causal softmax attention,
//! SwiGLU MLP, RMSNorm), on the same dequantized weights.

mod common;

use std::collections::HashMap;

use cllm_kernels::Weight;
use cllm_model::ModelConfig;
use cllm_runtime::cpu::CpuModel;
use common::{matrix, weights, Form, Rng};

struct Ref {
    cfg: ModelConfig,
    w: HashMap<String, (usize, usize, Vec<f64>)>,
}

impl Ref {
    fn new(cfg: &ModelConfig, weights: &HashMap<String, Weight>) -> Ref {
        let w = weights
            .iter()
            .map(|(k, v)| {
                let vals = v.to_f32_vec().unwrap().into_iter().map(f64::from).collect();
                (k.clone(), (v.rows, v.cols, vals))
            })
            .collect();
        Ref {
            cfg: cfg.clone(),
            w,
        }
    }

    fn vec(&self, name: &str) -> &[f64] {
        &self.w[name].2
    }

    fn linear(&self, module: &str, x: &[f64]) -> Vec<f64> {
        let (rows, cols, w) = &self.w[&format!("{module}.weight")];
        let mut y: Vec<f64> = (0..*rows)
            .map(|r| (0..*cols).map(|c| w[r * cols + c] * x[c]).sum())
            .collect();
        if let Some((_, _, b)) = self.w.get(&format!("{module}.bias")) {
            for (yv, bv) in y.iter_mut().zip(b) {
                *yv += bv;
            }
        }
        y
    }

    fn rms(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + self.cfg.rms_norm_eps).sqrt();
        x.iter()
            .zip(self.vec(name))
            .map(|(v, w)| v * inv * w)
            .collect()
    }

    /// The inverse frequencies for a sequence of `positions`, and the factor cos and sin are
    /// multiplied by (longrope's attention factor; 1 otherwise).
    fn inv_freq(&self, positions: usize) -> (Vec<f64>, f64) {
        let d = self.cfg.head_dim as f64;
        let base: Vec<f64> = (0..self.cfg.head_dim / 2)
            .map(|i| 1.0 / self.cfg.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        let inv = match &self.cfg.rope_scaling {
            cllm_model::RopeScaling::None => base,
            cllm_model::RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                let ext = if positions > *original_max_position_embeddings {
                    long_factor
                } else {
                    short_factor
                };
                let inv = base.iter().zip(ext).map(|(f, &e)| f / e as f64).collect();
                return (inv, *attention_factor as f64);
            }
            &cllm_model::RopeScaling::Linear { factor } => {
                base.iter().map(|f| f / factor as f64).collect()
            }
            &cllm_model::RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (
                    factor as f64,
                    low_freq_factor as f64,
                    high_freq_factor as f64,
                );
                let old = original_max_position_embeddings as f64;
                base.iter()
                    .map(|&f| {
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < old / high {
                            f
                        } else if wl > old / low {
                            f / factor
                        } else {
                            let s = (old / wl - low) / (high - low);
                            (1.0 - s) * f / factor + s * f
                        }
                    })
                    .collect()
            }
        };
        (inv, 1.0)
    }

    fn rope(&self, x: &mut [f64], pos: usize, (inv, scale): &(Vec<f64>, f64)) {
        let hd = self.cfg.head_dim;
        for head in x.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let a = pos as f64 * inv[i];
                let (c, s) = (a.cos() * scale, a.sin() * scale);
                let (x1, x2) = (head[i], head[i + hd / 2]);
                head[i] = x1 * c - x2 * s;
                head[i + hd / 2] = x2 * c + x1 * s;
            }
        }
    }

    fn forward(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let inv = self.inv_freq(tokens.len());
        let (_, hidden, emb) = &self.w["model.embed_tokens.weight"];
        let mut h: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| emb[t as usize * hidden..(t as usize + 1) * hidden].to_vec())
            .collect();
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            let mut qs = Vec::new();
            for (pos, hv) in h.iter().enumerate() {
                let x = self.rms(&format!("{p}.input_layernorm.weight"), hv);
                let mut q = self.linear(&format!("{p}.self_attn.q_proj"), &x);
                let mut k = self.linear(&format!("{p}.self_attn.k_proj"), &x);
                self.rope(&mut q, pos, &inv);
                self.rope(&mut k, pos, &inv);
                qs.push(q);
                ks.push(k);
                vs.push(self.linear(&format!("{p}.self_attn.v_proj"), &x));
            }
            for t in 0..h.len() {
                let mut attn = vec![0f64; nh * hd];
                for head in 0..nh {
                    let g = head / (nh / nkv);
                    let from = c.sliding_window.map_or(0, |w| (t + 1).saturating_sub(w));
                    let s: Vec<f64> = (from..=t)
                        .map(|j| {
                            (0..hd)
                                .map(|d| qs[t][head * hd + d] * ks[j][g * hd + d])
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (jj, j) in (from..=t).enumerate() {
                        for d in 0..hd {
                            attn[head * hd + d] += e[jj] / z * vs[j][g * hd + d];
                        }
                    }
                }
                let o = self.linear(&format!("{p}.self_attn.o_proj"), &attn);
                for (a, b) in h[t].iter_mut().zip(&o) {
                    *a += b;
                }
                let x = self.rms(&format!("{p}.post_attention_layernorm.weight"), &h[t]);
                let g = self.linear(&format!("{p}.mlp.gate_proj"), &x);
                let u = self.linear(&format!("{p}.mlp.up_proj"), &x);
                let a: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let d = self.linear(&format!("{p}.mlp.down_proj"), &a);
                for (a, b) in h[t].iter_mut().zip(&d) {
                    *a += b;
                }
            }
        }
        let head = if c.tie_word_embeddings {
            "model.embed_tokens"
        } else {
            "lm_head"
        };
        h.iter()
            .map(|hv| self.linear(head, &self.rms("model.norm.weight", hv)))
            .collect()
    }
}

/// Max |a - b| over the logits, relative to the largest |b|.
fn check(model: &CpuModel, r: &Ref, tokens: &[u32], tol: f64, what: &str) {
    let got = model.forward_all(tokens).unwrap();
    let want = r.forward(tokens);
    let scale = want.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max error {err} vs logit scale {scale}"
    );
    assert!(scale > 0.1, "{what}: degenerate logits");
}

fn build(
    json: &str,
    form: Form,
    seed: u64,
    extra: impl FnOnce(&ModelConfig, &mut HashMap<String, Weight>),
) -> (CpuModel, Ref) {
    let cfg = ModelConfig::from_json(json).unwrap();
    let mut w = weights(&cfg, form, seed);
    extra(&cfg, &mut w);
    let r = Ref::new(&cfg, &w);
    (CpuModel::new(cfg, w).unwrap(), r)
}

#[test]
fn matches_f64_reference_for_every_form() {
    for form in common::FORMS {
        for tied in [true, false] {
            let (m, r) = build(&common::config_json(tied), form, 21, |_, _| {});
            check(
                &m,
                &r,
                &Rng(3).tokens(12, 300),
                2e-5,
                &format!("{form:?} tied={tied}"),
            );
        }
    }
}

#[test]
fn matches_reference_with_llama3_rope_scaling_and_biases() {
    let json = common::config_json(false).replace(
        r#""rope_theta": 10000.0,"#,
        r#""rope_theta": 500000.0, "attention_bias": true, "mlp_bias": true,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64},"#,
    );
    let (m, r) = build(&json, Form::Bf16, 22, |cfg, w| {
        let mut rng = Rng(99);
        for l in 0..cfg.num_hidden_layers {
            for (name, len) in [
                ("self_attn.q_proj", cfg.q_dim()),
                ("self_attn.k_proj", cfg.kv_dim()),
                ("self_attn.v_proj", cfg.kv_dim()),
                ("self_attn.o_proj", cfg.hidden_size),
                ("mlp.gate_proj", cfg.intermediate_size),
                ("mlp.up_proj", cfg.intermediate_size),
                ("mlp.down_proj", cfg.hidden_size),
            ] {
                w.insert(
                    format!("model.layers.{l}.{name}.bias"),
                    matrix(&mut rng, 1, len, 0.3, Form::F32),
                );
            }
        }
    });
    // Positions beyond the scaled wavelengths exercise all three llama3 regimes.
    check(&m, &r, &Rng(4).tokens(100, 300), 2e-5, "llama3 + biases");
}

#[test]
fn matches_reference_with_mistral_sliding_window() {
    let json = common::config_json(true).replace(
        r#""model_type": "llama""#,
        r#""model_type": "mistral", "sliding_window": 4"#,
    );
    let (m, r) = build(&json, Form::F32, 23, |_, _| {});
    assert_eq!(m.config().sliding_window, Some(4));
    check(&m, &r, &Rng(5).tokens(10, 300), 2e-5, "sliding window");
}

#[test]
fn matches_reference_with_longrope_on_both_sides_of_the_original_length() {
    // Short factors up to the original length, long ones past it (by the sequence's length in
    // a full forward), cos and sin scaled by the attention factor of max_position 128 / 32.
    let short: Vec<f64> = (0..8).map(|i| 1.0 + 0.2 * i as f64).collect();
    let long: Vec<f64> = (0..8).map(|i| 1.0 + 3.0 * i as f64).collect();
    let json = common::config_json(false).replace(
        r#""rope_theta": 10000.0,"#,
        &format!(
            r#""rope_theta": 10000.0, "original_max_position_embeddings": 32,
               "rope_scaling": {{"rope_type": "longrope", "short_factor": {short:?},
                                "long_factor": {long:?}}},"#
        ),
    );
    let (m, r) = build(&json, Form::Bf16, 24, |_, _| {});
    assert!(matches!(
        m.config().rope_scaling,
        cllm_model::RopeScaling::LongRope { .. }
    ));
    check(
        &m,
        &r,
        &Rng(6).tokens(20, 300),
        2e-5,
        "longrope, short factors",
    );
    check(
        &m,
        &r,
        &Rng(7).tokens(60, 300),
        2e-5,
        "longrope, long factors",
    );
}
