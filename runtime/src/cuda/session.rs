//! A generation session on the GPU: the KV cache and activations in device memory, prefill by
//! batched launches, decode by replaying a CUDA graph of one step (the step's launches are
//! [`plan`](super::plan)'s). Prefill runs the same kernels on up to `nmax` tokens per launch; a
//! row's arithmetic does not depend on how many tokens share its launch, so decode logits are
//! bit-identical to recomputing the whole sequence.
//!
//! The decode graph reads the position and the input token from device memory (the token is the
//! previous step's argmax, or one the host wrote), and its last kernel advances the position, so
//! greedy decoding needs no host work but the replay and an 8-byte read.
//!
//! Sampling (temperature > 0) stays on the device too: [`GpuSession::set_sampler`] sets up the
//! `sample_token` kernel (kernels/src/cuda/sample.cu) with the generator seeded as the CPU
//! [`Sampler`](crate::Sampler) seeds it; a second graph holds the decode step plus that kernel,
//! which draws from the step's logits and writes the token into the argmax slot the next step
//! reads. The host reads 32 bytes of result per token.

use std::sync::Arc;

use cllm_cuda::{CudaError, Event, Gpu, Graph};
use cllm_kernels::cuda::{GpuSampler, SampleOutcome, SampleParams, Sampled, ATT_CHUNK};

use super::model::{GpuError, GpuModel};
use super::plan::{Logits, Op, StepBuffers, STATE_ARGMAX, STATE_POS};
use crate::error::ModelError;
use crate::sampler::{Sampler, SamplerConfig, SamplerError, Xoshiro256};

/// Tokens per prefill launch.
pub const PREFILL_CHUNK: usize = 64;

/// Incremental inference over one sequence on the GPU.
pub struct GpuSession<'m> {
    model: &'m GpuModel,
    buf: StepBuffers,
    len: usize,
    /// Whether the device position equals `len`.
    pos_synced: bool,
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
        let capacity = capacity.max(1);
        let nmax = nmax.clamp(1, PREFILL_CHUNK.max(nmax));
        Ok(GpuSession {
            model,
            buf: StepBuffers::new(model, capacity, nmax)?,
            len: 0,
            pos_synced: false,
            graph: None,
            sampler: None,
            sampled_graph: None,
            last_row: 0,
            prof: std::cell::RefCell::new(None),
        })
    }

    pub fn model(&self) -> &'m GpuModel {
        self.model
    }

    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.buf.capacity
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
        if self.len + n > self.buf.capacity {
            return Err(ModelError::CacheFull {
                capacity: self.buf.capacity,
                position: self.len,
                requested: n,
            }
            .into());
        }
        Ok(())
    }

    fn set_pos(&mut self, pos: usize) -> Result<(), GpuError> {
        self.gpu()
            .htod(self.buf.state.ptr() + STATE_POS, &[pos as i32])?;
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
        let r = self.enqueue(1, true, Logits::Last, true, self.buf.cmax);
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
        let ops = self
            .buf
            .plan(self.model, n, from_argmax, logits, advance, chunks);
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
                Op::HeadNormRope(a) => k.head_norm_rope(a)?,
                Op::KvStore(a) => k.kv_store(a)?,
                Op::NormResidual(a) => k.norm_residual(a)?,
                Op::LayerEnd(l) => {
                    at_layer_end(*l)?;
                    continue;
                }
            }
            self.mark(op.name())?;
        }
        Ok(())
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
        let chunks: Vec<&[u32]> = tokens.chunks(self.buf.nmax).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let last = ci + 1 == chunks.len();
            let n = chunk.len();
            let ids: Vec<i32> = chunk.iter().map(|&t| t as i32).collect();
            self.gpu().htod(self.buf.tokens.ptr(), &ids)?;
            self.set_pos(self.len)?;
            let mode = if all {
                Logits::All
            } else if last {
                Logits::Last
            } else {
                Logits::None
            };
            let attn_chunks = (self.len + n).div_ceil(ATT_CHUNK);
            let ops = self
                .buf
                .plan(self.model, n, false, mode, false, attn_chunks);
            let hidden = self.model.cfg.hidden_size;
            let start = self.len;
            let mut rows = Vec::new();
            self.launch_ops(&ops, &mut |l| {
                if let Some(hook) = on_layer.as_mut() {
                    rows.resize(n * hidden, 0f32);
                    self.gpu().dtoh(&mut rows, self.buf.h.ptr())?;
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
                    self.gpu().dtoh(&mut l, self.buf.logits.ptr())?;
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
                .enqueue(1, true, Logits::Last, true, self.buf.cmax)
                .and_then(|()| match sampler {
                    Some(smp) => {
                        let out = self.buf.state.ptr() + STATE_ARGMAX;
                        Ok(smp.enqueue(self.buf.logits.ptr(), vocab, out)?)
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
        self.gpu()
            .dtoh(&mut k, self.buf.state.ptr() + STATE_ARGMAX)?;
        Ok(!(k[0] as u32))
    }

    /// The last token's logits of the last step.
    pub fn last_logits(&self) -> Result<Vec<f32>, GpuError> {
        let mut l = vec![0f32; self.model.cfg.vocab_size];
        self.gpu().dtoh(&mut l, self.buf.logits.ptr())?;
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
        self.gpu()
            .htod(self.buf.state.ptr() + STATE_ARGMAX, &[key])?;
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
        let logits = self.buf.logits.ptr() + (4 * self.last_row * vocab) as u64;
        let out = self.buf.state.ptr() + STATE_ARGMAX;
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
