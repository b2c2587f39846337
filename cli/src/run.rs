//! `cllm run`: generate text with a `.cllm` file or a Hugging Face folder, and `cllm bench decode`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Args;
use cllm_kernels::cuda::Gpu;
use cllm_loader::gpu::{load_gpu, GpuLoadOptions, GpuLoadStats, ResidencyReport};
use cllm_loader::{load_cpu, ModelFiles};
use cllm_runtime::cuda::{generate_gpu, GpuModel};
use cllm_runtime::{
    generate, ChatMessage, ChatTemplate, GenerateOptions, GenerationResult, LlamaConfig, Model,
    SamplerConfig, Tokenizer,
};
use serde_json::json;

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
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    /// With --device cuda: after loading, hash every tensor resident on the GPU with a GPU kernel
    /// and compare with the hash of the bytes decoded while loading; fail naming any mismatch.
    #[arg(long)]
    pub check_resident: bool,
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

/// The benchmark request of `cllm bench decode` and `cllm bench gpu`: a fixed prompt of
/// `prompt_tokens` ids spread over the vocabulary, then `new_tokens` greedy tokens, no stop token.
pub fn bench_request(
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

/// A model ready to generate, with its tokenizer and how it was loaded.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
    pub load_seconds: f64,
    pub weight_bytes: u64,
    /// Bytes a decode step reads: every matrix once; of an untied embedding only one row.
    pub bytes_per_token: u64,
}

pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting the thread count")?;
    }
    Ok(())
}

/// Refuses devices this build cannot serve, clearly: `cuda` needs a CUDA driver and a GPU.
pub fn check_device(device: &str) -> anyhow::Result<()> {
    match device {
        "cpu" => Ok(()),
        "cuda" => open_gpu().map(|_| ()),
        other => Err(anyhow!("--device {other}: expected cpu or cuda")),
    }
}

/// The first GPU, with its kernels ready; "--device cuda: no CUDA driver found ..." otherwise.
pub fn open_gpu() -> anyhow::Result<Arc<Gpu>> {
    Gpu::new(0).map_err(|e| anyhow!("--device cuda: {e}"))
}

pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let start = Instant::now();
    let m = load_cpu(path)?;
    let config = std::str::from_utf8(&m.files.config_json)
        .with_context(|| format!("{}: config.json is not UTF-8", path.display()))?;
    let cfg = LlamaConfig::from_json(config)
        .with_context(|| format!("{}: config.json", path.display()))?;
    let tok_json = m
        .files
        .tokenizer_json
        .as_deref()
        .ok_or_else(|| anyhow!("{}: no tokenizer.json", path.display()))?;
    let tokenizer = Tokenizer::from_bytes(tok_json)
        .with_context(|| format!("{}: tokenizer.json", path.display()))?;
    let weight_bytes = m.resident_bytes;
    let embedding = m
        .weights
        .get("model.embed_tokens.weight")
        .map_or(0, |w| w.resident_bytes() as u64);
    let bytes_per_token = if cfg.tie_word_embeddings {
        weight_bytes
    } else {
        weight_bytes - embedding
    };
    let model = Model::new(cfg, m.weights).with_context(|| format!("{}", path.display()))?;
    Ok(Loaded {
        model,
        tokenizer,
        files: m.files,
        load_seconds: start.elapsed().as_secs_f64(),
        weight_bytes,
        bytes_per_token,
    })
}

/// The prompt's token ids, through the chat template when asked.
pub fn prompt_ids(l: &Loaded, prompt: &str, chat: bool) -> anyhow::Result<Vec<u32>> {
    prompt_ids_with(&l.tokenizer, &l.files, prompt, chat)
}

/// [`prompt_ids`] for any backend's tokenizer and files.
pub fn prompt_ids_with(
    tokenizer: &Tokenizer,
    files: &ModelFiles,
    prompt: &str,
    chat: bool,
) -> anyhow::Result<Vec<u32>> {
    let text = if chat {
        let cfg = files.tokenizer_config_json.as_deref().ok_or_else(|| {
            anyhow!("--chat: the model has no tokenizer_config.json with a chat template")
        })?;
        let tpl = ChatTemplate::from_tokenizer_config(std::str::from_utf8(cfg)?, None)?;
        tpl.render(&[ChatMessage::user(prompt)], true)?
    } else {
        prompt.to_string()
    };
    let ids = tokenizer.encode(&text)?;
    if ids.is_empty() {
        return Err(anyhow!("the prompt encodes to no tokens"));
    }
    Ok(ids)
}

