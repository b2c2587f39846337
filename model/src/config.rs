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
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v/o projections carry biases (Llama's `attention_bias`).
    pub attention_bias: bool,
    /// Only q/k/v carry biases (Qwen2); implies nothing about o_proj.
    pub qkv_bias: bool,
    pub mlp_bias: bool,
    /// Attend to at most this many most recent positions (Mistral), if set; see
    /// [`ModelConfig::window`].
    pub sliding_window: Option<usize>,
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
        let activation = match o.str_opt("hidden_act")? {
            None => Activation::Silu,
            Some(act) => {
                Activation::from_hidden_act(act).ok_or_else(|| ConfigError::Unsupported {
                    key: "hidden_act".into(),
                    value: format!("{act:?}"),
                    reason: "only silu (SwiGLU) is implemented".into(),
                })?
            }
        };
        if let Some(f) = o.f64_opt("partial_rotary_factor")? {
            if f != 1.0 {
                return Err(ConfigError::Unsupported {
                    key: "partial_rotary_factor".into(),
                    value: f.to_string(),
                    reason: "only full rotary embeddings are implemented".into(),
                });
            }
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
        let tie_word_embeddings = o.bool_or("tie_word_embeddings", false)?;
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

        let (rope_theta, rope_scaling) = parse_rope(&o)?;

        let sliding_window = match family {
            Family::Mistral => o.usize_opt("sliding_window")?,
            Family::Qwen2 => {
                if o.bool_or("use_sliding_window", false)? {
                    return Err(ConfigError::Unsupported {
                        key: "use_sliding_window".into(),
                        value: "true".into(),
                        reason: "Qwen2's per-layer sliding window is not implemented".into(),
                    });
                }
                None
            }
            Family::Llama => None,
        };
        if sliding_window == Some(0) {
            return Err(ConfigError::Invalid {
                key: "sliding_window".into(),
                reason: "must be positive".into(),
            });
        }

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
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings,
            attention_bias,
            qkv_bias: family.qkv_bias(),
            mlp_bias,
            sliding_window,
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
    pub fn window(&self, _layer: usize) -> Option<usize> {
        self.sliding_window
    }
}

/// Reads `rope_parameters` (v5) if present, else `rope_theta` / `rope_scaling` (v4).
fn parse_rope(o: &Obj<'_>) -> Result<(f64, RopeScaling), ConfigError> {
    let (theta, scaling_obj, theta_key): (f64, Option<Obj<'_>>, String) =
        match o.get("rope_parameters") {
            Some(Value::Object(p)) => {
                let p = Obj(p, "rope_parameters");
                let theta = p.f64_opt("rope_theta")?.unwrap_or(10000.0);
                (theta, Some(p), "rope_parameters.rope_theta".into())
            }
            Some(v) => return Err(o.wrong("rope_parameters", "an object", v)),
            None => {
                let theta = o.f64_opt("rope_theta")?.unwrap_or(10000.0);
                let scaling = match o.get("rope_scaling") {
                    None => None,
                    Some(Value::Object(s)) => Some(Obj(s, "rope_scaling")),
                    Some(v) => return Err(o.wrong("rope_scaling", "an object or null", v)),
                };
                (theta, scaling, "rope_theta".into())
            }
        };
    if !(theta.is_finite() && theta > 0.0) {
        return Err(ConfigError::Invalid {
            key: theta_key,
            reason: format!("{theta} must be positive"),
        });
    }
    let Some(s) = scaling_obj else {
        return Ok((theta, RopeScaling::None));
    };
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
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor(&s)?,
        },
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
                factor: factor(&s)?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: s.usize("original_max_position_embeddings")?,
            }
        }
        other => {
            return Err(ConfigError::Unsupported {
                key: s.name(type_key),
                value: format!("{other:?}"),
                reason: "supported RoPE types: default, linear, llama3".into(),
            })
        }
    };
    Ok((theta, scaling))
}
