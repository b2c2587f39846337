//! The config mapping: a transformers `config.json` into a checked [`ModelConfig`], with the
//! family's variant flags set (see [`crate::family`]).
//!
//! Both transformers v4 (`rope_theta` and `rope_scaling` at top level) and v5 (`rope_parameters:
//! {rope_theta, rope_type, ...}`) spellings are accepted and give the same value. Keys transformers
//! gives a default (`rms_norm_eps`, `rope_theta`, `max_position_embeddings`, ...) get that default
//! when absent; shape keys (`hidden_size`, `num_hidden_layers`, ...) are required. Every error
//! names the key it is about.

use serde_json::{Map, Value};

use crate::family::{Activation, Family};

/// Why a `config.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("config.json is not a JSON object")]
    NotAnObject,
    #[error("config.json: missing key `{0}`")]
    MissingKey(String),
    #[error("config.json: key `{key}` should be {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("config.json: key `{key}` = {value} is not supported ({reason})")]
    Unsupported {
        key: String,
        value: String,
        reason: String,
    },
    #[error("config.json: key `{key}` is invalid: {reason}")]
    Invalid { key: String, reason: String },
}

/// `rope_scaling` / `rope_parameters` variants the runtime supports.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type` "default", or no scaling given).
    None,
    /// `rope_type` "linear": every frequency divided by `factor`.
    Linear { factor: f32 },
    /// `rope_type` "llama3" (Llama 3.1+): long wavelengths divided by `factor`, short ones kept,
    /// a smooth interpolation between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// `rope_type` "longrope" (Phi-3): each frequency divided by a per-frequency factor, the
    /// short factors for sequences up to `original_max_position_embeddings` and the long ones
    /// beyond; cos and sin multiplied by `attention_factor`. Which set a sequence uses is decided
    /// by the capacity of its KV cache (docs/decisions), so cached decode equals recompute.
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: usize,
        attention_factor: f32,
    },
}

/// A rotary embedding: its base and its scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// What a decoder layer attends over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    /// The whole context.
    Full,
    /// The most recent `sliding_window` positions (all of them if the config gives no window),
    /// with the sliding layers' RoPE where the family has one of its own (Gemma 3).
    Sliding,
}

/// A model's configuration, checked for consistency: its family, its dimensions and the
/// family's variant flags.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// The MLP's gated activation (`hidden_act`).
    pub activation: Activation,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    /// RoPE of the full-attention layers (of every layer unless `sliding_rope` is set).
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// RoPE of the sliding layers where it differs (Gemma 3's local base frequency).
    pub sliding_rope: Option<Rope>,
    /// Leading dimensions of each head that RoPE rotates (`partial_rotary_factor`); the rest
    /// pass through.
    pub rotary_dim: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v/o projections carry biases (Llama's `attention_bias`).
    pub attention_bias: bool,
    /// Only q/k/v carry biases (Qwen2); implies nothing about o_proj.
    pub qkv_bias: bool,
    pub mlp_bias: bool,
    /// Sliding layers attend to at most this many most recent positions, if set; see
    /// [`ModelConfig::window`].
    pub sliding_window: Option<usize>,
    /// Each decoder layer's attention (`layer_types`, or the family's rule).
    pub layer_types: Vec<AttentionKind>,
    /// Attention scores are scaled by `query_pre_attn_scalar ** -0.5` (Gemma), else
    /// `head_dim ** -0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` as a list (it may be written as one id or a list).
    pub eos_token_ids: Vec<u32>,
}

struct Obj<'a>(&'a Map<String, Value>, &'a str);

