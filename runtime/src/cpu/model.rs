//! The model on the CPU: its weights taken from the loader by what they are (the tensor table of
//! `cllm-model`), each checked against the config; the first missing or misshapen tensor is
//! named. The forward pass is in [`forward`](super::forward); cached generation in
//! [`session`](super::session).

use std::collections::HashMap;

use cllm_kernels::cpu::RmsNorm;
use cllm_kernels::Weight;
use cllm_model::{ModelConfig, Module, TensorId};

use crate::error::ModelError;
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

impl Layer {
    pub fn projections(&self) -> [&Linear; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
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
        self.bytes += w.resident_bytes();
        Ok(w)
    }

    fn norm(
        &mut self,
        module: Module,
        layer: Option<usize>,
        eps: f64,
    ) -> Result<RmsNorm, ModelError> {
        let id = TensorId::weight(module, layer);
        let w = self.weight(id)?;
        RmsNorm::new(&w, eps as f32).map_err(|source| ModelError::InvalidWeight {
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
        let eps = cfg.rms_norm_eps;
        let embed_tokens = t.weight(TensorId::weight(Module::Embed, None))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            layers.push(Layer {
                input_layernorm: t.norm(Module::InputNorm, Some(l), eps)?,
                q_proj: t.linear(Module::QProj, l)?,
                k_proj: t.linear(Module::KProj, l)?,
                v_proj: t.linear(Module::VProj, l)?,
                o_proj: t.linear(Module::OProj, l)?,
                post_attention_layernorm: t.norm(Module::PostAttnNorm, Some(l), eps)?,
                gate_proj: t.linear(Module::GateProj, l)?,
                up_proj: t.linear(Module::UpProj, l)?,
                down_proj: t.linear(Module::DownProj, l)?,
            });
        }
        let norm = t.norm(Module::FinalNorm, None, eps)?;
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
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
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
