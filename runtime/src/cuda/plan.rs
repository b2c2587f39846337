//! The launches of one step of a decode or prefill on the GPU: the decoder layer of the model
//! description as a plan of fused launches (see kernels/src/cuda/gemv.cu for the epilogues):
//! `embed` -> per layer [`QKV` (norm, biases, RoPE, cache write) -> `attention` (the layer's
//! window) -> `o_proj` (+ residual, next norm's inputs) -> `gate/up` (norm, activation) -> `down`
//! (+ residual, next norm's inputs)] -> `LM head` (final norm, logits, argmax). The family's
//! variants: per-head q/k norms or a partial rotary move RoPE out of the QKV launch into
//! `head_norm_rope`; norms of the attention and MLP outputs (Gemma) make `o_proj` and `down`
//! plain projections followed by `norm_residual`; fused projections are their parts' rows
//! (`GpuModel::new`). The CPU's forward pass (`cpu::forward`) computes the same layer step by
//! step; a variant the plan cannot run fails to compile here (`match` over it).

use cllm_kernels::cuda::{
    AttnArgs, EmbedArgs, GateAct, GemvArgs, GemvMode, HeadArgs, Kernels, KvForm, KvStoreArgs,
    NormResidArgs, ATT_CHUNK, PSTRIDE,
};
use cllm_model::{Activation, ModelConfig};

use cllm_cuda::DeviceBuffer;
use cllm_kernels::cpu::RopeTable;

use super::model::{GpuError, GpuLinear, GpuModel};
use crate::error::ModelError;
use crate::kv::{int8_scale_bytes, KvPrecision};

/// Device scalars: position, error flag, then (from byte 16) per-token argmax keys.
pub(super) const STATE_POS: u64 = 0;
pub(super) const STATE_ERR: u64 = 4;
pub(super) const STATE_ARGMAX: u64 = 16;

/// The session's room for x's pieces (`GemvArgs::xq`): `nmax` tokens of the widest GEMV input.
pub(super) fn xq_pieces_bytes(cfg: &ModelConfig, nmax: usize) -> usize {
    let widest = cfg.hidden_size.max(cfg.q_dim()).max(cfg.intermediate_size);
    Kernels::mma_pieces_bytes(nmax, widest)
}

/// One launch of a step (or a point between launches). Unboxed: a plan is a few ops per layer,
/// built once per step or graph.
#[allow(clippy::large_enum_variant)]
pub(super) enum Op {
    Embed(EmbedArgs),
    /// Arguments and the name profiles show.
    Gemv(GemvArgs, &'static str),
    /// Arguments and chunk slots per (head, token).
    Attention(AttnArgs, usize),
    /// Per-head norm and RoPE of the new queries and keys.
    HeadNormRope(HeadArgs),
    /// The new keys and values rounded into a bf16 or int8 cache.
    KvStore(KvStoreArgs),
    /// A projection's output normed into the residual stream.
    NormResidual(NormResidArgs),
    /// Layer `l`'s output hidden state is complete.
    LayerEnd(usize),
}

impl Op {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Embed(_) => "embed",
            Op::Gemv(_, name) => name,
            Op::Attention(..) => "attention",
            Op::HeadNormRope(_) => "head norm/rope",
            Op::KvStore(_) => "kv store",
            Op::NormResidual(_) => "norm residual",
            Op::LayerEnd(_) => "layer end",
        }
    }
}

/// Which logits a step computes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Logits {
    None,
    Last,
    All,
}

/// What a session's launches read and write on the device: the KV cache, the RoPE table, the
/// activations of up to `nmax` tokens per launch, the attention's chunk slots, the state scalars.
pub(super) struct StepBuffers {
    pub capacity: usize,
    pub nmax: usize,
    /// Attention chunk slots per (head, token).
    pub cmax: usize,
    /// How the cache stores keys and values.
    pub kv: KvForm,
    kcache: DeviceBuffer,
    vcache: DeviceBuffer,
    /// int8: the scales of `kcache` and `vcache`, `[layer][kv_head][position]`.
    kscale: DeviceBuffer,
    vscale: DeviceBuffer,
    /// bf16 and int8: the launch's new keys and values in f32, `[kv_head][nmax][head_dim]`,
    /// before `kv_store` rounds them into the cache.
    kstage: DeviceBuffer,
    vstage: DeviceBuffer,
    /// cos and sin of each of the model's RoPEs (`ModelConfig::ropes`), `rotary_dim / 2` wide.
    ropes: Vec<(DeviceBuffer, DeviceBuffer)>,
    /// A projection's output before its norm (families with norms around attention and MLP).
    proj: DeviceBuffer,
    pub h: DeviceBuffer,
    xw: DeviceBuffer,
    q: DeviceBuffer,
    attn: DeviceBuffer,
    act: DeviceBuffer,
    partial: DeviceBuffer,
    pub logits: DeviceBuffer,
    part_o: DeviceBuffer,
    part_ml: DeviceBuffer,
    counters: DeviceBuffer,
    pub tokens: DeviceBuffer,
    pub state: DeviceBuffer,
    xq: DeviceBuffer,
}

