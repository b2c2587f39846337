//! `cllm bench gpu`: load and decode on the GPU against its measured HBM bandwidth, with the
//! tuning in force; optionally each launch's time and each block's timeline of one step.

use std::io::Write as _;

use anyhow::Context;
use clap::Args;
use cllm_runtime::{Device, Engine, KvPrecision, Model, OpenOptions};
use serde_json::json;

use super::bench_request;
use crate::common::parse_kv_cache;
use crate::CmdResult;

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
    /// How the KV cache stores keys and values: f32, bf16 or int8.
    #[arg(long, default_value = "f32", value_parser = parse_kv_cache, value_name = "f32|bf16|int8")]
    pub kv_cache: KvPrecision,
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

pub fn run(a: GpuBenchArgs) -> CmdResult {
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
        let mut model = engine.open(path, &OpenOptions::default())?;
        model.set_kv_cache(a.kv_cache)?;
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
            "kv_cache": a.kv_cache.name(),
            "kv_cache_bytes": model.kv_cache_bytes(ids.len() + a.new_tokens.saturating_sub(1)),
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
                "{:<60} decode {:>8.1} tok/s ({:>5.1}% of {:.0} GB/s, {:.0} MB/token) | KV cache {} {:.1} MB | load {:>6.2} s, {:>6.2} GB/s | VRAM {:.2} GB",
                path.display(),
                t,
                100.0 * bpt * t / bw,
                bw / 1e9,
                bpt / 1e6,
                a.kv_cache,
                model.kv_cache_bytes(ids.len() + a.new_tokens.saturating_sub(1)) as f64 / 1e6,
                stats.seconds,
                stats.gb_per_s(),
                stats.vram_bytes as f64 / 1e9
            );
        }
    }
    Ok(())
}
