//! `cllm bench decode`: CPU decode tokens/s of a model against this machine's read bandwidth.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use cllm_runtime::{Engine, KvPrecision, OpenOptions};
use serde_json::json;

use super::bench_request;
use crate::common::{parse_kv_cache, set_threads};
use crate::progress::human_bytes;
use crate::CmdResult;

/// Decode tokens/s of a model on the CPU, against this machine's measured read bandwidth.
#[derive(Args)]
pub struct DecodeBenchArgs {
    /// The model: a .cllm file or a Hugging Face folder.
    pub model: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub json: bool,
    /// How the KV cache stores keys and values: f32, bf16 or int8.
    #[arg(long, default_value = "f32", value_parser = parse_kv_cache, value_name = "f32|bf16|int8")]
    pub kv_cache: KvPrecision,
}

/// Read bandwidth of this machine: a parallel sum over a buffer far larger than the caches.
fn measure_read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let buf = vec![1u64; 128 << 20 >> 3 << 3];
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((buf.len() * 8) as f64 / secs);
    }
    best
}

pub fn run(a: DecodeBenchArgs) -> CmdResult {
    set_threads(a.threads)?;
    let mut model = Engine::cpu().open(&a.model, &OpenOptions::default())?;
    model.set_kv_cache(a.kv_cache)?;
    // The last generated token is never fed back: the cache holds one position less.
    let kv_bytes = model.kv_cache_bytes(a.prompt_tokens + a.new_tokens.saturating_sub(1));
    let (ids, opts) = bench_request(a.prompt_tokens, a.new_tokens, model.config().vocab_size);
    let r = model.generate(&ids, &opts, |_| {})?;
    let bytes_per_token = model.bytes_per_token() as f64;
    let bw = measure_read_bandwidth();
    let achieved = bytes_per_token * r.decode_tokens_per_second;
    let v = json!({
        "model": a.model.display().to_string(),
        "threads": rayon::current_num_threads(),
        "prompt_tokens": a.prompt_tokens, "new_tokens": r.generated_ids.len(),
        "load_seconds": model.load_stats().seconds,
        "prefill_tokens_per_second": r.prefill_tokens_per_second,
        "decode_tokens_per_second": r.decode_tokens_per_second,
        "weight_bytes": model.resident_bytes(),
        "kv_cache": a.kv_cache.name(),
        "kv_cache_bytes": kv_bytes,
        "bytes_read_per_token": bytes_per_token,
        "read_bandwidth_gb_s": bw / 1e9,
        "fraction_of_bandwidth": achieved / bw,
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{}: decode {:.2} tokens/s, prefill {:.1} tokens/s, KV cache {} {}, {} read per token -> {:.2} GB/s = {:.0}% of measured read bandwidth {:.2} GB/s ({} threads)",
            a.model.display(),
            r.decode_tokens_per_second,
            r.prefill_tokens_per_second,
            a.kv_cache,
            human_bytes(kv_bytes),
            human_bytes(bytes_per_token as u64),
            achieved / 1e9,
            100.0 * achieved / bw,
            bw / 1e9,
            rayon::current_num_threads()
        );
    }
    Ok(())
}