impl<'a> Obj<'a> {
    /// The full key name for errors (`rope_scaling.factor`).
    fn name(&self, key: &str) -> String {
        if self.1.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.1)
        }
    }

    /// The value, treating JSON `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> ConfigError {
        ConfigError::WrongType {
            key: self.name(key),
            expected,
            found: v.to_string(),
        }
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, ConfigError> {
        self.usize_opt(key)?
            .ok_or_else(|| ConfigError::MissingKey(self.name(key)))
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    fn f64(&self, key: &str) -> Result<f64, ConfigError> {
        self.f64_opt(key)?
            .ok_or_else(|| ConfigError::MissingKey(self.name(key)))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.wrong(key, "a boolean", v)),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a string", v)),
        }
    }

    fn token_id(&self, key: &str, v: &Value) -> Result<u32, ConfigError> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.wrong(key, "a token id (u32)", v))
    }
}

impl ModelConfig {
    /// Parses and checks a transformers `config.json`.
    pub fn from_json(json: &str) -> Result<ModelConfig, ConfigError> {
        let root: Value = serde_json::from_str(json)?;
        let map = root.as_object().ok_or(ConfigError::NotAnObject)?;
        let o = Obj(map, "");

        let family = match o.str_opt("model_type")? {
            None => return Err(ConfigError::MissingKey("model_type".into())),
            Some(t) => Family::from_model_type(t).ok_or_else(|| ConfigError::Unsupported {
                key: "model_type".into(),
                value: format!("{t:?}"),
                reason: format!("supported: {}", Family::supported_model_types()),
            })?,
        };
        // Gemma names the key `hidden_activation`.
        let act_key = if o.get("hidden_activation").is_some() {
            "hidden_activation"
        } else {
            "hidden_act"
        };
        let activation = match o.str_opt(act_key)? {
            None if family == Family::Gemma3 => Activation::GeluTanh,
            None => Activation::Silu,
            Some(act) => {
                Activation::from_hidden_act(act).ok_or_else(|| ConfigError::Unsupported {
                    key: act_key.into(),
                    value: format!("{act:?}"),
                    reason: "supported: silu, gelu_pytorch_tanh, gelu_new".into(),
                })?
            }
        };
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if let Some(v) = o.get(key) {
                return Err(ConfigError::Unsupported {
                    key: key.into(),
                    value: v.to_string(),
                    reason: "logit soft-capping is not implemented".into(),
                });
            }
        }
        if o.bool_or("use_bidirectional_attention", false)? {
            return Err(ConfigError::Unsupported {
                key: "use_bidirectional_attention".into(),
                value: "true".into(),
                reason: "only causal decoders are implemented".into(),
            });
        }

        if o.bool_or("rope_interleaved", false)? {
            return Err(ConfigError::Unsupported {
                key: "rope_interleaved".into(),
                value: "true".into(),
                reason: "only the Hugging Face rotate-half RoPE layout is implemented".into(),
            });
        }

