//! A generation session on the GPU: the KV cache and activations in device memory, prefill by
//! batched launches, decode by replaying a CUDA graph of one step.
//!
//! One step (see kernels/cuda/gemv.cu for the fused epilogues):
//! `embed` -> per layer [`QKV` (norm, RoPE, cache write) -> `attention` -> `o_proj` (+ residual,
//! next norm's inputs) -> `gate/up` (norm, SwiGLU) -> `down` (+ residual, next norm's inputs)]
//! -> `LM head` (final norm, logits, argmax). Prefill runs the same kernels on up to `nmax`
//! tokens per launch; a row's arithmetic does not depend on how many tokens share its launch, so
//! decode logits are bit-identical to recomputing the whole sequence.
//!
//! The decode graph reads the position and the input token from device memory (the token is the
//! previous step's argmax, or one the host wrote), and its last kernel advances the position, so
//! greedy decoding needs no host work but the replay and an 8-byte read.
//!
//! Sampling (temperature > 0) stays on the device too: [`GpuSession::set_sampler`] sets up the
//! `sample_token` kernel (kernels/cuda/sample.cu) with the generator seeded as the CPU
//! [`Sampler`](crate::Sampler) seeds it; a second graph holds the decode step plus that kernel,
//! which draws from the step's logits and writes the token into the argmax slot the next step
//! reads. The host reads 32 bytes of result per token.

use std::sync::Arc;

use cllm_cuda::{CudaError, DeviceBuffer, Event, Gpu, Graph};
use cllm_kernels::cpu::RopeTable;
use cllm_kernels::cuda::{
    AttnArgs, EmbedArgs, GemvArgs, GemvMode, GpuSampler, Kernels, SampleOutcome, SampleParams,
    Sampled, ATT_CHUNK, PSTRIDE,
};
use cllm_model::{Activation, ModelConfig};

use super::model::{GpuError, GpuModel};
use crate::error::ModelError;
use crate::sampler::{Sampler, SamplerConfig, SamplerError, Xoshiro256};

/// Tokens per prefill launch.
pub const PREFILL_CHUNK: usize = 64;

/// Device scalars: position, error flag, then (from byte 16) per-token argmax keys.
const STATE_POS: u64 = 0;
const STATE_ERR: u64 = 4;
const STATE_ARGMAX: u64 = 16;

/// Incremental inference over one sequence on the GPU.
pub struct GpuSession<'m> {
    model: &'m GpuModel,
    capacity: usize,
    len: usize,
    /// Whether the device position equals `len`.
    pos_synced: bool,
    nmax: usize,
    cmax: usize,
    kcache: DeviceBuffer,
    vcache: DeviceBuffer,
    rope_cos: DeviceBuffer,
    rope_sin: DeviceBuffer,
    h: DeviceBuffer,
    xw: DeviceBuffer,
    q: DeviceBuffer,
    attn: DeviceBuffer,
    act: DeviceBuffer,
    partial: DeviceBuffer,
    logits: DeviceBuffer,
    part_o: DeviceBuffer,
    part_ml: DeviceBuffer,
    counters: DeviceBuffer,
    tokens: DeviceBuffer,
    state: DeviceBuffer,
    xq: DeviceBuffer,
    graph: Option<Graph>,
    /// The GPU sampler (set by `set_sampler`) and the graph of a decode step plus a draw.
    sampler: Option<GpuSampler>,
    sampled_graph: Option<Graph>,
    /// The logits row (in `logits`) of the last token processed.
    last_row: usize,
    /// Profiling: events recorded after each launch, with the launch's name.
    prof: std::cell::RefCell<Option<Vec<(&'static str, Event)>>>,
}

/// Receives a decoder layer's output hidden states: `(layer, position of the first row, rows,
/// rows x hidden_size values)`.
pub type LayerHook<'a> = dyn FnMut(usize, usize, usize, &[f32]) + 'a;

/// The session's room for x's pieces (`GemvArgs::xq`): `nmax` tokens of the widest GEMV input.
fn xq_pieces_bytes(cfg: &ModelConfig, nmax: usize) -> usize {
    let widest = cfg.hidden_size.max(cfg.q_dim()).max(cfg.intermediate_size);
    Kernels::mma_pieces_bytes(nmax, widest)
}

