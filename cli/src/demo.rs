//! `cllm demo`: the README's first command. Fetches the real model if it is not cached, imports
//! it, packs it with `--policy mlp-only`, verifies it against the source, runs a prompt, and prints
//! one short summary.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use cllm_format::{PackOptions, Policy, Preset};
use cllm_loader::hf::HfFolder;
use cllm_runtime::GenerateOptions;

use crate::progress::human_bytes;
use crate::{CmdResult, Failure};

/// Fetch SmolLM2-135M-Instruct (if not cached), import, pack (mlp-only int8), verify, and run it.
#[derive(Args)]
pub struct DemoArgs {
    /// The prompt to complete.
    #[arg(long, default_value = "The capital of France is")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Backend: auto (the GPU when one is present, else the CPU), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(a: DemoArgs) -> CmdResult {
    let t_all = Instant::now();
    let gguf = cllm_fixtures::real_model::ensure_smollm2_gguf()
        .context("fetching SmolLM2-135M-Instruct")?;
    let base = gguf
        .parent()
        .expect("cached model has a folder")
        .to_path_buf();
    let hf_dir = base.join("hf");
    if !hf_dir.join("config.json").exists() {
        eprintln!("importing {} ...", gguf.display());
        cllm_gguf::import(&gguf, &hf_dir)?;
    }
    let packed = base.join("smollm2-135m-instruct.mlp-only.cllm");
    let folder = HfFolder::open(&hf_dir)?;
    let input = crate::pack::source_input(&folder)?;
    let opts = PackOptions {
        policy: Policy {
            preset: Preset::MlpOnly,
            ..Policy::default()
        },
        tool: format!("cllm {}", env!("CARGO_PKG_VERSION")),
        ..PackOptions::default()
    };
    let t = Instant::now();
    let summary = crate::pack::pack_to_file(&input, &opts, &packed, false)?;
    let pack_s = t.elapsed().as_secs_f64();
    drop(input);
    let t = Instant::now();
    let report = crate::verify::build_report(&packed, Some(&hf_dir))?;
    let verify_s = t.elapsed().as_secs_f64();
    let gpu = match a.device.as_str() {
        "cpu" => None,
        "cuda" => Some(crate::run::open_gpu()?),
        "auto" => match crate::run::open_gpu() {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("no GPU used ({e:#}); running on the CPU");
                None
            }
        },
        other => {
            return Err(anyhow::anyhow!("--device {other}: expected auto, cpu or cuda").into())
        }
    };
    let source_bytes = summary.source_bytes;
    let worst = report
        .against
        .as_ref()
        .and_then(|ag| ag.quantized.iter().map(|q| q.rel_rms).reduce(f64::max))
        .unwrap_or(0.0);
    println!("cllm demo: SmolLM2-135M-Instruct ({})", gguf.display());
    println!(
        "  pack     mlp-only int8: {} -> {} (ratio {:.2}) in {:.1} s",
        human_bytes(source_bytes),
        human_bytes(summary.file_len),
        source_bytes as f64 / summary.file_len as f64,
        pack_s
    );
    println!(
        "  verify   {} in {:.1} s: {} frames checked; {} lossless tensors byte-identical, {} int8 tensors re-quantize bit-exactly (worst rel. RMS error {:.4})",
        if report.ok { "OK" } else { "FAILED" },
        verify_s,
        report.frames,
        report.against.as_ref().map_or(0, |ag| ag.lossless_identical),
        report.against.as_ref().map_or(0, |ag| ag.quantized_reproduced),
        worst
    );
    if let Some(gpu) = gpu {
        let l = crate::run::load_on_gpu(&gpu, &packed, true, true)?;
        let tok = l.tokenizer.as_ref().expect("required");
        let ids = crate::run::prompt_ids_with(tok, &l.files, &a.prompt, false)?;
        let opts = GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            sampler: cllm_runtime::SamplerConfig::greedy(),
            eos_token_ids: l.model.config().eos_token_ids.clone(),
        };
        let (r, text) = crate::run::generate_text_gpu(&l, &ids, &opts, false)?;
        println!(
            "  run      cuda ({}): {:?} ->{:?}",
            gpu.info().name,
            a.prompt,
            text
        );
        println!(
            "  speed    load {:.2} s ({:.2} GB/s, residency checked), prefill {:.1} tokens/s, decode {:.1} tokens/s; weights {} in VRAM",
            l.load_seconds,
            l.stats.gb_per_s(),
            r.prefill_tokens_per_second,
            r.decode_tokens_per_second,
            human_bytes(l.stats.vram_bytes)
        );
    } else {
        let l = crate::run::load(&packed)?;
        let ids = crate::run::prompt_ids(&l, &a.prompt, false)?;
        let opts = GenerateOptions::greedy(&l.model, a.max_new_tokens);
        let (r, text) = crate::run::generate_text(&l, &ids, &opts, false)?;
        println!("  run      cpu: {:?} ->{:?}", a.prompt, text);
        println!(
            "  speed    load {:.2} s, prefill {:.1} tokens/s, decode {:.1} tokens/s; weights {} in memory",
            l.load_seconds,
            r.prefill_tokens_per_second,
            r.decode_tokens_per_second,
            human_bytes(l.weight_bytes)
        );
    }
    println!("  total    {:.1} s", t_all.elapsed().as_secs_f64());
    if !report.ok {
        return Err(Failure::Check(report.failures.join("; ")));
    }
    Ok(())
}