        let hidden_size = o.usize("hidden_size")?;
        let intermediate_size = o.usize("intermediate_size")?;
        let num_hidden_layers = o.usize("num_hidden_layers")?;
        let num_attention_heads = o.usize("num_attention_heads")?;
        let vocab_size = o.usize("vocab_size")?;
        let num_key_value_heads = o
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let rms_norm_eps = o.f64_opt("rms_norm_eps")?.unwrap_or(1e-6);
        let max_position_embeddings = o.usize_opt("max_position_embeddings")?.unwrap_or(2048);
        // transformers' default: Gemma ties its embeddings.
        let tie_word_embeddings = o.bool_or("tie_word_embeddings", family == Family::Gemma3)?;
        let attention_bias = o.bool_or("attention_bias", false)?;
        let mlp_bias = o.bool_or("mlp_bias", false)?;

        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    key: key.into(),
                    reason: "must be positive".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("hidden_size", hidden_size)?;
        positive("intermediate_size", intermediate_size)?;
        positive("num_attention_heads", num_attention_heads)?;
        positive("num_key_value_heads", num_key_value_heads)?;
        positive("vocab_size", vocab_size)?;
        positive("max_position_embeddings", max_position_embeddings)?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(ConfigError::Invalid {
                key: "num_key_value_heads".into(),
                reason: format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
            });
        }
        let head_dim = match o.usize_opt("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(ConfigError::Invalid {
                        key: "hidden_size".into(),
                        reason: format!(
                            "{hidden_size} is not a multiple of num_attention_heads = {num_attention_heads} \
                             and no head_dim is given"
                        ),
                    });
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ConfigError::Invalid {
                key: "head_dim".into(),
                reason: format!("{head_dim} must be even and positive for rotary embeddings"),
            });
        }
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(ConfigError::Invalid {
                key: "rms_norm_eps".into(),
                reason: format!("{rms_norm_eps} must be a non-negative number"),
            });
        }

        let rotary_dim = rotary_dim(&o, family, head_dim)?;
        let ropes = parse_rope(&o, family, rotary_dim, max_position_embeddings)?;
        let (sliding_window, layer_types) = parse_windows(&o, family, num_hidden_layers)?;
        let query_pre_attn_scalar = match family {
            Family::Gemma3 => {
                let v = o.f64_opt("query_pre_attn_scalar")?.unwrap_or(256.0);
                if !(v.is_finite() && v > 0.0) {
                    return Err(ConfigError::Invalid {
                        key: "query_pre_attn_scalar".into(),
                        reason: format!("{v} must be positive"),
                    });
                }
                Some(v)
            }
            _ => None,
        };

        let bos_token_id = match o.get("bos_token_id") {
            None => None,
            Some(v) => Some(o.token_id("bos_token_id", v)?),
        };
        let eos_token_ids = match o.get("eos_token_id") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| o.token_id("eos_token_id", v))
                .collect::<Result<_, _>>()?,
            Some(v) => vec![o.token_id("eos_token_id", v)?],
        };

        Ok(ModelConfig {
            family,
            activation,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rms_norm_eps,
            rope_theta: ropes.full.theta,
            rope_scaling: ropes.full.scaling,
            sliding_rope: ropes.sliding,
            rotary_dim,
            max_position_embeddings,
            tie_word_embeddings,
            attention_bias,
            qkv_bias: family.qkv_bias(),
            mlp_bias,
            sliding_window,
            layer_types,
            query_pre_attn_scalar,
            bos_token_id,
            eos_token_ids,
        })
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// The attention window of decoder layer `layer`: a query attends to at most this many most
    /// recent positions (itself included); `None` for the whole context.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.layer_types.get(layer) {
            Some(AttentionKind::Sliding) => self.sliding_window,
            _ => None,
        }
    }

    /// The distinct rotary embeddings of the model: the full layers' first, then the sliding
    /// layers' if they have their own. [`ModelConfig::rope_index`] says which a layer uses.
    pub fn ropes(&self) -> Vec<Rope> {
        let mut r = vec![Rope {
            theta: self.rope_theta,
            scaling: self.rope_scaling.clone(),
        }];
        r.extend(self.sliding_rope.clone());
        r
    }

    /// Which of [`ModelConfig::ropes`] layer `layer` uses.
    pub fn rope_index(&self, layer: usize) -> usize {
        let sliding = self.layer_types.get(layer) == Some(&AttentionKind::Sliding);
        usize::from(sliding && self.sliding_rope.is_some())
    }

    /// The factor attention scores are multiplied by (a Python float in transformers, applied to
    /// float32 scores).
    pub fn attention_scale(&self) -> f32 {
        self.query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .powf(-0.5) as f32
    }

    /// The factor the embeddings are multiplied by, if the family scales them: transformers
    /// makes `torch.tensor(hidden_size ** 0.5)`, a float32.
    pub fn embedding_scale(&self) -> Option<f32> {
        self.family
            .scaled_embedding()
            .then(|| (self.hidden_size as f64).sqrt() as f32)
    }
}