/// One launch of a step (or a point between launches). Unboxed: a plan is a few ops per layer,
/// built once per step or graph.
#[allow(clippy::large_enum_variant)]
enum Op {
    Embed(EmbedArgs),
    /// Arguments and the name profiles show.
    Gemv(GemvArgs, &'static str),
    /// Arguments and chunk slots per (head, token).
    Attention(AttnArgs, usize),
    /// Layer `l`'s output hidden state is complete.
    LayerEnd(usize),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Embed(_) => "embed",
            Op::Gemv(_, name) => name,
            Op::Attention(..) => "attention",
            Op::LayerEnd(_) => "layer end",
        }
    }
}

/// Which logits a step computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logits {
    None,
    Last,
    All,
}

impl GpuModel {
    /// A session whose cache holds `capacity` positions.
    pub fn session(&self, capacity: usize) -> Result<GpuSession<'_>, GpuError> {
        GpuSession::new(self, capacity, PREFILL_CHUNK)
    }

    /// Logits for every position of `tokens`, in one batched pass on a fresh cache.
    pub fn forward_all(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GpuError> {
        let mut s = self.session(tokens.len())?;
        s.prefill_all(tokens)
    }

    /// [`GpuModel::forward_all`], also handing each decoder layer's output hidden states to
    /// `on_layer` (see [`LayerHook`]).
    pub fn forward_all_traced(
        &self,
        tokens: &[u32],
        on_layer: &mut LayerHook<'_>,
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let mut s = self.session(tokens.len())?;
        s.prefill_all_traced(tokens, on_layer)
    }
}