impl StepBuffers {
    /// Buffers for `capacity` positions and launches of up to `nmax` tokens, the KV cache
    /// poisoned (a read of an unwritten position shows as NaN), the state zeroed.
    pub fn new(model: &GpuModel, capacity: usize, nmax: usize) -> Result<StepBuffers, GpuError> {
        let cfg = &model.cfg;
        let gpu = model.gpu();
        let cmax = capacity.div_ceil(ATT_CHUNK);
        let (hidden, hd) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let cache_floats = cfg.num_hidden_layers * kvh * capacity * hd;
        model
            .kv
            .check(hd)
            .map_err(|reason| ModelError::KvCacheForm { reason })?;
        let kv = match model.kv {
            KvPrecision::F32 => KvForm::F32,
            KvPrecision::Bf16 => KvForm::Bf16,
            KvPrecision::Int8 => KvForm::Int8,
        };
        let f = 4usize;
        let cache_bytes = cache_floats * kv.element_bytes();
        // int8: a bf16 scale per block of values, rounded up to whole words for the poison
        // fill below.
        let scale_bytes = if kv == KvForm::Int8 {
            (cfg.num_hidden_layers * kvh * capacity * int8_scale_bytes(hd)).next_multiple_of(4)
        } else {
            f
        };
        let stage_bytes = if kv == KvForm::F32 {
            f
        } else {
            kvh * nmax * hd * f
        };
        let half = cfg.rotary_dim / 2;
        let sizes = [
            cache_bytes,
            cache_bytes,
            capacity * half * f * cfg.ropes().len(),
            if cfg.family.sandwich_norms() {
                nmax * hidden * f
            } else {
                f
            },
            nmax * hidden * f,
            nmax * hidden * f,
            nmax * cfg.q_dim() * f,
            nmax * cfg.q_dim() * f,
            nmax * cfg.intermediate_size * f,
            nmax * PSTRIDE * f,
            nmax * cfg.vocab_size * f,
            nmax * heads * cmax * hd * f,
            nmax * heads * cmax * 2 * f,
            nmax * heads * 4,
            nmax * 4,
            16 + nmax * 8,
            // x's pieces for batches over int8 weights (gemv_mma.cu), then the shifts.
            xq_pieces_bytes(cfg, nmax) + nmax * 4,
            scale_bytes,
            scale_bytes,
            stage_bytes,
            stage_bytes,
        ];
        let total: usize = sizes.iter().sum();
        gpu.check_free("the KV cache and activations", total as u64)?;
        let a = |what: &str, i: usize| gpu.alloc(what, sizes[i]);
        let mut ropes = Vec::new();
        for r in cfg.ropes() {
            let table = RopeTable::new(hd, cfg.rotary_dim, r.theta as f32, &r.scaling, capacity)
                .map_err(ModelError::from)?;
            let (mut cos, mut sin) = (
                Vec::with_capacity(capacity * half),
                Vec::with_capacity(capacity * half),
            );
            for p in 0..capacity {
                let (c, s) = table.cos_sin(p).map_err(ModelError::from)?;
                cos.extend_from_slice(c);
                sin.extend_from_slice(s);
            }
            ropes.push((gpu.upload("rope cos", &cos)?, gpu.upload("rope sin", &sin)?));
        }
        let b = StepBuffers {
            capacity,
            nmax,
            cmax,
            kv,
            kcache: a("keys", 0)?,
            vcache: a("values", 1)?,
            kscale: a("key scales", 17)?,
            vscale: a("value scales", 18)?,
            kstage: a("new keys", 19)?,
            vstage: a("new values", 20)?,
            ropes,
            proj: a("projection outputs", 3)?,
            h: a("hidden states", 4)?,
            xw: a("norm inputs", 5)?,
            q: a("queries", 6)?,
            attn: a("attention output", 7)?,
            act: a("MLP activations", 8)?,
            partial: a("norm partials", 9)?,
            logits: a("logits", 10)?,
            part_o: a("attention chunks", 11)?,
            part_ml: a("attention chunk sums", 12)?,
            counters: a("attention counters", 13)?,
            tokens: a("tokens", 14)?,
            state: a("state", 15)?,
            xq: a("int8 x pieces", 16)?,
        };
        gpu.fill_u32(b.counters.ptr(), 0, nmax * heads)?;
        gpu.fill_u32(b.state.ptr(), 0, sizes[15] / 4)?;
        // NaN everywhere a read of an unwritten position looks: f32 and bf16 values (two bf16
        // NaNs a word), int8's scales.
        match kv {
            KvForm::F32 => {
                gpu.fill_u32(b.kcache.ptr(), 0x7fc0_0000, cache_floats)?;
                gpu.fill_u32(b.vcache.ptr(), 0x7fc0_0000, cache_floats)?;
            }
            KvForm::Bf16 => {
                gpu.fill_u32(b.kcache.ptr(), 0x7fc0_7fc0, cache_bytes / 4)?;
                gpu.fill_u32(b.vcache.ptr(), 0x7fc0_7fc0, cache_bytes / 4)?;
            }
            KvForm::Int8 => {
                gpu.fill_u32(b.kscale.ptr(), 0x7fc0_7fc0, scale_bytes / 4)?;
                gpu.fill_u32(b.vscale.ptr(), 0x7fc0_7fc0, scale_bytes / 4)?;
            }
        }
        gpu.sync()?;
        Ok(b)
    }