/// `partial_rotary_factor` (top level, or in `rope_parameters` as transformers 5 writes it) as
/// the number of rotated dimensions: `int(head_dim * factor)`, as transformers computes it.
fn rotary_dim(o: &Obj<'_>, family: Family, head_dim: usize) -> Result<usize, ConfigError> {
    let (key, factor) = match o.get("rope_parameters") {
        Some(Value::Object(p)) if p.get("partial_rotary_factor").is_some() => {
            let p = Obj(p, "rope_parameters");
            (
                p.name("partial_rotary_factor"),
                p.f64_opt("partial_rotary_factor")?,
            )
        }
        _ => (
            "partial_rotary_factor".to_string(),
            o.f64_opt("partial_rotary_factor")?,
        ),
    };
    let Some(f) = factor.filter(|&f| f != 1.0) else {
        return Ok(head_dim);
    };
    if family != Family::Phi3 {
        return Err(ConfigError::Unsupported {
            key,
            value: f.to_string(),
            reason: format!(
                "partial rotary embeddings are implemented for phi3, not {}",
                family.model_type()
            ),
        });
    }
    let dim = (head_dim as f64 * f) as usize;
    if !(f > 0.0 && f < 1.0) || dim == 0 || !dim.is_multiple_of(2) {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{f} of head_dim {head_dim} must give an even, positive width"),
        });
    }
    Ok(dim)
}

