//! The Llama model on the GPU: resident weights by Hugging Face name, checked like the CPU
//! [`Model`](crate::Model), plus the small f32 vectors (norm weights, biases) the kernels take.

use std::collections::HashMap;
use std::sync::Arc;

use cllm_kernels::cuda::{
    ksplit_for, CudaError, DeviceBuffer, Gpu, GpuWeight, GpuWeightKind, WDesc, PSTRIDE,
};

use crate::config::LlamaConfig;
use crate::model::{take_shaped, ModelError};
use crate::sampler::SamplerError;

/// Why the GPU model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
}

/// A projection: its weight and optional f32 bias.
pub(crate) struct GpuLinear {
    pub w: GpuWeight,
    pub bias: Option<DeviceBuffer>,
}

impl GpuLinear {
    pub fn desc(&self) -> WDesc {
        self.w.desc(self.bias.as_ref().map_or(0, |b| b.ptr()))
    }

    /// Warps per row pair (fixed per weight: see `ksplit_for`).
    pub fn ksplit(&self) -> i32 {
        ksplit_for(&self.w)
    }
}

pub(crate) struct GpuLayer {
    pub input_norm: DeviceBuffer,
    pub post_norm: DeviceBuffer,
    pub q: GpuLinear,
    pub k: GpuLinear,
    pub v: GpuLinear,
    pub o: GpuLinear,
    pub gate: GpuLinear,
    pub up: GpuLinear,
    pub down: GpuLinear,
}

/// A Llama-family model whose weights live on the GPU.
pub struct GpuModel {
    pub(crate) gpu: Arc<Gpu>,
    pub(crate) cfg: LlamaConfig,
    pub(crate) embed: GpuWeight,
    pub(crate) lm_head: GpuWeight,
    pub(crate) layers: Vec<GpuLayer>,
    pub(crate) final_norm: DeviceBuffer,
    resident_bytes: u64,
    unused: Vec<String>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("layers", &self.layers.len())
            .field("resident_bytes", &self.resident_bytes)
            .finish()
    }
}

/// A 1-D resident tensor as f32 values (norm weights and biases are small: read back once).
fn vector_f32(gpu: &Arc<Gpu>, name: &str, w: &GpuWeight) -> Result<Vec<f32>, GpuError> {
    let n = w.rows * w.cols;
    Ok(match w.kind {
        GpuWeightKind::F32 => {
            let mut v = vec![0f32; n];
            gpu.dtoh(&mut v, w.data)?;
            v
        }
        GpuWeightKind::Bf16 | GpuWeightKind::F16 => {
            let mut v = vec![0u16; n];
            gpu.dtoh(&mut v, w.data)?;
            if w.kind == GpuWeightKind::Bf16 {
                v.iter()
                    .map(|&b| f32::from_bits((b as u32) << 16))
                    .collect()
            } else {
                v.iter()
                    .map(|&b| half::f16::from_bits(b).to_f32())
                    .collect()
            }
        }
        _ => {
            return Err(CudaError::Unsupported(format!(
                "tensor {name}: a quantized vector ({}) is not supported",
                w.kind.name()
            ))
            .into())
        }
    })
}

struct Take<'a> {
    gpu: &'a Arc<Gpu>,
    map: HashMap<String, GpuWeight>,
    bytes: u64,
}

impl Take<'_> {
    fn weight(&mut self, name: &str, rows: usize, cols: usize) -> Result<GpuWeight, GpuError> {
        let w = take_shaped(&mut self.map, name, rows, cols, |w| (w.rows, w.cols))?;
        self.bytes += w.bytes;
        Ok(w)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<DeviceBuffer, GpuError> {
        let w = self.weight(name, 1, len)?;
        let v = vector_f32(self.gpu, name, &w)?;
        Ok(self.gpu.upload(name, &v)?)
    }

    fn linear(
        &mut self,
        module: &str,
        rows: usize,
        cols: usize,
        bias: bool,
    ) -> Result<GpuLinear, GpuError> {
        let name = format!("{module}.weight");
        let w = self.weight(&name, rows, cols)?;
        w.check_gemv(&name)?;
        let bias_name = format!("{module}.bias");
        let bias = if bias || self.map.contains_key(&bias_name) {
            Some(self.vector(&bias_name, rows)?)
        } else {
            None
        };
        Ok(GpuLinear { w, bias })
    }
}

impl GpuModel {
    /// Builds the model from resident tensors named as in a Hugging Face checkpoint (the GPU
    /// loader's output), with the CPU model's checks.
    pub fn new(
        gpu: &Arc<Gpu>,
        cfg: LlamaConfig,
        weights: HashMap<String, GpuWeight>,
    ) -> Result<GpuModel, GpuError> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        if hd % 4 != 0 || hd > 256 || h % 2 != 0 || h / 2 > PSTRIDE {
            return Err(CudaError::Unsupported(format!(
                "the GPU backend needs head_dim a multiple of 4 up to 256 and hidden_size even and \
                 at most {} (head_dim {hd}, hidden_size {h})",
                PSTRIDE * 2
            ))
            .into());
        }
        let mut t = Take {
            gpu,
            map: weights,
            bytes: 0,
        };
        let embed = t.weight("model.embed_tokens.weight", v, h)?;
        let qkv_bias = cfg.attention_bias || cfg.qkv_bias;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(GpuLayer {
                input_norm: t.vector(&format!("{p}.input_layernorm.weight"), h)?,
                q: t.linear(&format!("{p}.self_attn.q_proj"), qd, h, qkv_bias)?,
                k: t.linear(&format!("{p}.self_attn.k_proj"), kvd, h, qkv_bias)?,
                v: t.linear(&format!("{p}.self_attn.v_proj"), kvd, h, qkv_bias)?,
                o: t.linear(&format!("{p}.self_attn.o_proj"), h, qd, cfg.attention_bias)?,
                post_norm: t.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate: t.linear(&format!("{p}.mlp.gate_proj"), i, h, cfg.mlp_bias)?,
                up: t.linear(&format!("{p}.mlp.up_proj"), i, h, cfg.mlp_bias)?,
                down: t.linear(&format!("{p}.mlp.down_proj"), h, i, cfg.mlp_bias)?,
            });
        }
        let final_norm = t.vector("model.norm.weight", h)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            t.weight("lm_head.weight", v, h)?
        };
        lm_head.check_gemv("lm_head.weight")?;
        let mut unused: Vec<String> = t.map.into_keys().collect();
        unused.sort();
        Ok(GpuModel {
            gpu: gpu.clone(),
            cfg,
            embed,
            lm_head,
            layers,
            final_norm,
            resident_bytes: t.bytes,
            unused,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Bytes of weights the model holds on the GPU (payloads plus quantization scales).
    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    /// Bytes one decode step reads from the weights: every matrix once, of the embedding one
    /// row (unless it is also the LM head).
    pub fn bytes_per_token(&self) -> u64 {
        let row = self.embed.bytes / self.embed.rows.max(1) as u64;
        if self.cfg.tie_word_embeddings {
            self.resident_bytes + row
        } else {
            self.resident_bytes - self.embed.bytes + row
        }
    }

    pub fn unused_tensors(&self) -> &[String] {
        &self.unused
    }
}
