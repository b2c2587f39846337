//! The model on the CPU: its weights taken from the loader by what they are (the tensor table of
//! `cllm-model`), each checked against the config; the first missing or misshapen tensor is
//! named. The forward pass is in [`forward`](super::forward); cached generation in
//! [`session`](super::session).

use std::collections::HashMap;

use cllm_kernels::cpu::RmsNorm;
use cllm_kernels::Weight;
use cllm_model::{ModelConfig, Module, TensorId};

use crate::error::ModelError;
use crate::kv::KvPrecision;
use crate::tensors::{Shaped, Tensors};

impl Shaped for Weight {
    fn rows_cols(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// A linear projection `y = W x (+ b)`, keeping its module for traces.
#[derive(Debug)]
pub(crate) struct Linear {
    pub module: Module,
    pub weight: Weight,
    pub bias: Option<Vec<f32>>,
}

/// Projections that may be one fused matrix: q/k/v (`qkv_proj`) or gate/up (`gate_up_proj`).
/// A fused matrix's output rows are the parts' rows side by side, each element its own dot
/// product, so its values are the separate projections' bits.
#[derive(Debug)]
pub(crate) enum Projections<const K: usize> {
    Separate([Linear; K]),
    Fused(Linear),
}

impl<const K: usize> Projections<K> {
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Projections::Separate(ls) => ls.iter().collect(),
            Projections::Fused(l) => vec![l],
        }
    }
}

/// One decoder layer, with the parts its family has (see `cllm_model::Family`).
#[derive(Debug)]
pub(crate) struct Layer {
    pub input_layernorm: RmsNorm,
    pub qkv: Projections<3>,
    /// Per-head norms of q and k (Qwen3, Gemma 3).
    pub qk_norm: Option<(RmsNorm, RmsNorm)>,
    pub o_proj: Linear,
    /// The attention output's norm before the residual (Gemma 3's `post_attention_layernorm`).
    pub attn_out_norm: Option<RmsNorm>,
    /// The MLP's input norm (`Family::mlp_norm`).
    pub mlp_norm: RmsNorm,
    pub gate_up: Projections<2>,
    pub down_proj: Linear,
    /// The MLP output's norm before the residual (Gemma 3's `post_feedforward_layernorm`).
    pub mlp_out_norm: Option<RmsNorm>,
}

impl Layer {
    pub fn projections(&self) -> Vec<&Linear> {
        let mut v = self.qkv.linears();
        v.push(&self.o_proj);
        v.extend(self.gate_up.linears());
        v.push(&self.down_proj);
        v
    }
}

/// A model whose weights are in CPU memory.
#[derive(Debug)]
pub struct CpuModel {
    pub(crate) cfg: ModelConfig,
    pub(crate) embed_tokens: Weight,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: RmsNorm,
    /// `None` when the embeddings are tied: the embedding matrix is the LM head.
    pub(crate) lm_head: Option<Weight>,
    resident_bytes: usize,
    unused_tensors: Vec<String>,
    /// How the caches of this model's sessions store keys and values.
    pub(crate) kv: KvPrecision,
}

/// Takes tensors out of the loader's map, checking them.
struct Take<'c> {
    t: Tensors<'c, Weight>,
    bytes: usize,
}

impl Take<'_> {
    fn weight(&mut self, id: TensorId) -> Result<Weight, ModelError> {
        let (name, w) = self.t.take(id)?;
        w.validate()
            .map_err(|source| ModelError::InvalidWeight { name, source })?;
        // The layout the CPU's kernels read fastest, the same values.
        let w = cllm_kernels::cpu::prepare(w);
        self.bytes += w.resident_bytes();
        Ok(w)
    }

    /// A norm's weight, as `1 + w` where the family says so.
    fn norm(
        &mut self,
        module: Module,
        layer: Option<usize>,
        cfg: &ModelConfig,
    ) -> Result<RmsNorm, ModelError> {
        let id = TensorId::weight(module, layer);
        let w = self.weight(id)?;
        let eps = cfg.rms_norm_eps as f32;
        let norm = if cfg.family.norm_weight_offset() {
            RmsNorm::with_unit_offset(&w, eps)
        } else {
            RmsNorm::new(&w, eps)
        };
        norm.map_err(|source| ModelError::InvalidWeight {
            name: id.hf_name(),
            source,
        })
    }

    fn linear(&mut self, module: Module, layer: usize) -> Result<Linear, ModelError> {
        let weight = self.weight(TensorId::weight(module, Some(layer)))?;
        let bias = match self.t.bias(module, Some(layer))? {
            Some((name, b)) => {
                b.validate().map_err(|source| ModelError::InvalidWeight {
                    name: name.clone(),
                    source,
                })?;
                self.bytes += b.resident_bytes();
                Some(
                    b.to_f32_vec()
                        .map_err(|source| ModelError::InvalidWeight { name, source })?,
                )
            }
            None => None,
        };
        Ok(Linear {
            module,
            weight,
            bias,
        })
    }
}

