//! `cllm bench`: measured figures for BENCHMARKS.md. `codec` times every codec on seeded normal
//! bf16 data; `decode` times the CPU engine on a model against the machine's read bandwidth;
//! `gpu` times loading and decoding on the GPU against its measured HBM bandwidth.

#[cfg(feature = "synth")]
mod codec;
mod decode;
mod gpu;

use clap::{Args, Subcommand};
use cllm_runtime::{GenerateOptions, SamplerConfig};

use crate::CmdResult;

/// Measure codecs or the runtime.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand)]
pub enum BenchWhat {
    /// Ratio and single-core compress/decompress GB/s of every codec on seeded normal bf16 (std 0.02).
    #[cfg(feature = "synth")]
    Codec(codec::CodecArgs),
    /// CPU decode tokens/s of a model (folder or .cllm): see `cllm run --json` for one run.
    Decode(decode::DecodeBenchArgs),
    /// GPU load and decode of models (folders or .cllm files), against measured HBM bandwidth.
    Gpu(gpu::GpuBenchArgs),
}

pub fn run(a: BenchArgs) -> CmdResult {
    match a.what {
        #[cfg(feature = "synth")]
        BenchWhat::Codec(c) => codec::run(c),
        BenchWhat::Decode(d) => decode::run(d),
        BenchWhat::Gpu(g) => gpu::run(g),
    }
}

/// The benchmark request of `cllm bench decode` and `cllm bench gpu`: a fixed prompt of
/// `prompt_tokens` ids spread over the vocabulary, then `new_tokens` greedy tokens, no stop token.
pub(crate) fn bench_request(
    prompt_tokens: usize,
    new_tokens: usize,
    vocab_size: usize,
) -> (Vec<u32>, GenerateOptions) {
    let ids = (0..prompt_tokens as u32)
        .map(|i| 1 + (i * 7919) % (vocab_size as u32 - 1))
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: new_tokens,
        sampler: SamplerConfig::greedy(),
        eos_token_ids: vec![],
    };
    (ids, opts)
}
