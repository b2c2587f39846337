//! Sampling on the GPU: the `sample_token` kernel (`kernels/src/cuda/sample.cu`, whose header says
//! step by step what it computes and what is identical to the CPU `Sampler`) and its device
//! state.
//!
//! A [`GpuSampler`] owns the state: xoshiro256** (seeded on the host, as the CPU sampler seeds
//! it) and the last result. Its launch ([`GpuSampler::enqueue`]) reads one token's logits and
//! writes the chosen token into an argmax slot (the key format `embed` decodes), so it can be
//! captured into a CUDA graph after a decode step; [`GpuSampler::read`] then waits and reads the
//! four result words. [`GpuSampler::sample`] does both on any device logits buffer (tests).

use std::sync::Arc;

use cllm_cuda::{CudaError, DeviceBuffer, Grid, KernelArgs};

use super::Kernels;

/// Threads of the kernel's one block (`SAMPLE_THREADS`).
pub const SAMPLE_THREADS: u32 = 1024;
/// Candidates the kernel sorts (`SAMPLE_CAP`, one per thread): the largest tokens of the top-k
/// set. Past them, the top-p cut and the draw use radix selects over fixed-point mass, in the
/// same order; a kept set larger than this is slower, not different.
pub const SAMPLE_CAP: usize = 1024;
/// u64 words of a sampler's device state (`SST_*` in sample.cu): `[0, 4)` the generator, then
/// the chosen key, the status, `(kept << 32) | rank`, and the number of draws.
pub const SAMPLE_STATE_WORDS: usize = 8;
const SST_KEY: usize = 4;

/// `struct SampleArgs` of sample.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleArgs {
    pub logits: u64,
    pub state: u64,
    pub out: u64,
    pub scratch: u64,
    pub vocab: i32,
    pub top_k: i32,
    pub temperature: f32,
    pub top_p: f32,
}

// SAFETY: #[repr(C)] twin of sample.cu's `struct SampleArgs` (see the layout test).
unsafe impl KernelArgs for SampleArgs {}

const _: () = assert!(std::mem::size_of::<SampleArgs>() == 48);

/// What to sample with (the CPU `SamplerConfig` without the seed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// Finite and > 0 (zero is greedy decoding, which needs no sampler).
    pub temperature: f32,
    /// 0 (or at least the vocabulary): no top-k.
    pub top_k: usize,
    /// In (0, 1]; 1: no top-p.
    pub top_p: f32,
}

impl SampleParams {
    fn check(&self) -> Result<(), CudaError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(CudaError::Unsupported(format!(
                "GPU sampling needs a finite temperature > 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(CudaError::Unsupported(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// One token drawn on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleOutcome {
    pub token: u32,
    /// What was written to the argmax slot: `argmax_key(logit, token)` (common.cuh).
    pub key: u64,
    /// Tokens kept by top-k and top-p (the length of the CPU's `Sampler::candidates`).
    pub kept: u32,
    /// The token's position among them (descending probability, ties by lower id).
    pub rank: u32,
    /// Tokens drawn since seeding.
    pub draws: u64,
}

/// What one launch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampled {
    Token(SampleOutcome),
    /// The logit of this token (the lowest such id) is NaN: nothing was drawn, the argmax slot
    /// was left alone and the generator did not advance.
    NanLogit(usize),
}

/// The sampling kernel with its device state (see the module documentation).
pub struct GpuSampler {
    kernels: Arc<Kernels>,
    state: DeviceBuffer,
    /// `[4][max_vocab]` words: the kernel's key lists and f64 masses.
    scratch: DeviceBuffer,
    max_vocab: usize,
    params: SampleParams,
}

impl std::fmt::Debug for GpuSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSampler")
            .field("params", &self.params)
            .field("state", &self.state)
            .finish()
    }
}

impl GpuSampler {
    /// A sampler for vocabularies of up to `max_vocab` tokens, with generator state `rng`
    /// (xoshiro256**'s four words, as the CPU's `Xoshiro256::seed_from_u64` fills them).
    pub fn new(
        kernels: &Arc<Kernels>,
        params: SampleParams,
        rng: [u64; 4],
        max_vocab: usize,
    ) -> Result<GpuSampler, CudaError> {
        params.check()?;
        if max_vocab == 0 || max_vocab > i32::MAX as usize {
            return Err(CudaError::Unsupported(format!(
                "GPU sampling: vocabulary of {max_vocab} tokens"
            )));
        }
        let gpu = kernels.gpu();
        let state = gpu.alloc("the sampler state", SAMPLE_STATE_WORDS * 8)?;
        let scratch = gpu.alloc("the sampler scratch", 4 * 8 * max_vocab)?;
        let s = GpuSampler {
            kernels: kernels.clone(),
            state,
            scratch,
            max_vocab,
            params,
        };
        s.reseed(rng)?;
        Ok(s)
    }