/// The sliding window and each layer's attention kind: `layer_types` where the config lists
/// them, else the family's rule (transformers' defaults).
fn parse_windows(
    o: &Obj<'_>,
    family: Family,
    layers: usize,
) -> Result<(Option<usize>, Vec<AttentionKind>), ConfigError> {
    let window = match family {
        Family::Llama => None,
        Family::Mistral | Family::Phi3 => o.usize_opt("sliding_window")?,
        Family::Gemma3 => Some(o.usize_opt("sliding_window")?.unwrap_or(4096)),
        // Qwen's window applies only with `use_sliding_window`.
        Family::Qwen2 | Family::Qwen3 => {
            if o.bool_or("use_sliding_window", false)? {
                Some(o.usize_opt("sliding_window")?.unwrap_or(4096))
            } else {
                None
            }
        }
    };
    if window == Some(0) {
        return Err(ConfigError::Invalid {
            key: "sliding_window".into(),
            reason: "must be positive".into(),
        });
    }
    if let Some(v) = o.get("layer_types") {
        let Value::Array(items) = v else {
            return Err(o.wrong("layer_types", "a list", v));
        };
        if items.len() != layers {
            return Err(ConfigError::Invalid {
                key: "layer_types".into(),
                reason: format!("{} entries for {layers} layers", items.len()),
            });
        }
        let kinds = items
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(AttentionKind::Full),
                Some("sliding_attention") => Ok(AttentionKind::Sliding),
                _ => Err(ConfigError::Unsupported {
                    key: "layer_types".into(),
                    value: t.to_string(),
                    reason: "supported: full_attention, sliding_attention".into(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((window, kinds));
    }
    let kinds = match family {
        Family::Gemma3 => {
            let pattern = o.usize_opt("sliding_window_pattern")?.unwrap_or(6);
            if pattern == 0 {
                return Err(ConfigError::Invalid {
                    key: "sliding_window_pattern".into(),
                    reason: "must be positive".into(),
                });
            }
            (0..layers)
                .map(|i| {
                    if (i + 1) % pattern != 0 {
                        AttentionKind::Sliding
                    } else {
                        AttentionKind::Full
                    }
                })
                .collect()
        }
        Family::Qwen2 | Family::Qwen3 if window.is_some() => {
            let from = o.usize_opt("max_window_layers")?.unwrap_or(28);
            (0..layers)
                .map(|i| {
                    if i >= from {
                        AttentionKind::Sliding
                    } else {
                        AttentionKind::Full
                    }
                })
                .collect()
        }
        _ if window.is_some() => vec![AttentionKind::Sliding; layers],
        _ => vec![AttentionKind::Full; layers],
    };
    Ok((window, kinds))
}

/// The full layers' RoPE and, where the family has one, the sliding layers'.
struct Ropes {
    full: Rope,
    sliding: Option<Rope>,
}

/// Reads `rope_parameters` (v5) if present, else `rope_theta` / `rope_scaling` (v4). Gemma 3's
/// sliding layers have their own: `rope_parameters.sliding_attention` (v5, beside
/// `full_attention`) or `rope_local_base_freq` (v4), with transformers' default bases.
fn parse_rope(
    o: &Obj<'_>,
    family: Family,
    rotary_dim: usize,
    max_pos: usize,
) -> Result<Ropes, ConfigError> {
    let ctx = RopeContext {
        top: o,
        family,
        rotary_dim,
        max_pos,
    };
    let gemma = family == Family::Gemma3;
    let default_theta = if gemma { 1_000_000.0 } else { 10_000.0 };
    let local = |theta: Option<f64>| -> Result<Option<Rope>, ConfigError> {
        Ok(gemma.then_some(Rope {
            theta: check_theta(theta.unwrap_or(10_000.0), "rope_local_base_freq")?,
            scaling: RopeScaling::None,
        }))
    };
    match o.get("rope_parameters") {
        Some(Value::Object(p))
            if gemma
                && (p.contains_key("full_attention") || p.contains_key("sliding_attention")) =>
        {
            let p = Obj(p, "rope_parameters");
            let per_type = |key: &str, theta: f64| -> Result<Rope, ConfigError> {
                match p.get(key) {
                    None => Ok(Rope {
                        theta,
                        scaling: RopeScaling::None,
                    }),
                    Some(Value::Object(t)) => rope_of(&ctx, &Obj(t, &p.name(key)), theta),
                    Some(v) => Err(p.wrong(key, "an object", v)),
                }
            };
            Ok(Ropes {
                full: per_type("full_attention", default_theta)?,
                sliding: Some(per_type("sliding_attention", 10_000.0)?),
            })
        }
        Some(Value::Object(p)) => Ok(Ropes {
            full: rope_of(&ctx, &Obj(p, "rope_parameters"), default_theta)?,
            sliding: local(o.f64_opt("rope_local_base_freq")?)?,
        }),
        Some(v) => Err(o.wrong("rope_parameters", "an object", v)),
        None => {
            let theta = check_theta(
                o.f64_opt("rope_theta")?.unwrap_or(default_theta),
                "rope_theta",
            )?;
            let scaling = match o.get("rope_scaling") {
                None => RopeScaling::None,
                Some(Value::Object(s)) => scaling_of(&ctx, &Obj(s, "rope_scaling"))?,
                Some(v) => return Err(o.wrong("rope_scaling", "an object or null", v)),
            };
            Ok(Ropes {
                full: Rope { theta, scaling },
                sliding: local(o.f64_opt("rope_local_base_freq")?)?,
            })
        }
    }
}

fn check_theta(theta: f64, key: &str) -> Result<f64, ConfigError> {
    if theta.is_finite() && theta > 0.0 {
        Ok(theta)
    } else {
        Err(ConfigError::Invalid {
            key: key.into(),
            reason: format!("{theta} must be positive"),
        })
    }
}

/// What reading a RoPE object takes besides the object: the top-level config (Phi-3 keeps
/// `original_max_position_embeddings` there), the family, the rotated width and the context.
struct RopeContext<'o, 'a> {
    top: &'o Obj<'a>,
    family: Family,
    rotary_dim: usize,
    max_pos: usize,
}

/// A v5 `rope_parameters` object (`rope_theta` and the scaling keys side by side).
fn rope_of(
    ctx: &RopeContext<'_, '_>,
    p: &Obj<'_>,
    default_theta: f64,
) -> Result<Rope, ConfigError> {
    let theta = check_theta(
        p.f64_opt("rope_theta")?.unwrap_or(default_theta),
        &p.name("rope_theta"),
    )?;
    Ok(Rope {
        theta,
        scaling: scaling_of(ctx, p)?,
    })
}

/// The scaling a `rope_scaling` / `rope_parameters` object describes.
fn scaling_of(ctx: &RopeContext<'_, '_>, s: &Obj<'_>) -> Result<RopeScaling, ConfigError> {
    let family = ctx.family;
    // transformers accepts the legacy spelling `type` for `rope_type`.
    let (type_key, rope_type) = match s.str_opt("rope_type")? {
        Some(t) => ("rope_type", t),
        None => match s.str_opt("type")? {
            Some(t) => ("type", t),
            None => ("rope_type", "default"),
        },
    };
    let factor = |s: &Obj<'_>| -> Result<f32, ConfigError> {
        let f = s.f64("factor")?;
        if !(f.is_finite() && f > 0.0) {
            return Err(ConfigError::Invalid {
                key: s.name("factor"),
                reason: format!("{f} must be positive"),
            });
        }
        Ok(f as f32)
    };
    // Phi-3's configuration renames its legacy "su" and "yarn" to "longrope".
    let rope_type = match rope_type {
        "su" | "yarn" if family == Family::Phi3 => "longrope",
        t => t,
    };
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor(s)? },
        "llama3" => {
            let low = s.f64("low_freq_factor")? as f32;
            let high = s.f64("high_freq_factor")? as f32;
            if low == high {
                return Err(ConfigError::Invalid {
                    key: s.name("high_freq_factor"),
                    reason: "must differ from low_freq_factor".into(),
                });
            }
            RopeScaling::Llama3 {
                factor: factor(s)?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: s.usize("original_max_position_embeddings")?,
            }
        }
        "longrope" => longrope(ctx, s)?,
        other => {
            return Err(ConfigError::Unsupported {
                key: s.name(type_key),
                value: format!("{other:?}"),
                reason: "supported RoPE types: default, linear, llama3, longrope".into(),
            })
        }
    };
    Ok(scaling)
}

