//! The Llama model: its weights under Hugging Face names, checked against the config.
//!
//! [`Model::new`] takes the loader's tensors by name, checks every shape and payload length,
//! and fails naming the first missing or misshapen tensor. The forward pass is in
//! [`forward`](crate::forward); cached generation in [`session`](crate::session).

use std::collections::HashMap;

use cllm_kernels::cpu::{KernelError, RmsNorm};
use cllm_kernels::Weight;

use crate::config::LlamaConfig;

/// Why a model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` is {rows}x{cols}, expected {expected_rows}x{expected_cols}")]
    Shape {
        name: String,
        expected_rows: usize,
        expected_cols: usize,
        rows: usize,
        cols: usize,
    },
    #[error("tensor `{name}`: {source}")]
    InvalidWeight { name: String, source: KernelError },
    #[error("token id {token} is out of range for vocab_size {vocab_size}")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error("no tokens given")]
    EmptyInput,
    #[error(
        "KV cache full: capacity {capacity}, at position {position}, {requested} more requested"
    )]
    CacheFull {
        capacity: usize,
        position: usize,
        requested: usize,
    },
    #[error(
        "KV cache capacity {capacity} exceeds max_position_embeddings {max_position_embeddings}"
    )]
    CapacityTooLarge {
        capacity: usize,
        max_position_embeddings: usize,
    },
    #[error("kernel error: {0}")]
    Kernel(#[from] KernelError),
}

/// A linear projection `y = W x (+ b)`, keeping its tensor name for traces and errors.
#[derive(Debug)]
pub(crate) struct Linear {
    /// Hugging Face module name without `.weight` (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    pub weight: Weight,
    pub bias: Option<Vec<f32>>,
}

/// One decoder layer.
#[derive(Debug)]
pub(crate) struct Layer {
    pub input_layernorm: RmsNorm,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub post_attention_layernorm: RmsNorm,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// A loaded Llama-family model.
#[derive(Debug)]
pub struct Model {
    pub(crate) cfg: LlamaConfig,
    pub(crate) embed_tokens: Weight,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: RmsNorm,
    /// `None` when the embeddings are tied: the embedding matrix is the LM head.
    pub(crate) lm_head: Option<Weight>,
    resident_bytes: usize,
    unused_tensors: Vec<String>,
}

/// Removes tensor `name` from `map` (the CPU's or the GPU's weights), checking that `shape` of
/// it is `rows x cols`.
pub(crate) fn take_shaped<W>(
    map: &mut HashMap<String, W>,
    name: &str,
    rows: usize,
    cols: usize,
    shape: impl Fn(&W) -> (usize, usize),
) -> Result<W, ModelError> {
    let w = map
        .remove(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    let (r, c) = shape(&w);
    if (r, c) != (rows, cols) {
        return Err(ModelError::Shape {
            name: name.to_string(),
            expected_rows: rows,
            expected_cols: cols,
            rows: r,
            cols: c,
        });
    }
    Ok(w)
}

/// Takes tensors out of the loader's map, checking them.
struct Tensors {
    map: HashMap<String, Weight>,
    bytes: usize,
}

impl Tensors {
    fn take(&mut self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        let w = take_shaped(&mut self.map, name, rows, cols, |w| (w.rows, w.cols))?;
        w.validate().map_err(|source| ModelError::InvalidWeight {
            name: name.to_string(),
            source,
        })?;
        self.bytes += w.resident_bytes();
        Ok(w)
    }

    /// A 1-D tensor of length `len` (stored as one row), as f32.
    fn take_vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let w = self.take(name, 1, len)?;
        w.to_f32_vec().map_err(|source| ModelError::InvalidWeight {
            name: name.to_string(),
            source,
        })
    }

    fn norm(&mut self, name: &str, len: usize, eps: f64) -> Result<RmsNorm, ModelError> {
        let w = self.take(name, 1, len)?;
        RmsNorm::new(&w, eps as f32).map_err(|source| ModelError::InvalidWeight {
            name: name.to_string(),
            source,
        })
    }

    /// `{module}.weight` (`rows x cols`) and, when present or `bias_required`, `{module}.bias`.
    fn linear(
        &mut self,
        module: String,
        rows: usize,
        cols: usize,
        bias_required: bool,
    ) -> Result<Linear, ModelError> {
        let weight = self.take(&format!("{module}.weight"), rows, cols)?;
        let bias_name = format!("{module}.bias");
        let bias = if bias_required || self.map.contains_key(&bias_name) {
            Some(self.take_vector(&bias_name, rows)?)
        } else {
            None
        };
        Ok(Linear {
            name: module,
            weight,
            bias,
        })
    }
}

impl Model {
    /// Builds the model from tensors named as in a Hugging Face checkpoint. Tensors the model
    /// does not use are dropped and listed by [`Model::unused_tensors`] (for example
    /// `lm_head.weight` of a checkpoint with tied embeddings).
    pub fn new(cfg: LlamaConfig, weights: HashMap<String, Weight>) -> Result<Model, ModelError> {
        let mut t = Tensors {
            map: weights,
            bytes: 0,
        };
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let eps = cfg.rms_norm_eps;
        let embed_tokens = t.take("model.embed_tokens.weight", v, h)?;
        let attn_bias = cfg.attention_bias;
        let qkv_bias = cfg.attention_bias || cfg.qkv_bias;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                input_layernorm: t.norm(&format!("{p}.input_layernorm.weight"), h, eps)?,
                q_proj: t.linear(format!("{p}.self_attn.q_proj"), qd, h, qkv_bias)?,
                k_proj: t.linear(format!("{p}.self_attn.k_proj"), kvd, h, qkv_bias)?,
                v_proj: t.linear(format!("{p}.self_attn.v_proj"), kvd, h, qkv_bias)?,
                o_proj: t.linear(format!("{p}.self_attn.o_proj"), h, qd, attn_bias)?,
                post_attention_layernorm: t.norm(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    eps,
                )?,
                gate_proj: t.linear(format!("{p}.mlp.gate_proj"), i, h, cfg.mlp_bias)?,
                up_proj: t.linear(format!("{p}.mlp.up_proj"), i, h, cfg.mlp_bias)?,
                down_proj: t.linear(format!("{p}.mlp.down_proj"), h, i, cfg.mlp_bias)?,
            });
        }
        let norm = t.norm("model.norm.weight", h, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(t.take("lm_head.weight", v, h)?)
        };
        let mut unused_tensors: Vec<String> = t.map.into_keys().collect();
        unused_tensors.sort();
        Ok(Model {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            resident_bytes: t.bytes,
            unused_tensors,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Bytes of weight data the model holds (payloads plus quantization scales).
    pub fn resident_bytes(&self) -> usize {
        self.resident_bytes
    }

    /// Names of tensors that were passed in but are not part of the model, sorted.
    pub fn unused_tensors(&self) -> &[String] {
        &self.unused_tensors
    }

    /// The matrix that maps the final hidden state to logits.
    pub(crate) fn lm_head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}