/// Peak resident memory of this process, from the kernel's accounting.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs a generation loop whose token callback decodes text as it comes (only complete UTF-8),
/// printing each piece at once when `stream` is set.
fn with_text<E: Into<anyhow::Error>>(
    tokenizer: &Tokenizer,
    stream: bool,
    generate: impl FnOnce(&mut dyn FnMut(u32)) -> Result<GenerationResult, E>,
) -> anyhow::Result<(GenerationResult, String)> {
    let mut text_stream = tokenizer.stream(true);
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    let mut err = None;
    let result = generate(&mut |id| match text_stream.push(id) {
        Ok(Some(piece)) => {
            text.push_str(&piece);
            if stream {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
        }
        Ok(None) => {}
        Err(e) => err = Some(e),
    })
    .map_err(Into::into)?;
    if let Some(e) = err {
        return Err(e.into());
    }
    if let Some(rest) = text_stream.finish()? {
        text.push_str(&rest);
        if stream {
            print!("{rest}");
        }
    }
    Ok((result, text))
}

/// Generates on the CPU, streaming text to stdout when `stream` is set.
pub fn generate_text(
    l: &Loaded,
    ids: &[u32],
    opts: &GenerateOptions,
    stream: bool,
) -> anyhow::Result<(GenerationResult, String)> {
    with_text(&l.tokenizer, stream, |on_token| {
        generate(&l.model, ids, opts, on_token)
    })
}

pub fn run(a: RunArgs) -> CmdResult {
    if a.device == "cuda" {
        return run_gpu(a);
    }
    if a.check_resident {
        return Err(
            anyhow!("--check-resident checks GPU residency: use it with --device cuda").into(),
        );
    }
    check_device(&a.device)?;
    set_threads(a.threads)?;
    let l = load(&a.model)?;
    let ids = prompt_ids(&l, &a.prompt, a.chat)?;
    let opts = a.generate_options(l.model.config().eos_token_ids.clone());
    // A plain prompt is continued, so the text reads on from it; a chat reply stands alone.
    if !a.json && !a.chat {
        print!("{}", a.prompt);
        std::io::stdout().flush()?;
    }
    let (r, text) = generate_text(&l, &ids, &opts, !a.json)?;
    let peak = peak_rss_bytes();
    if a.json {
        println!(
            "{}",
            json!({
                "model": a.model.display().to_string(), "device": a.device,
                "prompt": a.prompt, "prompt_ids": ids, "generated_ids": r.generated_ids,
                "text": text, "stop": format!("{:?}", r.stop_reason),
                "load_seconds": l.load_seconds,
                "prefill_tokens_per_second": r.prefill_tokens_per_second,
                "decode_tokens_per_second": r.decode_tokens_per_second,
                "weight_bytes": l.weight_bytes, "peak_rss_bytes": peak,
            })
        );
    } else {
        println!();
        eprintln!(
            "load {:.2} s | prefill {} tokens at {:.1} tokens/s | decode {} tokens at {:.1} tokens/s | weights {} in memory, peak RSS {}",
            l.load_seconds,
            r.prompt_tokens,
            r.prefill_tokens_per_second,
            r.generated_ids.len(),
            r.decode_tokens_per_second,
            human_bytes(l.weight_bytes),
            peak.map(human_bytes).unwrap_or_else(|| "unknown".into())
        );
    }
    Ok(())
}

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

pub fn bench_decode(a: DecodeBenchArgs) -> CmdResult {
    set_threads(a.threads)?;
    let l = load(&a.model)?;
    let cfg = l.model.config();
    let (ids, opts) = bench_request(a.prompt_tokens, a.new_tokens, cfg.vocab_size);
    let (r, _) = generate_text(&l, &ids, &opts, false)?;
    let bytes_per_token = l.bytes_per_token as f64;
    let bw = measure_read_bandwidth();
    let achieved = bytes_per_token * r.decode_tokens_per_second;
    let v = json!({
        "model": a.model.display().to_string(),
        "threads": rayon::current_num_threads(),
        "prompt_tokens": a.prompt_tokens, "new_tokens": r.generated_ids.len(),
        "load_seconds": l.load_seconds,
        "prefill_tokens_per_second": r.prefill_tokens_per_second,
        "decode_tokens_per_second": r.decode_tokens_per_second,
        "weight_bytes": l.weight_bytes,
        "bytes_read_per_token": bytes_per_token,
        "read_bandwidth_gb_s": bw / 1e9,
        "fraction_of_bandwidth": achieved / bw,
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{}: decode {:.2} tokens/s, prefill {:.1} tokens/s, {} read per token -> {:.2} GB/s = {:.0}% of measured read bandwidth {:.2} GB/s ({} threads)",
            a.model.display(),
            r.decode_tokens_per_second,
            r.prefill_tokens_per_second,
            human_bytes(bytes_per_token as u64),
            achieved / 1e9,
            100.0 * achieved / bw,
            bw / 1e9,
            rayon::current_num_threads()
        );
    }
    Ok(())
}

/// A model on the GPU, ready to generate.
pub struct GpuLoaded {
    pub gpu: Arc<Gpu>,
    pub model: GpuModel,
    pub tokenizer: Option<Tokenizer>,
    pub files: ModelFiles,
    pub stats: GpuLoadStats,
    /// The residency check's result, when asked for.
    pub residency: Option<ResidencyReport>,
    /// Load plus model construction, seconds.
    pub load_seconds: f64,
}

/// Streams a `.cllm` file or a folder onto the GPU and builds the model; with `check`, verifies
/// residency (a mismatch is an error naming the tensor).
pub fn load_on_gpu(
    gpu: &Arc<Gpu>,
    path: &Path,
    check: bool,
    need_tokenizer: bool,
) -> anyhow::Result<GpuLoaded> {
    let start = Instant::now();
    let opts = GpuLoadOptions {
        hash: check,
        ..GpuLoadOptions::default()
    };
    let mut w = load_gpu(path, gpu, &opts)
        .with_context(|| format!("loading {} onto the GPU", path.display()))?;
    let config = std::str::from_utf8(&w.files.config_json)
        .with_context(|| format!("{}: config.json is not UTF-8", path.display()))?;
    let cfg = LlamaConfig::from_json(config)
        .with_context(|| format!("{}: config.json", path.display()))?;
    let tokenizer = match w.files.tokenizer_json.as_deref() {
        Some(t) => Some(
            Tokenizer::from_bytes(t)
                .with_context(|| format!("{}: tokenizer.json", path.display()))?,
        ),
        None if need_tokenizer => return Err(anyhow!("{}: no tokenizer.json", path.display())),
        None => None,
    };
    let weights = std::mem::take(&mut w.weights);
    let model = GpuModel::new(gpu, cfg, weights).with_context(|| format!("{}", path.display()))?;
    let load_seconds = start.elapsed().as_secs_f64();
    let residency = if check {
        Some(
            w.check_resident(gpu)
                .with_context(|| format!("{}", path.display()))?,
        )
    } else {
        None
    };
    Ok(GpuLoaded {
        gpu: gpu.clone(),
        model,
        tokenizer,
        files: w.files,
        stats: w.stats,
        residency,
        load_seconds,
    })
}

/// Generates on the GPU, streaming text to stdout when `stream` is set.
pub fn generate_text_gpu(
    l: &GpuLoaded,
    ids: &[u32],
    opts: &GenerateOptions,
    stream: bool,
) -> anyhow::Result<(GenerationResult, String)> {
    let tok = l
        .tokenizer
        .as_ref()
        .ok_or_else(|| anyhow!("the model has no tokenizer"))?;
    with_text(tok, stream, |on_token| {
        generate_gpu(&l.model, ids, opts, on_token)
    })
}

fn run_gpu(a: RunArgs) -> CmdResult {
    set_threads(a.threads)?;
    let gpu = open_gpu()?;
    let l = load_on_gpu(&gpu, &a.model, a.check_resident, true)?;
    let tok = l.tokenizer.as_ref().expect("required above");
    let ids = prompt_ids_with(tok, &l.files, &a.prompt, a.chat)?;
    let opts = a.generate_options(l.model.config().eos_token_ids.clone());
    if !a.json {
        print!("{}", a.prompt);
        std::io::stdout().flush()?;
    }
    let (r, text) = generate_text_gpu(&l, &ids, &opts, !a.json)?;
    let info = l.gpu.info();
    let residency = l
        .residency
        .as_ref()
        .map(|c| json!({"ok": true, "streams": c.streams, "bytes": c.bytes, "seconds": c.seconds}));
    if a.json {
        println!(
            "{}",
            json!({
                "model": a.model.display().to_string(), "device": "cuda", "gpu": info.name,
                "prompt": a.prompt, "prompt_ids": ids, "generated_ids": r.generated_ids,
                "text": text, "stop": format!("{:?}", r.stop_reason),
                "load_seconds": l.load_seconds, "load_decoded_bytes": l.stats.decoded_bytes,
                "load_gb_s": l.stats.gb_per_s(), "vram_weight_bytes": l.stats.vram_bytes,
                "vram_used_bytes": l.stats.vram_used_bytes, "pinned_ring_bytes": l.stats.ring_bytes,
                "prefill_tokens_per_second": r.prefill_tokens_per_second,
                "decode_tokens_per_second": r.decode_tokens_per_second,
                "weight_bytes": l.model.resident_bytes(), "check_resident": residency,
                "kernels_cached": info.kernels_cached, "kernel_seconds": info.kernel_seconds,
            })
        );
    } else {
        println!();
        if let Some(c) = &l.residency {
            eprintln!(
                "check-resident OK: {} streams, {} hashed on the GPU in {:.2} s, all equal to the decoded bytes",
                c.streams,
                human_bytes(c.bytes),
                c.seconds
            );
        }
        eprintln!(
            "{} | load {:.2} s ({:.2} GB/s decoded, {} in VRAM) | prefill {} tokens at {:.1} tokens/s | decode {} tokens at {:.1} tokens/s",
            info.name,
            l.load_seconds,
            l.stats.gb_per_s(),
            human_bytes(l.stats.vram_bytes),
            r.prompt_tokens,
            r.prefill_tokens_per_second,
            r.generated_ids.len(),
            r.decode_tokens_per_second,
        );
    }
    Ok(())
}