/// transformers' `_compute_longrope_parameters`: the factor defaults to the ratio of
/// `max_position_embeddings` to the original length, the attention factor to
/// `sqrt(1 + ln(factor) / ln(original))` (1 when the factor is at most 1).
fn longrope(ctx: &RopeContext<'_, '_>, s: &Obj<'_>) -> Result<RopeScaling, ConfigError> {
    let (top, rotary_dim, max_pos) = (ctx.top, ctx.rotary_dim, ctx.max_pos);
    let factors = |key: &str| -> Result<Vec<f32>, ConfigError> {
        let v = s
            .get(key)
            .ok_or_else(|| ConfigError::MissingKey(s.name(key)))?;
        let items = v
            .as_array()
            .ok_or_else(|| s.wrong(key, "a list of numbers", v))?;
        if items.len() != rotary_dim / 2 {
            return Err(ConfigError::Invalid {
                key: s.name(key),
                reason: format!("{} factors for {} frequencies", items.len(), rotary_dim / 2),
            });
        }
        items
            .iter()
            .map(|x| match x.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => Ok(f as f32),
                _ => Err(s.wrong(key, "positive numbers", x)),
            })
            .collect()
    };
    let original = match s.usize_opt("original_max_position_embeddings")? {
        Some(n) => n,
        None => top.usize("original_max_position_embeddings")?,
    };
    if original < 2 {
        return Err(ConfigError::Invalid {
            key: "original_max_position_embeddings".into(),
            reason: format!("{original} must be at least 2"),
        });
    }
    let factor = s
        .f64_opt("factor")?
        .unwrap_or(max_pos as f64 / original as f64);
    let attention_factor = match s.f64_opt("attention_factor")? {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(RopeScaling::LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor: attention_factor as f32,
    })
}