impl CpuModel {
    /// Builds the model from tensors named as in a Hugging Face checkpoint. Tensors the model
    /// does not use are dropped and listed by [`CpuModel::unused_tensors`] (for example
    /// `lm_head.weight` of a checkpoint with tied embeddings).
    pub fn new(cfg: ModelConfig, weights: HashMap<String, Weight>) -> Result<CpuModel, ModelError> {
        let mut t = Take {
            t: Tensors::new(&cfg, weights),
            bytes: 0,
        };
        let embed_tokens = t.weight(TensorId::weight(Module::Embed, None))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let family = cfg.family;
        let sandwich = family.sandwich_norms();
        for l in 0..cfg.num_hidden_layers {
            let input_layernorm = t.norm(Module::InputNorm, Some(l), &cfg)?;
            let qkv = if family.fused_projections() {
                Projections::Fused(t.linear(Module::QkvProj, l)?)
            } else {
                Projections::Separate([
                    t.linear(Module::QProj, l)?,
                    t.linear(Module::KProj, l)?,
                    t.linear(Module::VProj, l)?,
                ])
            };
            let qk_norm = if family.qk_norm() {
                Some((
                    t.norm(Module::QNorm, Some(l), &cfg)?,
                    t.norm(Module::KNorm, Some(l), &cfg)?,
                ))
            } else {
                None
            };
            let o_proj = t.linear(Module::OProj, l)?;
            let attn_out_norm = if sandwich {
                Some(t.norm(Module::PostAttnNorm, Some(l), &cfg)?)
            } else {
                None
            };
            let mlp_norm = t.norm(family.mlp_norm(), Some(l), &cfg)?;
            let gate_up = if family.fused_projections() {
                Projections::Fused(t.linear(Module::GateUpProj, l)?)
            } else {
                Projections::Separate([
                    t.linear(Module::GateProj, l)?,
                    t.linear(Module::UpProj, l)?,
                ])
            };
            let down_proj = t.linear(Module::DownProj, l)?;
            let mlp_out_norm = if sandwich {
                Some(t.norm(Module::PostFfnNorm, Some(l), &cfg)?)
            } else {
                None
            };
            layers.push(Layer {
                input_layernorm,
                qkv,
                qk_norm,
                o_proj,
                attn_out_norm,
                mlp_norm,
                gate_up,
                down_proj,
                mlp_out_norm,
            });
        }
        let norm = t.norm(Module::FinalNorm, None, &cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(t.weight(TensorId::weight(Module::LmHead, None))?)
        };
        let resident_bytes = t.bytes;
        let unused_tensors = t.t.unused();
        Ok(CpuModel {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            resident_bytes,
            unused_tensors,
            kv: KvPrecision::F32,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Sets how the KV caches of later sessions and passes store keys and values.
    pub fn set_kv_precision(&mut self, kv: KvPrecision) {
        self.kv = kv;
    }

    pub fn kv_precision(&self) -> KvPrecision {
        self.kv
    }

    /// Bytes of weight data the model holds (payloads plus quantization scales).
    pub fn resident_bytes(&self) -> usize {
        self.resident_bytes
    }

    /// Bytes one decode step reads from the weights: every matrix once, of an untied embedding
    /// only one row.
    pub fn bytes_per_token(&self) -> u64 {
        let embed = self.embed_tokens.resident_bytes() as u64;
        let row = embed / self.embed_tokens.rows.max(1) as u64;
        if self.cfg.tie_word_embeddings {
            self.resident_bytes as u64 + row
        } else {
            self.resident_bytes as u64 - embed + row
        }
    }

    /// Names of tensors that were passed in but are not part of the model, sorted.
    pub fn unused_tensors(&self) -> &[String] {
        &self.unused_tensors
    }

    /// The matrix that maps the final hidden state to logits.
    pub(crate) fn lm_head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// The projection a module name denotes (`model.layers.3.mlp.down_proj`, `lm_head`).
    pub(crate) fn projection(&self, module: &str) -> Option<(&Weight, Option<&[f32]>)> {
        if module == Module::LmHead.hf_name(0) {
            return Some((self.lm_head(), None));
        }
        let id = TensorId::parse_hf(&format!("{module}.weight"))?;
        let layer = self.layers.get(id.layer?)?;
        let lin = layer
            .projections()
            .into_iter()
            .find(|p| p.module == id.module)?;
        Some((&lin.weight, lin.bias.as_deref()))
    }
}
