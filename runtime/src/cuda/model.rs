//! The model on the GPU: resident weights taken from the loader by what they are (the tensor
//! table of `cllm-model`), checked like the CPU [`CpuModel`](crate::cpu::CpuModel), plus the
//! small f32 vectors (norm weights, biases) the kernels take.

use std::collections::HashMap;
use std::sync::Arc;

use cllm_cuda::{CudaError, DeviceBuffer, Gpu};
use cllm_format::WeightForm;
use cllm_kernels::cuda::{GpuWeight, Kernels, WDesc, PSTRIDE};
use cllm_model::{Activation, ModelConfig, Module, RopeScaling, TensorId};

use crate::error::ModelError;
use crate::sampler::SamplerError;
use crate::tensors::{Shaped, Tensors};

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

/// A projection: its weight, optional f32 bias, and warps per row pair (fixed per weight:
/// `Kernels::ksplit_for`).
pub(crate) struct GpuLinear {
    pub w: GpuWeight,
    pub bias: Option<DeviceBuffer>,
    pub ksplit: i32,
}

impl GpuLinear {
    pub fn desc(&self) -> WDesc {
        self.w.desc(self.bias.as_ref().map_or(0, |b| b.ptr()))
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

/// A model whose weights live on the GPU.
pub struct GpuModel {
    pub(crate) kernels: Arc<Kernels>,
    pub(crate) cfg: ModelConfig,
    pub(crate) embed: GpuWeight,
    pub(crate) lm_head: GpuLinear,
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
    Ok(match w.form {
        WeightForm::F32 => {
            let mut v = vec![0f32; n];
            gpu.dtoh(&mut v, w.data)?;
            v
        }
        WeightForm::Bf16 | WeightForm::F16 => {
            let mut v = vec![0u16; n];
            gpu.dtoh(&mut v, w.data)?;
            if w.form == WeightForm::Bf16 {
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
                w.form.name()
            ))
            .into())
        }
    })
}

impl Shaped for GpuWeight {
    fn rows_cols(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

struct Take<'a> {
    kernels: &'a Arc<Kernels>,
    t: Tensors<'a, GpuWeight>,
    bytes: u64,
}

impl Take<'_> {
    fn weight(&mut self, id: TensorId) -> Result<GpuWeight, GpuError> {
        let (_, w) = self.t.take(id)?;
        self.bytes += w.bytes;
        Ok(w)
    }

    /// A 1-D tensor as f32 values on the device.
    fn upload_vector(&mut self, name: &str, w: GpuWeight) -> Result<DeviceBuffer, GpuError> {
        self.bytes += w.bytes;
        let gpu = self.kernels.gpu();
        let v = vector_f32(gpu, name, &w)?;
        Ok(gpu.upload(name, &v)?)
    }

    fn norm(&mut self, module: Module, layer: Option<usize>) -> Result<DeviceBuffer, GpuError> {
        let (name, w) = self.t.take(TensorId::weight(module, layer))?;
        self.upload_vector(&name, w)
    }

    fn linear(&mut self, module: Module, layer: usize) -> Result<GpuLinear, GpuError> {
        let id = TensorId::weight(module, Some(layer));
        let w = self.weight(id)?;
        let bias = match self.t.bias(module, Some(layer))? {
            Some((name, b)) => Some(self.upload_vector(&name, b)?),
            None => None,
        };
        self.projection(id, w, bias)
    }

    /// A weight the GEMV kernels take, with its bias.
    fn projection(
        &self,
        id: TensorId,
        w: GpuWeight,
        bias: Option<DeviceBuffer>,
    ) -> Result<GpuLinear, GpuError> {
        w.check_gemv(&id.hf_name())?;
        let ksplit = self.kernels.ksplit_for(&w);
        Ok(GpuLinear { w, bias, ksplit })
    }
}

/// The first variant of the model description the GPU launch plan (`plan.rs`) cannot run yet.
fn plan_lacks(cfg: &ModelConfig) -> Option<&'static str> {
    let f = cfg.family;
    let default_scale = (cfg.head_dim as f64).powf(-0.5) as f32;
    let gaps = [
        (f.qk_norm(), "per-head q/k norm"),
        (f.sandwich_norms(), "norms around attention and MLP"),
        (f.norm_weight_offset(), "(1 + w) norm weights"),
        (f.scaled_embedding(), "embedding scale"),
        (f.fused_projections(), "fused qkv/gate_up projections"),
        (cfg.activation != Activation::Silu, "GeGLU activation"),
        (cfg.rotary_dim != cfg.head_dim, "partial rotary embedding"),
        (cfg.sliding_rope.is_some(), "per-layer RoPE"),
        (
            matches!(cfg.rope_scaling, RopeScaling::LongRope { .. }),
            "longrope scaling",
        ),
        (cfg.attention_scale() != default_scale, "attention scale"),
    ];
    gaps.into_iter().find(|(lacks, _)| *lacks).map(|(_, what)| what)
}

impl GpuModel {
    /// Builds the model from resident tensors named as in a Hugging Face checkpoint (the GPU
    /// loader's output), with the CPU model's checks.
    pub fn new(
        kernels: &Arc<Kernels>,
        cfg: ModelConfig,
        weights: HashMap<String, GpuWeight>,
    ) -> Result<GpuModel, GpuError> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        if hd % 4 != 0 || hd > 256 || h % 2 != 0 || h / 2 > PSTRIDE {
            return Err(CudaError::Unsupported(format!(
                "the GPU backend needs head_dim a multiple of 4 up to 256 and hidden_size even and \
                 at most {} (head_dim {hd}, hidden_size {h})",
                PSTRIDE * 2
            ))
            .into());
        }
        if let Some(missing) = plan_lacks(&cfg) {
            return Err(CudaError::Unsupported(format!(
                "the GPU backend does not run {} models yet: its launch plan has no {missing} \
                 (run with --device cpu)",
                cfg.family.model_type()
            ))
            .into());
        }
        let mut t = Take {
            kernels,
            t: Tensors::new(&cfg, weights),
            bytes: 0,
        };
        let embed = t.weight(TensorId::weight(Module::Embed, None))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            layers.push(GpuLayer {
                input_norm: t.norm(Module::InputNorm, Some(l))?,
                q: t.linear(Module::QProj, l)?,
                k: t.linear(Module::KProj, l)?,
                v: t.linear(Module::VProj, l)?,
                o: t.linear(Module::OProj, l)?,
                post_norm: t.norm(Module::PostAttnNorm, Some(l))?,
                gate: t.linear(Module::GateProj, l)?,
                up: t.linear(Module::UpProj, l)?,
                down: t.linear(Module::DownProj, l)?,
            });
        }
        let final_norm = t.norm(Module::FinalNorm, None)?;
        let head = TensorId::weight(Module::LmHead, None);
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            t.weight(head)?
        };
        let lm_head = t.projection(head, lm_head, None)?;
        let resident_bytes = t.bytes;
        let unused = t.t.unused();
        Ok(GpuModel {
            kernels: kernels.clone(),
            cfg,
            embed,
            lm_head,
            layers,
            final_norm,
            resident_bytes,
            unused,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        self.kernels.gpu()
    }

    pub fn kernels(&self) -> &Arc<Kernels> {
        &self.kernels
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
