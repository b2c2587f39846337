//! A GGUF's hyper-parameters (`<architecture>.*` metadata) into the `config.json` transformers
//! uses for that family: the keys transformers' own GGUF conversion sets, and those it leaves at
//! its config class's defaults where llama.cpp runs the model differently (Gemma 3's local
//! layers, Phi-3's partial and long RoPE, Qwen3's head width).
//!
//! What llama.cpp does not store but fixes in its code is written out as llama.cpp computes it:
//! Gemma 3's pattern of five sliding layers then one global one, the sliding layers' RoPE base of
//! 10 000, the attention scale `1/sqrt(head_dim)` (`1/sqrt(hidden/heads)` for the 27B).

use cllm_model::Family;
use serde_json::{json, Map, Value};

use crate::error::GgufError;
use crate::reader::{MetaValue, Metadata};

/// Hyper-parameters of a model, from the `<architecture>.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct HyperParams {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// One attention head's width (`attention.key_length`, else `rope.dimension_count` where
    /// the family rotates whole heads, else `embedding_length / head_count`).
    pub head_dim: u64,
    /// The leading dimensions of each head that RoPE rotates (`rope.dimension_count`, else
    /// `head_dim`).
    pub rope_dim: u64,
    pub n_ctx: Option<u64>,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// `attention.sliding_window` (0 read as none).
    pub sliding_window: Option<u64>,
}

fn required_u64(md: &Metadata<'_>, key: &str) -> Result<u64, GgufError> {
    let v = md.get(key).ok_or_else(|| GgufError::MissingMetadata {
        key: key.to_string(),
    })?;
    v.as_u64().ok_or_else(|| GgufError::WrongMetadataType {
        key: key.to_string(),
        expected: "unsigned integer",
        found: v.type_description(),
    })
}

pub(crate) fn optional_u64(md: &Metadata<'_>, key: &str) -> Result<Option<u64>, GgufError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| GgufError::WrongMetadataType {
                key: key.to_string(),
                expected: "unsigned integer",
                found: v.type_description(),
            }),
    }
}

pub(crate) fn optional_f64(md: &Metadata<'_>, key: &str) -> Result<Option<f64>, GgufError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| GgufError::WrongMetadataType {
                key: key.to_string(),
                expected: "float",
                found: v.type_description(),
            }),
    }
}

