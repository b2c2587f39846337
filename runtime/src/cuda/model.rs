//! The model on the GPU: resident weights taken from the loader by what they are (the tensor
//! table of `cllm-model`), checked like the CPU [`CpuModel`](crate::cpu::CpuModel), plus the
//! small f32 vectors (norm weights, biases) the kernels take.

use std::collections::HashMap;
use std::sync::Arc;

use cllm_cuda::{CudaError, DeviceBuffer, Gpu};
use cllm_format::WeightForm;
use cllm_kernels::cuda::{GpuWeight, Kernels, WDesc, PSTRIDE};
use cllm_model::{ModelConfig, Module, TensorId};

use crate::error::ModelError;
use crate::kv::KvPrecision;
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

/// One decoder layer on the GPU. Norm weights are f32, as `1 + w` where the family says so. A
/// fused projection (`qkv_proj`, `gate_up_proj`) is taken as its parts' rows of the same memory.
pub(crate) struct GpuLayer {
    pub input_norm: DeviceBuffer,
    /// The MLP's input norm (`Family::mlp_norm`).
    pub mlp_norm: DeviceBuffer,
    /// Per-head q and k norms (Qwen3, Gemma 3).
    pub qk_norm: Option<(DeviceBuffer, DeviceBuffer)>,
    /// Norms of the attention and MLP outputs before the residual (Gemma 3).
    pub out_norms: Option<(DeviceBuffer, DeviceBuffer)>,
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
    /// How the caches of this model's sessions store keys and values.
    pub(crate) kv: KvPrecision,
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

    /// A 1-D tensor as f32 values on the device, plus `offset` (in f32, as the CPU's norms).
    fn upload_vector(
        &mut self,
        name: &str,
        w: GpuWeight,
        offset: f32,
    ) -> Result<DeviceBuffer, GpuError> {
        self.bytes += w.bytes;
        let gpu = self.kernels.gpu();
        let mut v = vector_f32(gpu, name, &w)?;
        if offset != 0.0 {
            v.iter_mut().for_each(|x| *x += offset);
        }
        Ok(gpu.upload(name, &v)?)
    }

    /// A norm's weight, as `1 + w` where the family's norms take it so.
    fn norm(&mut self, module: Module, layer: Option<usize>) -> Result<DeviceBuffer, GpuError> {
        let (name, w) = self.t.take(TensorId::weight(module, layer))?;
        let offset = if self.t.config().family.norm_weight_offset() {
            1.0
        } else {
            0.0
        };
        self.upload_vector(&name, w, offset)
    }

    /// The parts of a fused projection, each `rows` rows (no biases: the families with fused
    /// projections have none).
    fn fused<const K: usize>(
        &mut self,
        module: Module,
        layer: usize,
        rows: [usize; K],
    ) -> Result<[GpuLinear; K], GpuError> {
        let id = TensorId::weight(module, Some(layer));
        if self.t.config().has_bias(module) {
            return Err(CudaError::Unsupported(format!(
                "{}: a fused projection with a bias is not supported on the GPU",
                id.hf_name()
            ))
            .into());
        }
        let w = self.weight(id)?;
        let mut at = 0;
        let mut parts = Vec::with_capacity(K);
        for r in rows {
            parts.push(self.projection(id, w.rows(at, at + r)?, None)?);
            at += r;
        }
        parts.try_into().map_err(|_| {
            CudaError::Unsupported(format!("{}: parts of a fused projection", id.hf_name())).into()
        })
    }

    fn linear(&mut self, module: Module, layer: usize) -> Result<GpuLinear, GpuError> {
        let id = TensorId::weight(module, Some(layer));
        let w = self.weight(id)?;
        let bias = match self.t.bias(module, Some(layer))? {
            Some((name, b)) => Some(self.upload_vector(&name, b, 0.0)?),
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
        let mut t = Take {
            kernels,
            t: Tensors::new(&cfg, weights),
            bytes: 0,
        };
        let embed = t.weight(TensorId::weight(Module::Embed, None))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let family = cfg.family;
        for l in 0..cfg.num_hidden_layers {
            let input_norm = t.norm(Module::InputNorm, Some(l))?;
            let [q, k, v] = if family.fused_projections() {
                t.fused(
                    Module::QkvProj,
                    l,
                    [cfg.q_dim(), cfg.kv_dim(), cfg.kv_dim()],
                )?
            } else {
                [
                    t.linear(Module::QProj, l)?,
                    t.linear(Module::KProj, l)?,
                    t.linear(Module::VProj, l)?,
                ]
            };
            let qk_norm = if family.qk_norm() {
                Some((
                    t.norm(Module::QNorm, Some(l))?,
                    t.norm(Module::KNorm, Some(l))?,
                ))
            } else {
                None
            };
            let o = t.linear(Module::OProj, l)?;
            let [gate, up] = if family.fused_projections() {
                let inter = cfg.intermediate_size;
                t.fused(Module::GateUpProj, l, [inter, inter])?
            } else {
                [t.linear(Module::GateProj, l)?, t.linear(Module::UpProj, l)?]
            };
            let down = t.linear(Module::DownProj, l)?;
            let out_norms = if family.sandwich_norms() {
                Some((
                    t.norm(Module::PostAttnNorm, Some(l))?,
                    t.norm(Module::PostFfnNorm, Some(l))?,
                ))
            } else {
                None
            };
            layers.push(GpuLayer {
                input_norm,
                mlp_norm: t.norm(family.mlp_norm(), Some(l))?,
                qk_norm,
                out_norms,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
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
            kv: KvPrecision::F32,
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

    /// Sets how the KV caches of later sessions and passes store keys and values.
    pub fn set_kv_precision(&mut self, kv: KvPrecision) {
        self.kv = kv;
    }

    pub fn kv_precision(&self) -> KvPrecision {
        self.kv
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
