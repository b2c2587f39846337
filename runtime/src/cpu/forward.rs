//! The forward pass on the CPU: one code path for any number of new tokens at the end of a KV
//! cache, the decoder layer as `cllm-model` describes it (biases, fused projections, q/k norms,
//! the norms around attention and MLP, each layer's window and RoPE, the activation).
//!
//! Prefill (many tokens) and decode (one token) both run `CpuModel::forward_tokens`: the
//! projections are batched matrix products whose rows have the bits of single-vector products,
//! norms and RoPE are per row, and the query at position `t` attends over cached keys `0..=t`
//! (the new tokens' keys are written to the cache first) with the same kernel. So the logits of
//! a position do not depend on how the sequence was split into prefill and decode calls, nor on
//! the number of rayon threads.

use std::cell::RefCell;
use std::sync::Mutex;

use cllm_kernels::cpu::{
    attend, embedding_row, geglu_tanh, matmul, matmul_many, pool, swiglu, KernelError,
};
use cllm_model::{Activation, Module, Point};

use super::kv_cache::KvCache;
use super::model::{CpuModel, Linear, Projections};
use crate::error::ModelError;
use crate::kv::{hadamard_scaled, int8_block, KvPrecision};
use crate::trace::{HiddenStates, TracePoint, Tracer};