fn bad(key: &str, reason: impl Into<String>) -> GgufError {
    GgufError::BadMetadataValue {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn nonzero(key: &str, v: u64) -> Result<u64, GgufError> {
    if v == 0 {
        Err(bad(key, "must not be zero"))
    } else {
        Ok(v)
    }
}

impl HyperParams {
    /// Reads the `<arch>.*` hyper-parameters of a model of `family`.
    pub fn from_metadata(md: &Metadata<'_>, arch: &str, family: Family) -> Result<Self, GgufError> {
        let k = |s: &str| format!("{arch}.{s}");
        let n_layer = required_u64(md, &k("block_count"))?;
        let n_embd = nonzero(
            &k("embedding_length"),
            required_u64(md, &k("embedding_length"))?,
        )?;
        let n_ff = required_u64(md, &k("feed_forward_length"))?;
        let n_head = nonzero(
            &k("attention.head_count"),
            required_u64(md, &k("attention.head_count"))?,
        )?;
        let n_head_kv = match optional_u64(md, &k("attention.head_count_kv"))? {
            Some(v) => nonzero(&k("attention.head_count_kv"), v)?,
            None => n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(bad(
                &k("attention.head_count_kv"),
                format!("{n_head_kv} does not divide the head count {n_head}"),
            ));
        }
        let rope_count = optional_u64(md, &k("rope.dimension_count"))?;
        // Phi-3's rope.dimension_count is the rotated part of a head, not the head.
        let (head_dim, head_key) = match optional_u64(md, &k("attention.key_length"))? {
            Some(v) => (v, k("attention.key_length")),
            None => match rope_count.filter(|_| family != Family::Phi3) {
                Some(v) => (v, k("rope.dimension_count")),
                None => {
                    if n_embd % n_head != 0 {
                        return Err(bad(
                            &k("embedding_length"),
                            format!(
                                "{n_embd} is not a multiple of the head count {n_head}, \
                                 and no attention.key_length gives the head width"
                            ),
                        ));
                    }
                    (n_embd / n_head, k("embedding_length"))
                }
            },
        };
        let head_dim = nonzero(&head_key, head_dim)?;
        if head_dim % 2 != 0 {
            return Err(bad(&head_key, format!("head dimension {head_dim} is odd")));
        }
        if let Some(v) = optional_u64(md, &k("attention.value_length"))? {
            if v != head_dim {
                return Err(bad(
                    &k("attention.value_length"),
                    format!("{v} differs from the key width {head_dim}"),
                ));
            }
        }
        let rope_dim = rope_count.unwrap_or(head_dim);
        if rope_dim == 0 || rope_dim % 2 != 0 || rope_dim > head_dim {
            return Err(bad(
                &k("rope.dimension_count"),
                format!("{rope_dim} must be even, positive and at most the head width {head_dim}"),
            ));
        }
        Ok(HyperParams {
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            n_ctx: optional_u64(md, &k("context_length"))?,
            rope_theta: optional_f64(md, &k("rope.freq_base"))?.unwrap_or(match family {
                Family::Gemma3 => 1_000_000.0,
                _ => 10_000.0,
            }),
            rms_norm_eps: optional_f64(md, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(
                match family {
                    Family::Gemma3 => 1e-6,
                    _ => 1e-5,
                },
            ),
            sliding_window: optional_u64(md, &k("attention.sliding_window"))?.filter(|&w| w > 0),
        })
    }
}

/// What the config needs beyond the hyper-parameters: facts about the file's tensors and
/// tokenizer.
pub(crate) struct ConfigFacts {
    pub vocab_size: u64,
    /// No `output.weight`: the LM head is the embedding matrix.
    pub tied: bool,
    /// A bias on the o projection (every attention projection has one).
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos: Option<u64>,
    pub eos: Option<u64>,
    pub pad: Option<u64>,
    /// Phi-3's `rope_factors_long.weight` and `rope_factors_short.weight`.
    pub rope_factors: Option<LongRopeFactors>,
    /// Llama 3.1+'s `rope_freqs.weight`: each frequency's divisor.
    pub rope_freqs: Option<Vec<f32>>,
}

/// Phi-3's long-RoPE factors, one per rotated frequency.
pub(crate) struct LongRopeFactors {
    pub long: Vec<f32>,
    pub short: Vec<f32>,
}

/// A float read from the file as transformers writes it (a float32 widened to a double).
fn num(x: f64) -> Value {
    json!(x)
}

/// Gemma 3's attention kinds: llama.cpp's `set_swa_pattern(n)` (layer `il` slides when
/// `il % n < n - 1`), which is transformers' `(i + 1) % sliding_window_pattern != 0`; a
/// `attention.sliding_window_pattern` array of booleans names each layer where present.
fn gemma3_layer_types(
    md: &Metadata<'_>,
    arch: &str,
    n_layer: u64,
    sliding: bool,
) -> Result<(Vec<&'static str>, Option<u64>), GgufError> {
    let key = format!("{arch}.attention.sliding_window_pattern");
    let kind = |s: bool| {
        if s {
            "sliding_attention"
        } else {
            "full_attention"
        }
    };
    if !sliding {
        return Ok((vec![kind(false); n_layer as usize], None));
    }
    match md.get(&key) {
        Some(MetaValue::Array(a)) => {
            let flags: Option<Vec<bool>> = a.iter().map(|v| v.as_bool()).collect();
            let flags = flags.ok_or_else(|| GgufError::WrongMetadataType {
                key: key.clone(),
                expected: "unsigned integer or array of bool",
                found: format!("array of {}", a.elem_type()),
            })?;
            if flags.len() as u64 != n_layer {
                return Err(bad(
                    &key,
                    format!("{} entries for {n_layer} layers", flags.len()),
                ));
            }
            Ok((flags.into_iter().map(kind).collect(), None))
        }
        _ => {
            let n = nonzero(&key, optional_u64(md, &key)?.unwrap_or(6))?;
            Ok((
                (0..n_layer).map(|il| kind(il % n < n - 1)).collect(),
                Some(n),
            ))
        }
    }
}

/// Llama 3.1+'s `rope_scaling` from the factors llama.cpp's converter computed into
/// `rope_freqs.weight` (`LlamaModel.generate_extra_tensors`): every Llama 3.x release uses
/// `low_freq_factor` 1, `high_freq_factor` 4 and an original length of 8192 (only their ratios
/// shape the frequencies) with its own `factor`, the largest divisor. Those parameters are
/// taken when they give back every stored factor (to float32 rounding).
fn llama3_scaling(freqs: &[f32], p: &HyperParams) -> Option<Value> {
    let (low, high, original) = (1.0f64, 4.0f64, 8192.0f64);
    if freqs.len() as u64 != p.rope_dim / 2 || freqs.is_empty() {
        return None;
    }
    let factor = freqs.iter().copied().fold(f32::MIN, f32::max) as f64;
    if !(factor.is_finite() && factor >= 1.0) {
        return None;
    }
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    let dim = p.rope_dim as f64;
    for (i, &got) in freqs.iter().enumerate() {
        let freq = 1.0 / p.rope_theta.powf(2.0 * i as f64 / dim);
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        let want = if wavelen < high_wavelen {
            1.0
        } else if wavelen > low_wavelen {
            factor
        } else {
            let smooth = (original / wavelen - low) / (high - low);
            1.0 / ((1.0 - smooth) / factor + smooth)
        };
        if ((got as f64) - want).abs() > 1e-5 * want {
            return None;
        }
    }
    Some(json!({
        "rope_type": "llama3",
        "factor": num(factor),
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original as u64,
    }))
}

/// The `config.json` of a model of `family` (see the module docs); `warnings` gets what was
/// left out.
pub(crate) fn config_json(
    md: &Metadata<'_>,
    arch: &str,
    family: Family,
    p: &HyperParams,
    f: &ConfigFacts,
    warnings: &mut Vec<String>,
) -> Result<Value, GgufError> {
    let k = |s: &str| format!("{arch}.{s}");
    let mut c = Map::new();
    let mut set = |key: &str, v: Value| {
        c.insert(key.to_string(), v);
    };
    set("architectures", json!([family.class()]));
    set("model_type", json!(family.model_type()));
    set("hidden_size", json!(p.n_embd));
    set("intermediate_size", json!(p.n_ff));
    set("num_hidden_layers", json!(p.n_layer));
    set("num_attention_heads", json!(p.n_head));
    set("num_key_value_heads", json!(p.n_head_kv));
    set("head_dim", json!(p.head_dim));
    set("rms_norm_eps", num(p.rms_norm_eps));
    set("rope_theta", num(p.rope_theta));
    set("max_position_embeddings", json!(p.n_ctx.unwrap_or(2048)));
    set("vocab_size", json!(f.vocab_size));
    set("tie_word_embeddings", json!(f.tied));
    set("bos_token_id", json!(f.bos));
    set("eos_token_id", json!(f.eos));
    set("pad_token_id", json!(f.pad));
    set("torch_dtype", json!("bfloat16"));
    set("attention_bias", json!(f.attention_bias));
    set("attention_dropout", json!(0.0));
    set("initializer_range", json!(0.02));
    set("use_cache", json!(true));
    if p.rope_dim != p.head_dim {
        set(
            "partial_rotary_factor",
            json!(p.rope_dim as f64 / p.head_dim as f64),
        );
    }

    // RoPE scaling llama.cpp states (`rope.scaling.type`); Phi-3's long RoPE is its own.
    let scaling_type = md.get_str(&k("rope.scaling.type")).unwrap_or("none");
    let mut rope_scaling = Value::Null;
    match scaling_type {
        "none" => {}
        "linear" => {
            let key = k("rope.scaling.factor");
            let factor = optional_f64(md, &key)?
                .ok_or_else(|| GgufError::MissingMetadata { key: key.clone() })?;
            rope_scaling = json!({ "rope_type": "linear", "factor": num(factor) });
        }
        other => warnings.push(format!(
            "{} = {other:?} is not carried into config.json",
            k("rope.scaling.type")
        )),
    }
    if let Some(freqs) = &f.rope_freqs {
        match llama3_scaling(freqs, p) {
            Some(s) if rope_scaling.is_null() => rope_scaling = s,
            _ => warnings.push(
                "skipped rope_freqs.weight (not the factors of a llama3 rope scaling with \
                 low_freq_factor 1, high_freq_factor 4 and original length 8192)"
                    .into(),
            ),
        }
    }

    match family {
        Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3 | Family::Phi3 => {
            set("hidden_act", json!("silu"));
        }
        Family::Gemma3 => {
            set("hidden_activation", json!("gelu_pytorch_tanh"));
        }
    }
    match family {
        Family::Llama => {
            set("mlp_bias", json!(f.mlp_bias));
            set("pretraining_tp", json!(1));
        }
        Family::Mistral => {
            set("sliding_window", json!(p.sliding_window));
        }
        Family::Qwen2 | Family::Qwen3 => {
            // llama.cpp runs every layer with full attention.
            set("use_sliding_window", json!(false));
            set("sliding_window", Value::Null);
        }
        Family::Gemma3 => {
            let (layer_types, pattern) =
                gemma3_layer_types(md, arch, p.n_layer, p.sliding_window.is_some())?;
            set("sliding_window", json!(p.sliding_window));
            set("layer_types", json!(layer_types));
            if let Some(n) = pattern {
                set("sliding_window_pattern", json!(n));
            }
            let local = optional_f64(md, &k("rope.freq_base_swa"))?.unwrap_or(10_000.0);
            set("rope_local_base_freq", num(local));
            // llama.cpp: 1/sqrt(n_embd_head_k), except the 27B (62 layers): 1/sqrt(n_embd/n_head).
            let scalar = if p.n_layer == 62 {
                p.n_embd / p.n_head
            } else {
                p.head_dim
            };
            set("query_pre_attn_scalar", json!(scalar));
            let softcap = |key: &str| -> Result<Value, GgufError> {
                Ok(match optional_f64(md, &k(key))? {
                    Some(v) if v > 0.0 => num(v),
                    _ => Value::Null,
                })
            };
            set(
                "final_logit_softcapping",
                softcap("final_logit_softcapping")?,
            );
            set("attn_logit_softcapping", softcap("attn_logit_softcapping")?);
            set("use_bidirectional_attention", json!(false));
        }
        Family::Phi3 => {
            set("sliding_window", json!(p.sliding_window));
            let orig_key = k("rope.scaling.original_context_length");
            let original = optional_u64(md, &orig_key)?;
            set(
                "original_max_position_embeddings",
                json!(original.or(p.n_ctx).unwrap_or(4096)),
            );
            if let Some(LongRopeFactors { long, short }) = &f.rope_factors {
                let original = original.ok_or_else(|| GgufError::MissingMetadata {
                    key: format!("{orig_key} (the long RoPE factors need it)"),
                })?;
                let want = (p.rope_dim / 2) as usize;
                for (name, v) in [
                    ("rope_factors_long.weight", long),
                    ("rope_factors_short.weight", short),
                ] {
                    if v.len() != want {
                        return Err(GgufError::BadTensorShape {
                            tensor: name.into(),
                            shape: vec![v.len() as u64],
                            reason: format!(
                                "{want} factors (half of the {} rotated dimensions)",
                                p.rope_dim
                            ),
                        });
                    }
                }
                let factors = |v: &[f32]| Value::Array(v.iter().map(|&x| num(x as f64)).collect());
                let mut s = json!({
                    "rope_type": "longrope",
                    "long_factor": factors(long),
                    "short_factor": factors(short),
                });
                // The attention factor transformers computes unless told: llama.cpp's converter
                // stores that same value, so it is written only where it differs.
                if let Some(a) = optional_f64(md, &k("rope.scaling.attn_factor"))? {
                    let scale = p.n_ctx.unwrap_or(original) as f64 / original as f64;
                    let default = if scale <= 1.0 {
                        1.0
                    } else {
                        (1.0 + scale.ln() / (original as f64).ln()).sqrt()
                    };
                    if (default as f32) != (a as f32) {
                        s["attention_factor"] = num(a);
                    }
                }
                rope_scaling = s;
            }
        }
    }
    c.insert("rope_scaling".into(), rope_scaling);
    Ok(Value::Object(c))
}