    /// The launches of one step over `n` tokens at positions `len..len + n` (the device position
    /// must be `len`), with a
    /// [`Op::LayerEnd`] after each layer.
    pub fn plan(
        &self,
        m: &GpuModel,
        n: usize,
        from_argmax: bool,
        logits: Logits,
        advance: bool,
        chunks: usize,
    ) -> Vec<Op> {
        let cfg = &m.cfg;
        let (hidden, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let (heads, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps as f32;
        let state = self.state.ptr();
        let pos = state + STATE_POS;
        let argmax = state + STATE_ARGMAX;
        let layer_floats = (kvh * self.capacity * hd) as u64;
        let esize = self.kv.element_bytes() as u64;
        let staged = self.kv != KvForm::F32;
        let mut ops = Vec::with_capacity(2 + 6 * m.layers.len());
        ops.push(Op::Embed(EmbedArgs {
            w: m.embed.desc(0),
            tokens: if from_argmax { 0 } else { self.tokens.ptr() },
            argmax_in: argmax,
            argmax_reset: argmax,
            norm_w: m
                .layers
                .first()
                .map_or(m.final_norm.ptr(), |l| l.input_norm.ptr()),
            h: self.h.ptr(),
            xw: self.xw.ptr(),
            partial: self.partial.ptr(),
            err: state + STATE_ERR,
            ntok: n as i32,
            nreset: n as i32,
            hidden: hidden as i32,
            vocab: cfg.vocab_size as i32,
            scale: cfg.embedding_scale().unwrap_or(1.0),
            pad_: 0,
        }));
        // RoPE moves out of the QKV launch where the heads are normed first or rotate in part.
        let head_pass = cfg.family.qk_norm() || cfg.rotary_dim != hd;
        // Norm partials per token of the last residual producer (the embedding writes one).
        let mut nparts = 1;
        for (l, layer) in m.layers.iter().enumerate() {
            let kbase = self.kcache.ptr() + esize * layer_floats * l as u64;
            let vbase = self.vcache.ptr() + esize * layer_floats * l as u64;
            let layer_scale_bytes = (kvh * self.capacity * int8_scale_bytes(hd)) as u64;
            let (kscale, vscale) = if self.kv == KvForm::Int8 {
                (
                    self.kscale.ptr() + layer_scale_bytes * l as u64,
                    self.vscale.ptr() + layer_scale_bytes * l as u64,
                )
            } else {
                (0, 0)
            };
            // Where the QKV launch (and head_norm_rope) leave the new keys and values: the f32
            // cache itself, or the staging area that kv_store rounds into the cache.
            let (kout, vout, out_rows) = if staged {
                (self.kstage.ptr(), self.vstage.ptr(), self.nmax)
            } else {
                (kbase, vbase, self.capacity)
            };
            let (cos, sin) = &self.ropes[cfg.rope_index(l)];
            let (rope_cos, rope_sin) = if head_pass {
                (0, 0)
            } else {
                (cos.ptr(), sin.ptr())
            };
            ops.push(Op::Gemv(
                GemvArgs {
                    w: [layer.q.desc(), layer.k.desc(), layer.v.desc()],
                    x: self.xw.ptr(),
                    partial: self.partial.ptr(),
                    nparts,
                    norm_dim: hidden as i32,
                    eps,
                    rope_cos,
                    rope_sin,
                    pos,
                    out: self.q.ptr(),
                    kcache: kout,
                    vcache: vout,
                    kv_stage: staged as i32,
                    mode: GemvMode::Qkv as i32,
                    ntok: n as i32,
                    x_stride: hidden as i32,
                    out_stride: qd as i32,
                    units: ((qd + 2 * kvd) / 2) as i32,
                    u1: (qd / 2) as i32,
                    u2: ((qd + kvd) / 2) as i32,
                    head_dim: hd as i32,
                    capacity: out_rows as i32,
                    ksplit: layer.q.ksplit,
                    ..GemvArgs::default()
                },
                "qkv",
            ));
            if head_pass {
                let (qn, kn) = layer
                    .qk_norm
                    .as_ref()
                    .map_or((0, 0), |(q, k)| (q.ptr(), k.ptr()));
                ops.push(Op::HeadNormRope(HeadArgs {
                    q: self.q.ptr(),
                    kcache: kout,
                    q_norm: qn,
                    k_norm: kn,
                    rope_cos: cos.ptr(),
                    rope_sin: sin.ptr(),
                    pos,
                    ntok: n as i32,
                    heads: heads as i32,
                    kv_heads: kvh as i32,
                    head_dim: hd as i32,
                    rotary_dim: cfg.rotary_dim as i32,
                    capacity: out_rows as i32,
                    eps,
                    // Rounding into the cache here saves kv_store's launch.
                    kv_stage: staged as i32,
                    vstage: if staged { vout } else { 0 },
                    kq: if staged { kbase } else { 0 },
                    vq: if staged { vbase } else { 0 },
                    kscale,
                    vscale,
                    kv: self.kv as i32,
                    cache_capacity: self.capacity as i32,
                }));
            } else if staged {
                ops.push(Op::KvStore(KvStoreArgs {
                    kstage: self.kstage.ptr(),
                    vstage: self.vstage.ptr(),
                    kcache: kbase,
                    vcache: vbase,
                    kscale,
                    vscale,
                    pos,
                    ntok: n as i32,
                    kv_heads: kvh as i32,
                    head_dim: hd as i32,
                    capacity: self.capacity as i32,
                    nstage: self.nmax as i32,
                    kv: self.kv as i32,
                }));
            }
            ops.push(Op::Attention(
                AttnArgs {
                    q: self.q.ptr(),
                    kcache: kbase,
                    vcache: vbase,
                    out: self.attn.ptr(),
                    part_o: self.part_o.ptr(),
                    part_ml: self.part_ml.ptr(),
                    counters: self.counters.ptr(),
                    pos,
                    ntok: n as i32,
                    heads: heads as i32,
                    kv_heads: kvh as i32,
                    head_dim: hd as i32,
                    capacity: self.capacity as i32,
                    window: cfg.window(l).map_or(0, |w| w.min(i32::MAX as usize) as i32),
                    cmax: self.cmax as i32,
                    // transformers: a Python float (`head_dim ** -0.5`, or Gemma's
                    // `query_pre_attn_scalar ** -0.5`), used in f32.
                    scale: cfg.attention_scale(),
                    kv: self.kv as i32,
                    kscale,
                    vscale,
                    ..AttnArgs::default()
                },
                chunks,
            ));
            let next_norm = m
                .layers
                .get(l + 1)
                .map_or(m.final_norm.ptr(), |nl| nl.input_norm.ptr());
            let out_norms = layer.out_norms.as_ref().map(|(a, b)| (a.ptr(), b.ptr()));
            // o_proj into the residual stream, then the MLP's input norm.
            self.residual_ops(
                &mut ops,
                &m.kernels,
                (&layer.o, self.attn.ptr(), qd, "o_proj"),
                out_norms.map(|(a, _)| a),
                layer.mlp_norm.ptr(),
                &mut nparts,
                n,
                eps,
            );
            ops.push(Op::Gemv(
                GemvArgs {
                    w: [layer.gate.desc(), layer.up.desc(), Default::default()],
                    x: self.xw.ptr(),
                    partial: self.partial.ptr(),
                    nparts,
                    norm_dim: hidden as i32,
                    eps,
                    out: self.act.ptr(),
                    // The gate/up launch applies the activation in its epilogue.
                    mode: GemvMode::GateUp as i32,
                    act: match cfg.activation {
                        Activation::Silu => GateAct::Silu,
                        Activation::GeluTanh => GateAct::GeluTanh,
                    } as i32,
                    ntok: n as i32,
                    x_stride: hidden as i32,
                    out_stride: inter as i32,
                    units: inter as i32,
                    ksplit: layer.gate.ksplit,
                    ..GemvArgs::default()
                },
                "gate_up",
            ));
            self.residual_ops(
                &mut ops,
                &m.kernels,
                (&layer.down, self.act.ptr(), inter, "down"),
                out_norms.map(|(_, b)| b),
                next_norm,
                &mut nparts,
                n,
                eps,
            );
            ops.push(Op::LayerEnd(l));
        }
        if logits != Logits::None {
            let (first, rows) = if logits == Logits::All {
                (0, n)
            } else {
                (n - 1, 1)
            };
            ops.push(Op::Gemv(
                GemvArgs {
                    w: [m.lm_head.desc(), Default::default(), Default::default()],
                    x: self.xw.ptr() + (4 * first * hidden) as u64,
                    partial: self.partial.ptr() + (4 * first * PSTRIDE) as u64,
                    nparts,
                    norm_dim: hidden as i32,
                    eps,
                    out: self.logits.ptr(),
                    argmax,
                    pos_inc: if advance { pos } else { 0 },
                    mode: GemvMode::Logits as i32,
                    ntok: rows as i32,
                    x_stride: hidden as i32,
                    out_stride: cfg.vocab_size as i32,
                    units: cfg.vocab_size.div_ceil(2) as i32,
                    ksplit: m.lm_head.ksplit,
                    ..GemvArgs::default()
                },
                "lm_head",
            ));
        }
        // Every GEMV may take x's pieces room (batches over int8 weights on the tensor cores).
        let pieces = xq_pieces_bytes(cfg, self.nmax) as u64;
        for op in &mut ops {
            if let Op::Gemv(a, _) = op {
                a.xq = self.xq.ptr();
                a.xq_shift = self.xq.ptr() + pieces;
            }
        }
        ops
    }
}

impl StepBuffers {
    /// A projection `(weight, input, input width, name)` added into the residual stream `h`,
    /// with the inputs of the norm `norm_next` that reads `h` next: one residual GEMV, or
    /// (`out_norm`: the output's own norm) a plain GEMV into `proj` and `norm_residual`. Sets
    /// `nparts` to the norm partials per token it leaves.
    #[allow(clippy::too_many_arguments)]
    fn residual_ops(
        &self,
        ops: &mut Vec<Op>,
        kernels: &Kernels,
        (w, x, x_stride, name): (&GpuLinear, u64, usize, &'static str),
        out_norm: Option<u64>,
        norm_next: u64,
        nparts: &mut i32,
        n: usize,
        eps: f32,
    ) {
        let hidden = w.w.rows;
        let gemv = GemvArgs {
            w: [w.desc(), Default::default(), Default::default()],
            x,
            ntok: n as i32,
            x_stride: x_stride as i32,
            out_stride: hidden as i32,
            units: hidden.div_ceil(2) as i32,
            ksplit: w.ksplit,
            ..GemvArgs::default()
        };
        match out_norm {
            None => {
                ops.push(Op::Gemv(
                    GemvArgs {
                        norm_next,
                        out: self.h.ptr(),
                        xw_out: self.xw.ptr(),
                        partial_out: self.partial.ptr(),
                        mode: GemvMode::Resid as i32,
                        ..gemv
                    },
                    name,
                ));
                *nparts = norm_parts(kernels, ops.last());
            }
            Some(norm) => {
                ops.push(Op::Gemv(
                    GemvArgs {
                        out: self.proj.ptr(),
                        mode: GemvMode::Logits as i32,
                        ..gemv
                    },
                    name,
                ));
                ops.push(Op::NormResidual(NormResidArgs {
                    y: self.proj.ptr(),
                    w: norm,
                    norm_next,
                    h: self.h.ptr(),
                    xw: self.xw.ptr(),
                    partial: self.partial.ptr(),
                    ntok: n as i32,
                    hidden: hidden as i32,
                    eps,
                    pad_: 0,
                }));
                *nparts = 1;
            }
        }
    }
}

/// The norm partials per token the residual launch `op` writes (the next `nparts`).
fn norm_parts(kernels: &Kernels, op: Option<&Op>) -> i32 {
    match op {
        Some(Op::Gemv(a, _)) => kernels.gemv_norm_parts(a) as i32,
        _ => 1,
    }
}
