//! `cllm bench`: measured figures for BENCHMARKS.md. `codec` times every codec on seeded normal
//! bf16 data; `decode` times the CPU engine on a model against the machine's read bandwidth;
//! `gpu` times loading and decoding on the GPU against its measured HBM bandwidth.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use cllm_fixtures::{Init, TensorSpec};
use cllm_format::{
    pack, Codec, Container, Dtype, Limits, PackInput, PackOptions, Policy, Rule, SourceTensor,
};
use cllm_runtime::{Device, Engine, GenerateOptions, Model, OpenOptions, SamplerConfig};
use serde_json::json;

use crate::common::set_threads;
use crate::progress::human_bytes;
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
    Codec(CodecArgs),
    /// CPU decode tokens/s of a model (folder or .cllm): see `cllm run --json` for one run.
    Decode(DecodeBenchArgs),
    /// GPU load and decode of models (folders or .cllm files), against measured HBM bandwidth.
    Gpu(GpuBenchArgs),
}

#[derive(Args)]
pub struct GpuBenchArgs {
    /// Models: .cllm files or Hugging Face folders (measured one after the other).
    #[arg(required = true)]
    pub models: Vec<std::path::PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Decode runs per model (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// GiB read by the bandwidth probe.
    #[arg(long, default_value_t = 4)]
    pub probe_gib: usize,
    /// One JSON object per model, one per line.
    #[arg(long)]
    pub json: bool,
    /// Also time one decode step launch by launch (outside the graph): microseconds per kind.
    #[arg(long)]
    pub profile: bool,
    /// Also write each block's timeline in one decode step (a graph replay, halfway through the
    /// new tokens) to this CSV file, one row per block, for every model: its start, the return
    /// of its programmatic-launch wait, its end and the kernel's marks, in ns. Needs kernels
    /// built with tracing: `CLLM_NVRTC_DEFINES=-DCLLM_TRACE` (which slows every block a little).
    #[arg(long, value_name = "CSV")]
    pub trace: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct CodecArgs {
    /// MiB of bf16 data.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Codecs to measure (default: all).
    #[arg(long = "codec")]
    pub codecs: Vec<String>,
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> CmdResult {
    match a.what {
        BenchWhat::Codec(c) => codec(c),
        BenchWhat::Decode(d) => decode(d),
        BenchWhat::Gpu(g) => gpu(g),
    }
}

const CODECS: [&str; 8] = [
    "raw",
    "zstd",
    "zstd-bp",
    "int8-row",
    "int8-g64",
    "int4-g32",
    "int4-g64",
    "int4-g128",
];

fn codec(a: CodecArgs) -> CmdResult {
    let cols: u64 = 8192;
    let rows = (a.size_mib << 20) / 2 / cols;
    let spec = TensorSpec {
        name: "bench.weight".into(),
        shape: vec![rows, cols],
        init: Init::Normal { std: 0.02 },
    };
    let t0 = Instant::now();
    let data = cllm_fixtures::tensor_bytes(&spec, Dtype::Bf16, 0).context("generating data")?;
    eprintln!(
        "generated {} MiB of N(0, 0.02) bf16 in {:.1} s",
        data.len() >> 20,
        t0.elapsed().as_secs_f64()
    );
    let one_core = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let chosen: Vec<&str> = if a.codecs.is_empty() {
        CODECS.to_vec()
    } else {
        a.codecs.iter().map(String::as_str).collect()
    };
    let mut rows_out = Vec::new();
    for id in chosen {
        let rule = format!("*={id}");
        let policy = Policy {
            rules: vec![Rule::parse(&rule)?],
            ..Policy::default()
        };
        let input = PackInput {
            tensors: vec![SourceTensor {
                name: spec.name.clone(),
                dtype: Dtype::Bf16,
                shape: spec.shape.clone(),
                bytes: &data,
            }],
            files: vec![("config.json".into(), b"{}".to_vec())],
            source_files: vec![],
        };
        let opts = PackOptions {
            policy,
            zstd_level: a.zstd_level,
            ..PackOptions::default()
        };
        let mut out = Vec::with_capacity(data.len());
        let t = Instant::now();
        one_core.install(|| pack(&input, &opts, &mut out, &mut |_| {}))?;
        let compress_s = t.elapsed().as_secs_f64();
        let c = Container::open(&out, &Limits::default())?;
        let entry = &c.tensors()[0];
        let specs = c.stream_specs(0);
        let mut buf = vec![0u8; 64 << 20];
        let mut scratch = Vec::new();
        let t = Instant::now();
        let mut decoded = 0u64;
        for (s, spec) in entry.streams.iter().zip(specs) {
            for (i, f) in s.frames.iter().enumerate() {
                let n = f.decoded as usize;
                c.decode_frame(
                    "bench",
                    &s.role,
                    i,
                    f,
                    spec.encoding,
                    &mut buf[..n],
                    &mut scratch,
                )?;
                decoded += n as u64;
            }
        }
        let decompress_s = t.elapsed().as_secs_f64();
        let stored = entry.stored_bytes();
        let codec = Codec::from_id(&entry.codec, entry.group_size).expect("written by us");
        let row = json!({
            "codec": codec.to_string(),
            "source_bytes": data.len(),
            "stored_bytes": stored,
            "ratio": data.len() as f64 / stored as f64,
            "bits_per_weight": stored as f64 * 8.0 / (data.len() / 2) as f64,
            "compress_gb_s_per_core": data.len() as f64 / compress_s / 1e9,
            "decompress_gb_s_per_core": decoded as f64 / decompress_s / 1e9,
            "decoded_bytes": decoded,
        });
        if !a.json {
            println!(
                "{:<10} ratio {:>6.3}  {:>5.2} bits/weight  compress {:>6.3} GB/s/core  decompress {:>6.3} GB/s/core (of {} decoded bytes)",
                row["codec"].as_str().unwrap_or(""),
                row["ratio"].as_f64().unwrap_or(0.0),
                row["bits_per_weight"].as_f64().unwrap_or(0.0),
                row["compress_gb_s_per_core"].as_f64().unwrap_or(0.0),
                row["decompress_gb_s_per_core"].as_f64().unwrap_or(0.0),
                decoded
            );
        }
        rows_out.push(row);
    }
    if a.json {
        println!(
            "{}",
            json!({"size_mib": a.size_mib, "dtype": "bf16", "std": 0.02, "codecs": rows_out})
        );
    }
    Ok(())
}

/// Reads every file of a model once, so the load that follows is timed from a warm page cache.
fn warm_page_cache(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut total = 0u64;
    let mut buf = vec![0u8; 8 << 20];
    for f in files {
        let mut file = std::fs::File::open(&f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// The benchmark request of `cllm bench decode` and `cllm bench gpu`: a fixed prompt of
/// `prompt_tokens` ids spread over the vocabulary, then `new_tokens` greedy tokens, no stop token.
fn bench_request(
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

fn decode(a: DecodeBenchArgs) -> CmdResult {
    set_threads(a.threads)?;
    let model = Engine::cpu().open(&a.model, &OpenOptions::default())?;
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

/// Microseconds per launch kind of one decode step, launch by launch (outside the graph),
/// averaged over `steps` steps after the prompt.
fn profile_decode(
    model: &Model,
    ids: &[u32],
    steps: usize,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let gpu_model = model.cuda().context("profiling needs the GPU")?;
    let mut s = gpu_model.session(ids.len() + steps)?;
    s.prefill(ids)?;
    let mut acc: Vec<(&'static str, f64)> = Vec::new();
    for _ in 0..steps {
        for (name, us) in s.profile_decode_step()? {
            match acc.iter_mut().find(|(n, _)| *n == name) {
                Some(x) => x.1 += us / steps as f64,
                None => acc.push((name, us / steps as f64)),
            }
        }
    }
    Ok(acc)
}

/// Each block's timeline in one decode step (a graph replay `halfway` steps after the prompt),
/// written to `f` as CSV rows.
fn trace_decode(
    engine: &Engine,
    model: &Model,
    ids: &[u32],
    halfway: usize,
    f: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let kernels = engine.kernels().context("tracing needs the GPU")?;
    let gpu_model = model.cuda().context("tracing needs the GPU")?;
    let mut s = gpu_model.session(ids.len() + 2 * halfway + 1)?;
    s.prefill(ids)?;
    for _ in 0..halfway {
        s.decode_chained()?;
    }
    kernels.trace_reset()?;
    s.decode_chained()?;
    let recs = kernels.trace_take()?;
    let t0 = recs.iter().map(|r| r.start_ns).min().unwrap_or(0);
    for r in &recs {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            model.path().display(),
            r.kernel(),
            r.sm,
            r.block.0,
            r.block.1,
            r.start_ns - t0,
            r.wait_ns,
            r.end_ns,
            r.marks_ns[0],
            r.marks_ns[1],
            r.marks_ns[2],
            r.marks_ns[3]
        )?;
    }
    f.flush()?;
    Ok(())
}

fn gpu(a: GpuBenchArgs) -> CmdResult {
    let engine = Engine::new(Device::Cuda)?;
    let kernels = engine
        .kernels()
        .expect("a cuda engine has its kernels")
        .clone();
    let gpu = kernels.gpu();
    let info = gpu.info().clone();
    let compiled = kernels.compile_report();
    let bw = kernels.read_bandwidth(a.probe_gib << 30, 10)?;
    eprintln!(
        "{}: {} SMs, {:.1} GiB; measured read bandwidth {:.0} GB/s; kernels {} in {:.2} s",
        info.name,
        info.multiprocessors,
        info.total_memory as f64 / (1u64 << 30) as f64,
        bw / 1e9,
        if compiled.cache_hit {
            "from the cache"
        } else {
            "compiled"
        },
        compiled.seconds
    );
    let mut trace = match &a.trace {
        Some(p) => {
            if !kernels.trace_reset()? {
                return Err(anyhow::anyhow!(
                    "--trace: the kernels were compiled without tracing; set CLLM_NVRTC_DEFINES=-DCLLM_TRACE"
                )
                .into());
            }
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            );
            writeln!(
                f,
                "model,kernel,sm,block_x,block_y,start_ns,wait_ns,end_ns,mark1_ns,mark2_ns,mark3_ns,mark4_ns"
            )?;
            Some(f)
        }
        None => None,
    };
    for path in &a.models {
        let file_bytes = warm_page_cache(path)?;
        let model = engine.open(path, &OpenOptions::default())?;
        let stats = model.load_stats().gpu.clone().unwrap_or_default();
        let (ids, opts) = bench_request(a.prompt_tokens, a.new_tokens, model.config().vocab_size);
        // One untimed run captures the decode graph's first use and warms the clocks.
        model.generate(&ids, &opts, |_| {})?;
        let mut tps = Vec::new();
        let mut prefill = Vec::new();
        for _ in 0..a.reps.max(1) {
            let r = model.generate(&ids, &opts, |_| {})?;
            tps.push(r.decode_tokens_per_second);
            prefill.push(r.prefill_tokens_per_second);
        }
        tps.sort_by(f64::total_cmp);
        prefill.sort_by(f64::total_cmp);
        let t = tps[tps.len() / 2];
        let bpt = model.bytes_per_token() as f64;
        let mut profile = serde_json::Map::new();
        if a.profile {
            let acc = profile_decode(&model, &ids, 20)?;
            let total: f64 = acc.iter().map(|(_, us)| us).sum();
            eprintln!(
                "  one decode step launch by launch: {total:.0} us ({})",
                acc.iter()
                    .map(|(n, us)| format!("{n} {us:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (n, us) in acc {
                profile.insert(n.to_string(), json!(us));
            }
        }
        if let Some(f) = trace.as_mut() {
            trace_decode(&engine, &model, &ids, a.new_tokens / 2, f)?;
        }
        let row = json!({
            "profile_us": profile,
            "model": path.display().to_string(),
            "gpu": info.name,
            "tuning": gpu.tuning(),
            "kernel_defines": kernels.defines(),
            "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "file_bytes": file_bytes,
            "load_seconds": stats.seconds,
            "load_decoded_bytes": stats.decoded_bytes,
            "load_gb_s": stats.gb_per_s(),
            "load_read_bytes": stats.read_bytes,
            "pinned_ring_bytes": stats.ring_bytes,
            "vram_weight_bytes": stats.vram_bytes,
            "vram_used_bytes": stats.vram_used_bytes,
            "prompt_tokens": a.prompt_tokens,
            "new_tokens": a.new_tokens,
            "decode_tokens_per_second": t,
            "decode_tokens_per_second_all": tps,
            "prefill_tokens_per_second": prefill[prefill.len() / 2],
            "bytes_read_per_token": bpt,
            "read_bandwidth_gb_s": bw / 1e9,
            "fraction_of_bandwidth": bpt * t / bw,
        });
        if a.json {
            println!("{row}");
        } else {
            println!(
                "{:<60} decode {:>8.1} tok/s ({:>5.1}% of {:.0} GB/s, {:.0} MB/token) | load {:>6.2} s, {:>6.2} GB/s | VRAM {:.2} GB",
                path.display(),
                t,
                100.0 * bpt * t / bw,
                bw / 1e9,
                bpt / 1e6,
                stats.seconds,
                stats.gb_per_s(),
                stats.vram_bytes as f64 / 1e9
            );
        }
    }
    Ok(())
}
