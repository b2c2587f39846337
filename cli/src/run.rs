//! `cllm run`: generate text with a `.cllm` file or a Hugging Face folder, on the CPU or a GPU.

use std::io::Write;
use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use cllm_runtime::generate::TokenLogprobs;
use cllm_runtime::sampler::MAX_TOP_LOGPROBS;
use cllm_runtime::{
    Device, Engine, GenerateOptions, KvPrecision, Model, OpenOptions, SamplerConfig, Tokenizer,
};
use serde_json::json;

use crate::common::{parse_device, parse_kv_cache, peak_rss_bytes, set_threads};
use crate::progress::human_bytes;
use crate::CmdResult;

/// Generate text with a model: a .cllm file or a Hugging Face folder.
#[derive(Args)]
pub struct RunArgs {
    /// The model: a .cllm file or a Hugging Face folder.
    pub model: PathBuf,
    /// The prompt text.
    #[arg(short, long)]
    pub prompt: String,
    /// Most tokens to generate (generation also stops at EOS).
    #[arg(short = 'n', long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Backend: cpu or cuda.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt in the model's chat template, as a user message.
    #[arg(long)]
    pub chat: bool,
    /// Worker threads (default: all cores); results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object with the text, ids and figures.
    #[arg(long)]
    pub json: bool,
    /// With --json: at each generated position, the K most likely tokens and their
    /// log-probabilities (of the raw logits), and the chosen token's (K from 1 to 20).
    #[arg(long, value_name = "K", requires = "json")]
    pub logprobs: Option<usize>,
    /// With --device cuda: after loading, hash every tensor resident on the GPU with a GPU kernel
    /// and compare with the hash of the bytes decoded while loading; fail naming any mismatch.
    #[arg(long)]
    pub check_resident: bool,
    /// How the KV cache stores keys and values: f32, bf16 or int8.
    #[arg(long, default_value = "f32", value_parser = parse_kv_cache, value_name = "f32|bf16|int8")]
    pub kv_cache: KvPrecision,
}

impl RunArgs {
    /// The generation settings these options ask for, stopping at `eos`.
    fn generate_options(&self, eos: Vec<u32>) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampler: SamplerConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
            eos_token_ids: eos,
        }
    }
}

/// The GPU loader's and residency check's figures of a model opened on the GPU, as JSON.
pub fn gpu_load_json(engine: &Engine, model: &Model) -> serde_json::Value {
    let (Some(kernels), Some(stats)) = (engine.kernels(), model.load_stats().gpu.as_ref()) else {
        return json!({});
    };
    let info = kernels.gpu().info();
    let compiled = kernels.compile_report();
    let residency =
        model.load_stats().residency.as_ref().map(
            |c| json!({"ok": true, "streams": c.streams, "bytes": c.bytes, "seconds": c.seconds}),
        );
    json!({
        "gpu": info.name, "load_decoded_bytes": stats.decoded_bytes, "load_gb_s": stats.gb_per_s(),
        "vram_weight_bytes": stats.vram_bytes, "vram_used_bytes": stats.vram_used_bytes,
        "pinned_ring_bytes": stats.ring_bytes, "check_resident": residency,
        "kernels_cached": compiled.cache_hit, "kernel_seconds": compiled.seconds,
    })
}