    pub fn params(&self) -> SampleParams {
        self.params
    }

    /// Device address of the state words.
    pub fn state_ptr(&self) -> u64 {
        self.state.ptr()
    }

    /// Restarts the generator at `rng` and clears the results (waits for the stream).
    pub fn reseed(&self, rng: [u64; 4]) -> Result<(), CudaError> {
        let mut words = [0u64; SAMPLE_STATE_WORDS];
        words[..4].copy_from_slice(&rng);
        self.kernels.gpu().htod(self.state.ptr(), &words)
    }

    /// The generator's current state (waits for the stream).
    pub fn rng_state(&self) -> Result<[u64; 4], CudaError> {
        let mut w = [0u64; 4];
        self.kernels.gpu().dtoh(&mut w, self.state.ptr())?;
        Ok(w)
    }

    /// Enqueues one draw on the compute stream (graph-capturable): reads `vocab` f32 logits at
    /// device address `logits`, writes the chosen token's key to the u64 at `out` and to the
    /// state.
    pub fn enqueue(&self, logits: u64, vocab: usize, out: u64) -> Result<(), CudaError> {
        if vocab == 0 || vocab > self.max_vocab {
            return Err(CudaError::Unsupported(format!(
                "GPU sampling: vocabulary of {vocab} tokens (this sampler takes 1 to {})",
                self.max_vocab
            )));
        }
        let args = SampleArgs {
            logits,
            state: self.state.ptr(),
            out,
            scratch: self.scratch.ptr(),
            vocab: vocab as i32,
            top_k: self.params.top_k.min(i32::MAX as usize) as i32,
            temperature: self.params.temperature,
            top_p: self.params.top_p,
        };
        let grid = Grid {
            blocks: (1, 1, 1),
            threads: SAMPLE_THREADS,
            shared_bytes: 0,
        };
        self.kernels
            .gpu()
            .launch(&self.kernels.f.sample, grid, &args)
    }

    /// Waits for the compute stream and reads the last launch's result.
    pub fn read(&self) -> Result<Sampled, CudaError> {
        let mut w = [0u64; SAMPLE_STATE_WORDS - SST_KEY];
        self.kernels
            .gpu()
            .dtoh(&mut w, self.state.ptr() + 8 * SST_KEY as u64)?;
        let [key, status, info, draws] = w;
        match status {
            0 => Ok(Sampled::Token(SampleOutcome {
                token: !(key as u32),
                key,
                kept: (info >> 32) as u32,
                rank: info as u32,
                draws,
            })),
            s if s <= i32::MAX as u64 + 1 => Ok(Sampled::NanLogit((s - 1) as usize)),
            s => Err(CudaError::Kernel(format!(
                "sample_token: internal error (status {s:#x})"
            ))),
        }
    }

    /// One draw from the logits at `logits`, waited for; the key also goes to `out`.
    pub fn sample(&self, logits: u64, vocab: usize, out: u64) -> Result<Sampled, CudaError> {
        self.enqueue(logits, vocab, out)?;
        self.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_layout_matches_the_cuda_struct() {
        let a = SampleArgs::default();
        let base = &a as *const _ as usize;
        assert_eq!(&a.scratch as *const _ as usize - base, 24);
        assert_eq!(&a.vocab as *const _ as usize - base, 32);
        assert_eq!(&a.top_p as *const _ as usize - base, 44);
    }

    #[test]
    fn parameters_are_checked() {
        let ok = SampleParams {
            temperature: 0.7,
            top_k: 0,
            top_p: 1.0,
        };
        assert!(ok.check().is_ok());
        for bad in [
            SampleParams {
                temperature: 0.0,
                ..ok
            },
            SampleParams {
                temperature: f32::INFINITY,
                ..ok
            },
            SampleParams { top_p: 0.0, ..ok },
            SampleParams { top_p: 1.5, ..ok },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