thread_local! {
    /// Each thread's attention scratch (scores, and a cache span's keys and values as f32),
    /// kept from one head and layer to the next.
    static ATTENTION_SCRATCH: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Logits {
    /// Only the last new token's (`vocab` values).
    Last,
    /// Every new token's (`n x vocab` values).
    All,
}

struct Trace<'a, 't> {
    tracer: Option<&'a mut Tracer<'t>>,
    start: usize,
    rows: usize,
}

impl Trace<'_, '_> {
    fn emit(&mut self, point: Point, layer: Option<usize>, data: &[f32]) {
        if let Some(t) = self.tracer.as_mut() {
            let name = point.name(layer.unwrap_or(0));
            t(&TracePoint {
                point,
                layer,
                name: &name,
                start_position: self.start,
                rows: self.rows,
                data,
            });
        }
    }
}

/// The MLP's activation of `gate` and `up` into `out` (the down projection's input).
pub(crate) fn activate(
    activation: Activation,
    gate: &[f32],
    up: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    match activation {
        Activation::Silu => swiglu(gate, up, out),
        Activation::GeluTanh => geglu_tanh(gate, up, out),
    }
}

/// Splits each row of a fused projection's output (`n` rows of the parts side by side) into
/// the parts' own `n`-row buffers.
pub(crate) fn split_rows(fused: &[f32], n: usize, parts: &mut [&mut Vec<f32>], widths: &[usize]) {
    let row = widths.iter().sum::<usize>();
    for (p, &w) in parts.iter_mut().zip(widths) {
        p.clear();
        p.reserve(n * w);
    }
    for r in fused.chunks_exact(row).take(n) {
        let mut at = 0;
        for (p, &w) in parts.iter_mut().zip(widths) {
            p.extend_from_slice(&r[at..at + w]);
            at += w;
        }
    }
}

impl Linear {
    /// `out = x W^T (+ b)` for `n` rows of `x`.
    fn forward(&self, x: &[f32], n: usize, out: &mut Vec<f32>) -> Result<(), ModelError> {
        Linear::forward_many(&[self], x, n, [out])
    }

    /// Several projections of the same input in one parallel pass (bits as `forward` each).
    fn forward_many<const K: usize>(
        linears: &[&Linear; K],
        x: &[f32],
        n: usize,
        outs: [&mut Vec<f32>; K],
    ) -> Result<(), ModelError> {
        let mut jobs: Vec<(&cllm_kernels::Weight, &mut [f32])> = Vec::with_capacity(K);
        for (l, out) in linears.iter().zip(outs) {
            out.clear();
            out.resize(n * l.weight.rows, 0.0);
            jobs.push((&l.weight, &mut out[..]));
        }
        matmul_many(x, n, &mut jobs)?;
        for (l, (_, out)) in linears.iter().zip(jobs) {
            if let Some(b) = &l.bias {
                for row in out.chunks_exact_mut(b.len()) {
                    for (o, &bv) in row.iter_mut().zip(b) {
                        *o += bv;
                    }
                }
            }
        }
        Ok(())
    }
}

impl CpuModel {
    /// Runs `tokens` at positions `cache.len()..`, appending their keys and values to `cache`.
    ///
    /// The pass runs on the caller's thread; its parallel sections go to the kernels' spinning
    /// pool ([`pool`]), so no rayon worker is woken (or left yielding the core) per section.
    /// Which thread runs what changes nothing in the result.
    pub(crate) fn forward_tokens(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
        tracer: Option<&mut Tracer<'_>>,
    ) -> Result<Vec<f32>, ModelError> {
        let cfg = &self.cfg;
        let n = tokens.len();
        if n == 0 {
            return Err(ModelError::EmptyInput);
        }
        cache.check_room(n)?;
        let start = cache.len();
        let mut trace = Trace {
            tracer,
            start,
            rows: n,
        };
        let (hidden, hd) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let group = heads / kv_heads;
        // transformers: `scaling` is a Python float (`head_dim ** -0.5`, or Gemma's
        // `query_pre_attn_scalar ** -0.5`), applied to f32 scores.
        let scale = cfg.attention_scale();

        let mut h = vec![0f32; n * hidden];
        for (&tok, row) in tokens.iter().zip(h.chunks_exact_mut(hidden)) {
            if tok as usize >= cfg.vocab_size {
                return Err(ModelError::TokenOutOfRange {
                    token: tok,
                    vocab_size: cfg.vocab_size,
                });
            }
            embedding_row(&self.embed_tokens, tok, row)?;
            if let Some(scale) = cfg.embedding_scale() {
                for v in row.iter_mut() {
                    *v *= scale;
                }
            }
        }
        trace.emit(Point::Embeddings, None, &h);

        let mut x = vec![0f32; n * hidden];
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let mut attn = vec![0f32; n * cfg.q_dim()];
        let (mut o, mut gate, mut up) = (Vec::new(), Vec::new(), Vec::new());
        let mut fused = Vec::new();
        let mut act = vec![0f32; n * cfg.intermediate_size];
        let family = cfg.family;
        for (l, layer) in self.layers.iter().enumerate() {
            let ly = Some(l);
            layer.input_layernorm.apply(&h, &mut x)?;
            trace.emit(Point::Norm(Module::InputNorm), ly, &x);
            match &layer.qkv {
                Projections::Separate([qp, kp, vp]) => {
                    Linear::forward_many(&[qp, kp, vp], &x, n, [&mut q, &mut k, &mut v])?;
                    for (proj, out) in [qp, kp, vp].iter().zip([&q, &k, &v]) {
                        trace.emit(Point::Projection(proj.module), ly, out);
                    }
                }
                Projections::Fused(qkv) => {
                    qkv.forward(&x, n, &mut fused)?;
                    trace.emit(Point::Projection(qkv.module), ly, &fused);
                    let widths = [cfg.q_dim(), cfg.kv_dim(), cfg.kv_dim()];
                    split_rows(&fused, n, &mut [&mut q, &mut k, &mut v], &widths);
                }
            }
            if let Some((qn, kn)) = &layer.qk_norm {
                qn.apply_in_place(&mut q)?;
                kn.apply_in_place(&mut k)?;
                trace.emit(Point::Norm(Module::QNorm), ly, &q);
                trace.emit(Point::Norm(Module::KNorm), ly, &k);
            }

            let rope = cache.rope(l);
            for i in 0..n {
                rope.apply(&mut q[i * cfg.q_dim()..(i + 1) * cfg.q_dim()], start + i)?;
                rope.apply(&mut k[i * cfg.kv_dim()..(i + 1) * cfg.kv_dim()], start + i)?;
            }
            cache.write(l, start, &k, &v);
            let rotated = cache.precision() == KvPrecision::Int8;
            if rotated {
                hadamard_scaled(&mut q, int8_block(hd));
            }

            let cache_ref = &*cache;
            let q_ref = &q;
            let window = cfg.window(l);
            let failed = Mutex::new(None);
            pool::for_each(attn.chunks_mut(hd).enumerate().collect(), |(idx, out)| {
                let (i, head) = (idx / heads, idx % heads);
                let pos = start + i;
                let from = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let done = ATTENTION_SCRATCH.with_borrow_mut(|(scores, kbuf, vbuf)| {
                    let (keys, values) =
                        cache_ref.span_into(l, head / group, from, pos + 1, kbuf, vbuf);
                    let qh = &q_ref[(i * heads + head) * hd..(i * heads + head + 1) * hd];
                    attend(qh, keys, values, scale, scores, out)
                });
                if let Err(e) = done {
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
            });
            if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
                return Err(e.into());
            }
            if rotated {
                hadamard_scaled(&mut attn, int8_block(hd));
            }
            trace.emit(Point::Attention, ly, &attn);
            layer.o_proj.forward(&attn, n, &mut o)?;
            trace.emit(Point::Projection(Module::OProj), ly, &o);
            if let Some(norm) = &layer.attn_out_norm {
                norm.apply_in_place(&mut o)?;
                trace.emit(Point::Norm(Module::PostAttnNorm), ly, &o);
            }
            for (hv, &ov) in h.iter_mut().zip(&o) {
                *hv += ov;
            }

            layer.mlp_norm.apply(&h, &mut x)?;
            trace.emit(Point::Norm(family.mlp_norm()), ly, &x);
            match &layer.gate_up {
                Projections::Separate([gp, up_p]) => {
                    Linear::forward_many(&[gp, up_p], &x, n, [&mut gate, &mut up])?;
                    trace.emit(Point::Projection(Module::GateProj), ly, &gate);
                    trace.emit(Point::Projection(Module::UpProj), ly, &up);
                }
                Projections::Fused(gu) => {
                    gu.forward(&x, n, &mut fused)?;
                    trace.emit(Point::Projection(gu.module), ly, &fused);
                    let inter = cfg.intermediate_size;
                    split_rows(&fused, n, &mut [&mut gate, &mut up], &[inter, inter]);
                }
            }
            activate(cfg.activation, &gate, &up, &mut act)?;
            layer.down_proj.forward(&act, n, &mut o)?;
            trace.emit(Point::Projection(Module::DownProj), ly, &o);
            if let Some(norm) = &layer.mlp_out_norm {
                norm.apply_in_place(&mut o)?;
                trace.emit(Point::Norm(Module::PostFfnNorm), ly, &o);
            }
            for (hv, &ov) in h.iter_mut().zip(&o) {
                *hv += ov;
            }
            trace.emit(Point::LayerOutput, ly, &h);
        }

        // Only the rows whose logits are wanted go through the final norm and LM head.
        let first = match logits {
            Logits::All => 0,
            Logits::Last => n - 1,
        };
        let rows = n - first;
        let mut normed = vec![0f32; rows * hidden];
        self.norm.apply(&h[first * hidden..], &mut normed)?;
        let lm_head = self.lm_head();
        let mut out = vec![0f32; rows * lm_head.rows];
        matmul(lm_head, &normed, rows, &mut out)?;
        trace.start = start + first;
        trace.rows = rows;
        trace.emit(Point::Norm(Module::FinalNorm), None, &normed);
        trace.emit(Point::Logits, None, &out);
        cache.advance(n);
        Ok(out)
    }

    /// Logits for every position of `tokens`, computed in one pass on a fresh cache.
    pub fn forward_all(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.forward_all_traced(tokens, &mut |_| {})
    }

    /// [`CpuModel::forward_all`], calling `tracer` with every intermediate tensor (see [`TracePoint`]).
    pub fn forward_all_traced(
        &self,
        tokens: &[u32],
        tracer: &mut Tracer<'_>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut cache = KvCache::with_precision(&self.cfg, tokens.len(), self.kv)?;
        let flat = self.forward_tokens(&mut cache, tokens, Logits::All, Some(tracer))?;
        Ok(flat
            .chunks_exact(self.lm_head().rows)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Logits for every position plus the hidden state after each decoder layer:
    /// `hidden[layer][position]` (`hidden_size` values). These are the residual stream before
    /// the final norm, i.e. transformers' `hidden_states[layer + 1]` for every layer but the
    /// last (transformers applies `model.norm` to its last entry).
    pub fn forward_all_hidden(
        &self,
        tokens: &[u32],
    ) -> Result<(Vec<Vec<f32>>, HiddenStates), ModelError> {
        let layers = self.cfg.num_hidden_layers;
        let mut hidden: HiddenStates = vec![Vec::new(); layers];
        let logits = self.forward_all_traced(tokens, &mut |p: &TracePoint<'_>| {
            if let (Point::LayerOutput, Some(l)) = (p.point, p.layer) {
                hidden[l] = (0..p.rows).map(|i| p.row(i).to_vec()).collect();
            }
        })?;
        Ok((logits, hidden))
    }
}