/// The log-probabilities of each generated position, as OpenAI's `logprobs.content`: the chosen
/// token and its `top_logprobs`, each with its id, vocabulary entry (`token`) and text.
fn logprobs_json(tok: &Tokenizer, steps: &[TokenLogprobs]) -> anyhow::Result<serde_json::Value> {
    let entry = |id: u32, logprob: f64| -> anyhow::Result<serde_json::Value> {
        Ok(json!({
            "id": id, "token": tok.id_to_token(id), "text": tok.decode(&[id], false)?,
            "logprob": logprob,
        }))
    };
    let positions = steps
        .iter()
        .map(|s| {
            let mut v = entry(s.id, s.logprob)?;
            let top = s
                .top
                .iter()
                .map(|&(id, lp)| entry(id, lp))
                .collect::<anyhow::Result<Vec<_>>>()?;
            v["top_logprobs"] = serde_json::Value::Array(top);
            Ok(v)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(serde_json::Value::Array(positions))
}

pub fn run(a: RunArgs) -> CmdResult {
    if a.check_resident && a.device != Device::Cuda {
        return Err(
            anyhow!("--check-resident checks GPU residency: use it with --device cuda").into(),
        );
    }
    if let Some(k) = a.logprobs {
        if !(1..=MAX_TOP_LOGPROBS).contains(&k) {
            return Err(anyhow!("--logprobs {k}: expected 1 to {MAX_TOP_LOGPROBS}").into());
        }
    }
    set_threads(a.threads)?;
    let engine = Engine::new(a.device)?;
    let mut model = engine.open(
        &a.model,
        &OpenOptions {
            need_tokenizer: true,
            check_resident: a.check_resident,
        },
    )?;
    model.set_kv_cache(a.kv_cache)?;
    let ids = model.prompt_ids(&a.prompt, a.chat)?;
    let opts = a.generate_options(model.eos_token_ids().to_vec());
    // A plain prompt is continued, so the text reads on from it; a chat reply stands alone.
    let stream = !a.json;
    if stream && !a.chat {
        print!("{}", a.prompt);
        std::io::stdout().flush()?;
    }
    let mut stdout = std::io::stdout();
    let on_text = |piece: &str| {
        if stream {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    };
    let (r, text) = match a.logprobs {
        Some(k) => model.generate_text_logprobs(&ids, &opts, k, on_text)?,
        None => model.generate_text(&ids, &opts, on_text)?,
    };
    let load = model.load_stats();
    if a.json {
        let mut v = json!({
            "model": a.model.display().to_string(), "device": a.device.to_string(),
            "prompt": a.prompt, "prompt_ids": ids, "generated_ids": r.generated_ids,
            "text": text, "stop": format!("{:?}", r.stop_reason),
            "load_seconds": load.seconds,
            "prefill_tokens_per_second": r.prefill_tokens_per_second,
            "decode_tokens_per_second": r.decode_tokens_per_second,
            "weight_bytes": model.resident_bytes(), "peak_rss_bytes": peak_rss_bytes(),
            "kv_cache": a.kv_cache.name(),
            "kv_cache_bytes": model.kv_cache_bytes(ids.len() + a.max_new_tokens.saturating_sub(1)),
        });
        if let (Some(o), serde_json::Value::Object(g)) =
            (v.as_object_mut(), gpu_load_json(&engine, &model))
        {
            o.extend(g);
        }
        if let (Some(o), Some(tok), Some(_)) = (v.as_object_mut(), model.tokenizer(), a.logprobs) {
            o.insert("logprobs".into(), logprobs_json(tok, &r.logprobs)?);
        }
        println!("{v}");
        return Ok(());
    }
    println!();
    if let Some(c) = &load.residency {
        eprintln!(
            "check-resident OK: {} streams, {} hashed on the GPU in {:.2} s, all equal to the decoded bytes",
            c.streams,
            human_bytes(c.bytes),
            c.seconds
        );
    }
    let place = match (engine.gpu(), &load.gpu) {
        (Some(gpu), Some(stats)) => format!(
            "{} | load {:.2} s ({:.2} GB/s decoded, {} in VRAM)",
            gpu.info().name,
            load.seconds,
            stats.gb_per_s(),
            human_bytes(stats.vram_bytes)
        ),
        _ => format!(
            "load {:.2} s, weights {} in memory, peak RSS {}",
            load.seconds,
            human_bytes(model.resident_bytes()),
            peak_rss_bytes()
                .map(human_bytes)
                .unwrap_or_else(|| "unknown".into())
        ),
    };
    eprintln!(
        "{place} | prefill {} tokens at {:.1} tokens/s | decode {} tokens at {:.1} tokens/s",
        r.prompt_tokens,
        r.prefill_tokens_per_second,
        r.generated_ids.len(),
        r.decode_tokens_per_second,
    );
    Ok(())
}