impl<'m> GpuSession<'m> {
    pub fn new(
        model: &'m GpuModel,
        capacity: usize,
        nmax: usize,
    ) -> Result<GpuSession<'m>, GpuError> {
        let cfg = &model.cfg;
        if capacity > cfg.max_position_embeddings {
            return Err(ModelError::CapacityTooLarge {
                capacity,
                max_position_embeddings: cfg.max_position_embeddings,
            }
            .into());
        }
        let gpu = model.gpu();
        let capacity = capacity.max(1);
        let nmax = nmax.clamp(1, PREFILL_CHUNK.max(nmax));
        let cmax = capacity.div_ceil(ATT_CHUNK);
        let (hidden, hd) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let cache_floats = cfg.num_hidden_layers * kvh * capacity * hd;
        let f = 4usize;
        let sizes = [
            cache_floats * f,
            cache_floats * f,
            capacity * hd / 2 * f,
            capacity * hd / 2 * f,
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
        ];
        let total: usize = sizes.iter().sum();
        gpu.check_free("the KV cache and activations", total as u64)?;
        let a = |what: &str, i: usize| gpu.alloc(what, sizes[i]);
        let rope = RopeTable::new(hd, cfg.rope_theta as f32, &cfg.rope_scaling, capacity)
            .map_err(ModelError::from)?;
        let (mut cos, mut sin) = (
            Vec::with_capacity(capacity * hd / 2),
            Vec::with_capacity(capacity * hd / 2),
        );
        for p in 0..capacity {
            let (c, s) = rope.cos_sin(p).map_err(ModelError::from)?;
            cos.extend_from_slice(c);
            sin.extend_from_slice(s);
        }
        let s = GpuSession {
            model,
            capacity,
            len: 0,
            pos_synced: false,
            nmax,
            cmax,
            kcache: a("keys", 0)?,
            vcache: a("values", 1)?,
            rope_cos: gpu.upload("rope cos", &cos)?,
            rope_sin: gpu.upload("rope sin", &sin)?,
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
            graph: None,
            sampler: None,
            sampled_graph: None,
            last_row: 0,
            prof: std::cell::RefCell::new(None),
        };
        gpu.fill_u32(s.counters.ptr(), 0, nmax * heads)?;
        gpu.fill_u32(s.state.ptr(), 0, sizes[15] / 4)?;
        // Poison the cache: a read of an unwritten position shows as NaN.
        gpu.fill_u32(s.kcache.ptr(), 0x7fc0_0000, cache_floats)?;
        gpu.fill_u32(s.vcache.ptr(), 0x7fc0_0000, cache_floats)?;
        gpu.sync()?;
        Ok(s)
    }

    pub fn model(&self) -> &'m GpuModel {
        self.model
    }

    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the sequence (the storage is kept).
    pub fn reset(&mut self) {
        self.len = 0;
        self.pos_synced = false;
    }

    fn gpu(&self) -> &Arc<Gpu> {
        self.model.gpu()
    }

    fn check_room(&self, n: usize) -> Result<(), GpuError> {
        if n == 0 {
            return Err(ModelError::EmptyInput.into());
        }
        if self.len + n > self.capacity {
            return Err(ModelError::CacheFull {
                capacity: self.capacity,
                position: self.len,
                requested: n,
            }
            .into());
        }
        Ok(())
    }

    fn set_pos(&mut self, pos: usize) -> Result<(), GpuError> {
        self.gpu()
            .htod(self.state.ptr() + STATE_POS, &[pos as i32])?;
        Ok(())
    }

    /// Profiling: records an event named `name` after the launch just made.
    fn mark(&self, name: &'static str) -> Result<(), GpuError> {
        let mut p = self.prof.borrow_mut();
        if let Some(v) = p.as_mut() {
            let e = self.gpu().event()?;
            self.gpu().record(&e)?;
            v.push((name, e));
        }
        Ok(())
    }

    /// Times one decode step launch by launch (not through the graph): microseconds per launch
    /// kind, summed over the step. The step consumes the current argmax token.
    pub fn profile_decode_step(&mut self) -> Result<Vec<(&'static str, f64)>, GpuError> {
        self.check_room(1)?;
        if !self.pos_synced {
            self.set_pos(self.len)?;
            self.pos_synced = true;
        }
        let start = self.gpu().event()?;
        self.gpu().record(&start)?;
        *self.prof.borrow_mut() = Some(Vec::new());
        let r = self.enqueue(1, true, Logits::Last, true, self.cmax);
        let marks = self.prof.borrow_mut().take().unwrap_or_default();
        r?;
        self.gpu().sync()?;
        self.len += 1;
        self.last_row = 0;
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        let mut prev = &start;
        for (name, e) in &marks {
            let us = prev.elapsed_ms(e)? as f64 * 1e3;
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(x) => x.1 += us,
                None => out.push((name, us)),
            }
            prev = e;
        }
        Ok(out)
    }

    /// Enqueues one step over `n` tokens at positions `len..len+n` (the device position must be
    /// `len`). Tokens come from the token buffer, or (decode graph) from the argmax slot.
    fn enqueue(
        &self,
        n: usize,
        from_argmax: bool,
        logits: Logits,
        advance: bool,
        chunks: usize,
    ) -> Result<(), GpuError> {
        let ops = self.plan(n, from_argmax, logits, advance, chunks);
        self.launch_ops(&ops, &mut |_| Ok(()))
    }

    /// Launches `ops` in order; `at_layer_end(l)` runs (on the host, between launches) where
    /// layer `l`'s output is complete in `h`.
    fn launch_ops(
        &self,
        ops: &[Op],
        at_layer_end: &mut dyn FnMut(usize) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        let k = &self.model.kernels;
        for op in ops {
            match op {
                Op::Embed(a) => k.embed(a)?,
                Op::Gemv(a, _) => k.gemv(a)?,
                Op::Attention(a, chunks) => k.attention(a, *chunks)?,
                Op::LayerEnd(l) => {
                    at_layer_end(*l)?;
                    continue;
                }
            }
            self.mark(op.name())?;
        }
        Ok(())
    }

    /// The launches of one step over `n` tokens (see [`GpuSession::enqueue`]), with a
    /// [`Op::LayerEnd`] after each layer.
    fn plan(
        &self,
        n: usize,
        from_argmax: bool,
        logits: Logits,
        advance: bool,
        chunks: usize,
    ) -> Vec<Op> {
        let m = self.model;
        let cfg = &m.cfg;
        let (hidden, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let (heads, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps as f32;
        let state = self.state.ptr();
        let pos = state + STATE_POS;
        let argmax = state + STATE_ARGMAX;
        let layer_floats = (kvh * self.capacity * hd) as u64;
        let resid_units = hidden.div_ceil(2);

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
        }));
        // Norm partials per token of the last residual producer (the embedding writes one).
        let mut nparts = 1;
        for (l, layer) in m.layers.iter().enumerate() {
            let kbase = self.kcache.ptr() + 4 * layer_floats * l as u64;
            let vbase = self.vcache.ptr() + 4 * layer_floats * l as u64;
            ops.push(Op::Gemv(
                GemvArgs {
                    w: [layer.q.desc(), layer.k.desc(), layer.v.desc()],
                    x: self.xw.ptr(),
                    partial: self.partial.ptr(),
                    nparts,
                    norm_dim: hidden as i32,
                    eps,
                    rope_cos: self.rope_cos.ptr(),
                    rope_sin: self.rope_sin.ptr(),
                    pos,
                    out: self.q.ptr(),
                    kcache: kbase,
                    vcache: vbase,
                    mode: GemvMode::Qkv as i32,
                    ntok: n as i32,
                    x_stride: hidden as i32,
                    out_stride: qd as i32,
                    units: ((qd + 2 * kvd) / 2) as i32,
                    u1: (qd / 2) as i32,
                    u2: ((qd + kvd) / 2) as i32,
                    head_dim: hd as i32,
                    capacity: self.capacity as i32,
                    ksplit: layer.q.ksplit,
                    ..GemvArgs::default()
                },
                "qkv",
            ));
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
                    // transformers: `scaling = head_dim ** -0.5` (a Python float), used in f32.
                    scale: (hd as f64).powf(-0.5) as f32,
                    ..AttnArgs::default()
                },
                chunks,
            ));
            ops.push(Op::Gemv(
                GemvArgs {
                    w: [layer.o.desc(), Default::default(), Default::default()],
                    x: self.attn.ptr(),
                    norm_next: layer.post_norm.ptr(),
                    out: self.h.ptr(),
                    xw_out: self.xw.ptr(),
                    partial_out: self.partial.ptr(),
                    mode: GemvMode::Resid as i32,
                    ntok: n as i32,
                    x_stride: qd as i32,
                    out_stride: hidden as i32,
                    units: resid_units as i32,
                    ksplit: layer.o.ksplit,
                    ..GemvArgs::default()
                },
                "o_proj",
            ));
            nparts = self.norm_parts(ops.last());
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
                    mode: match cfg.activation {
                        Activation::Silu => GemvMode::GateUp,
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
            let next_norm = m
                .layers
                .get(l + 1)
                .map_or(m.final_norm.ptr(), |nl| nl.input_norm.ptr());
            ops.push(Op::Gemv(
                GemvArgs {
                    w: [layer.down.desc(), Default::default(), Default::default()],
                    x: self.act.ptr(),
                    norm_next: next_norm,
                    out: self.h.ptr(),
                    xw_out: self.xw.ptr(),
                    partial_out: self.partial.ptr(),
                    mode: GemvMode::Resid as i32,
                    ntok: n as i32,
                    x_stride: inter as i32,
                    out_stride: hidden as i32,
                    units: resid_units as i32,
                    ksplit: layer.down.ksplit,
                    ..GemvArgs::default()
                },
                "down",
            ));
            nparts = self.norm_parts(ops.last());
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

    /// The norm partials per token the residual launch `op` writes (the next `nparts`).
    fn norm_parts(&self, op: Option<&Op>) -> i32 {
        match op {
            Some(Op::Gemv(a, _)) => self.model.kernels.gemv_norm_parts(a) as i32,
            _ => 1,
        }
    }

    /// Runs `tokens` in launches of at most `nmax` tokens; returns the last token's logits, or
    /// every token's (nothing unless `read`).
    fn run(&mut self, tokens: &[u32], all: bool, read: bool) -> Result<Vec<f32>, GpuError> {
        self.run_traced(tokens, all, read, None)
    }

    /// [`GpuSession::run`], handing each layer's output hidden states to `on_layer` as
    /// `(layer, first position, rows, rows x hidden values)` (a synchronising read per layer and
    /// launch).
    fn run_traced(
        &mut self,
        tokens: &[u32],
        all: bool,
        read: bool,
        mut on_layer: Option<&mut LayerHook<'_>>,
    ) -> Result<Vec<f32>, GpuError> {
        self.check_room(tokens.len())?;
        let vocab = self.model.cfg.vocab_size;
        for &t in tokens {
            if t as usize >= vocab {
                return Err(ModelError::TokenOutOfRange {
                    token: t,
                    vocab_size: vocab,
                }
                .into());
            }
        }
        let mut out = Vec::with_capacity(match (read, all) {
            (false, _) => 0,
            (true, true) => tokens.len() * vocab,
            (true, false) => vocab,
        });
        let chunks: Vec<&[u32]> = tokens.chunks(self.nmax).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let last = ci + 1 == chunks.len();
            let n = chunk.len();
            let ids: Vec<i32> = chunk.iter().map(|&t| t as i32).collect();
            self.gpu().htod(self.tokens.ptr(), &ids)?;
            self.set_pos(self.len)?;
            let mode = if all {
                Logits::All
            } else if last {
                Logits::Last
            } else {
                Logits::None
            };
            let attn_chunks = (self.len + n).div_ceil(ATT_CHUNK);
            let ops = self.plan(n, false, mode, false, attn_chunks);
            let hidden = self.model.cfg.hidden_size;
            let start = self.len;
            let mut rows = Vec::new();
            self.launch_ops(&ops, &mut |l| {
                if let Some(hook) = on_layer.as_mut() {
                    rows.resize(n * hidden, 0f32);
                    self.gpu().dtoh(&mut rows, self.h.ptr())?;
                    hook(l, start, n, &rows);
                }
                Ok(())
            })?;
            self.gpu().sync()?;
            self.len += n;
            self.pos_synced = false;
            if mode != Logits::None {
                let rows = if all { n } else { 1 };
                self.last_row = rows - 1;
                if read {
                    let mut l = vec![0f32; rows * vocab];
                    self.gpu().dtoh(&mut l, self.logits.ptr())?;
                    out.extend_from_slice(&l);
                }
            }
        }
        Ok(out)
    }

    /// Processes `tokens` in batched launches; returns the logits of the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GpuError> {
        self.run(tokens, false, true)
    }

    /// Processes `tokens` in batched launches; returns the logits of every one of them.
    pub fn prefill_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GpuError> {
        let vocab = self.model.cfg.vocab_size;
        let flat = self.run(tokens, true, true)?;
        Ok(flat.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// [`GpuSession::prefill_all`], also handing each decoder layer's output hidden states to
    /// `on_layer` (see [`LayerHook`]).
    pub fn prefill_all_traced(
        &mut self,
        tokens: &[u32],
        on_layer: &mut LayerHook<'_>,
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let vocab = self.model.cfg.vocab_size;
        let flat = self.run_traced(tokens, true, true, Some(on_layer))?;
        Ok(flat.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Replays the decode graph (capturing it on first use): one token from the argmax slot at
    /// position `len`.
    fn step(&mut self) -> Result<(), GpuError> {
        self.replay(false)
    }

    /// Replays one decode step, and with `draw` the GPU sampler's draw after it, each kind as its
    /// own graph captured on first use.
    fn replay(&mut self, draw: bool) -> Result<(), GpuError> {
        self.check_room(1)?;
        if !self.pos_synced {
            self.set_pos(self.len)?;
            self.pos_synced = true;
        }
        let captured = if draw {
            self.sampled_graph.is_some()
        } else {
            self.graph.is_some()
        };
        if !captured {
            let gpu = self.gpu().clone();
            let vocab = self.model.cfg.vocab_size;
            let sampler = if draw {
                Some(self.gpu_sampler()?)
            } else {
                None
            };
            gpu.begin_capture()?;
            let r = self
                .enqueue(1, true, Logits::Last, true, self.cmax)
                .and_then(|()| match sampler {
                    Some(smp) => {
                        let out = self.state.ptr() + STATE_ARGMAX;
                        Ok(smp.enqueue(self.logits.ptr(), vocab, out)?)
                    }
                    None => Ok(()),
                });
            let g = gpu.end_capture();
            r?;
            let g = Some(g?);
            if draw {
                self.sampled_graph = g;
            } else {
                self.graph = g;
            }
        }
        let graph = if draw {
            &mut self.sampled_graph
        } else {
            &mut self.graph
        };
        graph.as_mut().expect("captured").launch()?;
        self.len += 1;
        self.last_row = 0;
        Ok(())
    }

    /// The argmax of the last logits computed (the lowest id among equal maxima).
    pub fn argmax(&self) -> Result<u32, GpuError> {
        let mut k = [0u64];
        self.gpu().dtoh(&mut k, self.state.ptr() + STATE_ARGMAX)?;
        Ok(!(k[0] as u32))
    }

    /// The last token's logits of the last step.
    pub fn last_logits(&self) -> Result<Vec<f32>, GpuError> {
        let mut l = vec![0f32; self.model.cfg.vocab_size];
        self.gpu().dtoh(&mut l, self.logits.ptr())?;
        Ok(l)
    }

    /// Sets the token the next decode step consumes.
    fn set_input(&mut self, token: u32) -> Result<(), GpuError> {
        let vocab = self.model.cfg.vocab_size;
        if token as usize >= vocab {
            return Err(ModelError::TokenOutOfRange {
                token,
                vocab_size: vocab,
            }
            .into());
        }
        let key = (!token) as u64;
        self.gpu().htod(self.state.ptr() + STATE_ARGMAX, &[key])?;
        Ok(())
    }

    /// Processes one token; returns its logits.
    pub fn decode(&mut self, token: u32) -> Result<Vec<f32>, GpuError> {
        self.set_input(token)?;
        self.step()?;
        self.last_logits()
    }

    /// Processes `token` and returns the most likely next token, without reading logits.
    pub fn decode_greedy(&mut self, token: u32) -> Result<u32, GpuError> {
        self.set_input(token)?;
        self.step()?;
        self.argmax()
    }

    /// Processes the token the previous step chose (its argmax, still on the device) and
    /// returns the next one: greedy decoding with no host-side token at all.
    pub fn decode_chained(&mut self) -> Result<u32, GpuError> {
        self.step()?;
        self.argmax()
    }

    /// Sets up sampling on the GPU with `cfg` (temperature > 0): its top-k and top-p, and the
    /// generator seeded from `cfg.seed` exactly as the CPU [`Sampler`] seeds it, so the same
    /// seed gives the same stream of draws. Replaces an earlier sampler; with the same
    /// parameters it only restarts the generator.
    pub fn set_sampler(&mut self, cfg: &SamplerConfig) -> Result<(), GpuError> {
        // The CPU sampler's own checks (finite temperature >= 0, top_p in (0, 1]).
        Sampler::new(cfg.clone())?;
        if cfg.is_greedy() {
            return Err(CudaError::Unsupported(
                "GPU sampling needs temperature > 0 (greedy decoding uses decode_chained)".into(),
            )
            .into());
        }
        let params = SampleParams {
            temperature: cfg.temperature,
            top_k: cfg.top_k,
            top_p: cfg.top_p,
        };
        let rng = Xoshiro256::seed_from_u64(cfg.seed).state();
        match &self.sampler {
            Some(s) if s.params() == params => s.reseed(rng)?,
            _ => {
                // The sampled graph names the old sampler's state buffer.
                self.sampled_graph = None;
                let vocab = self.model.cfg.vocab_size;
                self.sampler = Some(GpuSampler::new(&self.model.kernels, params, rng, vocab)?);
            }
        }
        Ok(())
    }

    fn gpu_sampler(&self) -> Result<&GpuSampler, GpuError> {
        self.sampler.as_ref().ok_or_else(|| {
            CudaError::Unsupported("no GPU sampler: call set_sampler first".into()).into()
        })
    }

    /// Waits for the last draw and reads it.
    fn read_sampled(&self) -> Result<u32, GpuError> {
        Ok(self.last_sample()?.token)
    }

    /// Details of the last draw (its kept-set size and rank, the number of draws).
    pub fn last_sample(&self) -> Result<SampleOutcome, GpuError> {
        match self.gpu_sampler()?.read()? {
            Sampled::Token(o) => Ok(o),
            Sampled::NanLogit(i) => Err(SamplerError::NanLogit(i).into()),
        }
    }

    /// Draws the next token on the GPU from the last token's logits (after `prefill`,
    /// `prefill_all`, `decode` or a decode step) and makes it the input of the next
    /// `decode_sampled` or `decode_chained` step. Advances the generator once.
    pub fn sample_last(&mut self) -> Result<u32, GpuError> {
        if self.len == 0 {
            return Err(ModelError::EmptyInput.into());
        }
        let vocab = self.model.cfg.vocab_size;
        let logits = self.logits.ptr() + (4 * self.last_row * vocab) as u64;
        let out = self.state.ptr() + STATE_ARGMAX;
        self.gpu_sampler()?.enqueue(logits, vocab, out)?;
        self.read_sampled()
    }

    /// Processes `tokens` and draws the next token on the GPU, without reading logits back.
    pub fn prefill_sampled(&mut self, tokens: &[u32]) -> Result<u32, GpuError> {
        self.run(tokens, false, false)?;
        self.sample_last()
    }

    /// Processes the token the previous step chose (drawn or argmax, still on the device) and
    /// draws the next one: one graph replay (the decode step and the draw) and a 32-byte read.
    pub fn decode_sampled(&mut self) -> Result<u32, GpuError> {
        self.replay(true)?;
        self.read_sampled()
    }
}
