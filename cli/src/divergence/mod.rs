//! `cllm verify --run` and `cllm diff`: the run's flags, and printing what
//! `cllm_runtime::divergence::compare` found (a terminal summary, JSON, an HTML report).

pub mod html;
pub mod summary;

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Args;
use cllm_loader::load_cpu;
use cllm_runtime::divergence::text::{read_prompts, EvalText};
use cllm_runtime::divergence::weights::{self, WeightDiff};
use cllm_runtime::divergence::{compare, RunOutcome, RunSpec};
use cllm_runtime::{Device, Engine, KvPrecision};
use serde::Serialize;

use crate::common::{parse_device, parse_kv_cache, set_threads};
use crate::progress::progress_line;
use crate::{CmdResult, Failure};

/// How a divergence run is made and judged (shared by `verify --run` and `diff --run`).
#[derive(Args, Clone, Debug)]
pub struct RunOptions {
    /// Backend both models run on: cpu or cuda. On cuda each layer's output error is measured
    /// but not each tensor's own (the weights are still compared tensor by tensor).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// More prompts, one per line, added to the built-in set.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Fail (exit 1) when the mean KL divergence, in nats, exceeds this.
    #[arg(long, value_name = "NATS")]
    pub max_kld: Option<f64>,
    /// Fail (exit 1) when the top-1 agreement, a fraction in [0, 1], is below this.
    #[arg(long, value_name = "FRACTION")]
    pub min_top1: Option<f64>,
    /// Write a self-contained HTML report (plots and tables) to this file.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Tokens each model generates greedily from each prompt.
    #[arg(long, default_value_t = 32)]
    pub gen_tokens: usize,
    /// Windows of the evaluation text: of the embedded one (the container specification), spread
    /// over it, default 4, 0 for none; of --eval-text, the first N (default: every one).
    #[arg(long, value_name = "N")]
    pub eval_windows: Option<usize>,
    /// Score the models on this UTF-8 text instead of the embedded one: tokenized whole and cut
    /// into consecutive windows of --window-tokens from its start, as llama-perplexity cuts its
    /// chunks (at most 64 MiB).
    #[arg(long, value_name = "FILE")]
    pub eval_text: Option<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 128)]
    pub window_tokens: usize,
    /// Leave out the built-in prompts.
    #[arg(long)]
    pub no_builtin_prompts: bool,
    /// Worker threads (default: all cores); results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// How the test model's KV cache stores keys and values: f32, bf16 or int8 (the reference's
    /// is f32, so `diff m.cllm m.cllm --run --kv-cache int8` measures the cache alone).
    #[arg(long, default_value = "f32", value_parser = parse_kv_cache, value_name = "f32|bf16|int8")]
    pub kv_cache: KvPrecision,
}

impl RunOptions {
    /// Options that only mean something with `--run`, by flag name, when set.
    pub fn run_only_flags(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.device != Device::Cpu {
            v.push("--device");
        }
        if self.prompts.is_some() {
            v.push("--prompts");
        }
        if self.eval_text.is_some() {
            v.push("--eval-text");
        }
        if self.max_kld.is_some() {
            v.push("--max-kld");
        }
        if self.min_top1.is_some() {
            v.push("--min-top1");
        }
        if self.report.is_some() {
            v.push("--report");
        }
        if self.kv_cache != KvPrecision::F32 {
            v.push("--kv-cache");
        }
        v
    }

    /// Sets the thread count, refuses bad options before anything is loaded or compared (a
    /// machine without a CUDA driver too), opens the device, and reads the prompts.
    pub fn prepare(&self) -> anyhow::Result<(Engine, RunSpec)> {
        set_threads(self.threads)?;
        if let Some(k) = self.max_kld {
            if k.is_nan() || k < 0.0 {
                bail!("--max-kld {k}: expected a non-negative number of nats");
            }
        }
        if let Some(t) = self.min_top1 {
            if !(0.0..=1.0).contains(&t) {
                bail!("--min-top1 {t}: expected a fraction between 0 and 1 (0.97 for 97%)");
            }
        }
        if self.no_builtin_prompts && self.prompts.is_none() && self.eval_windows == Some(0) {
            bail!("nothing to run: no built-in prompts, no --prompts and --eval-windows 0");
        }
        let eval_text = match &self.eval_text {
            Some(f) => EvalText::read(f, self.eval_windows)?,
            None => EvalText::Embedded {
                windows: self.eval_windows.unwrap_or(4),
            },
        };
        let engine = Engine::new(self.device)?;
        let prompts = match &self.prompts {
            Some(f) => read_prompts(f)?,
            None => Vec::new(),
        };
        let spec = RunSpec {
            prompts,
            builtin_prompts: !self.no_builtin_prompts,
            gen_tokens: self.gen_tokens,
            eval_text,
            window_tokens: self.window_tokens,
            max_kld: self.max_kld,
            min_top1: self.min_top1,
            kv_cache: self.kv_cache,
        };
        Ok((engine, spec))
    }
}

/// Writes the HTML report `--report` asks for, and records its path in the outcome.
pub fn write_report(o: &mut RunOutcome, opts: &RunOptions) -> anyhow::Result<()> {
    let Some(path) = &opts.report else {
        return Ok(());
    };
    o.report = Some(path.display().to_string());
    let page = html::render(o);
    crate::atomic::write_file(path, |w| {
        use std::io::Write;
        w.write_all(page.as_bytes())
            .map_err(|e| anyhow!("writing {}: {e}", path.display()))
    })
}

/// The terminal summary of a run, and where its HTML report went.
pub fn print_run_summary(o: &RunOutcome) {
    summary::print_run(o);
    if let Some(p) = &o.report {
        println!("report: {p}");
    }
}

/// Compare two models: their weights, and with `--run`, their outputs.
#[derive(Args)]
pub struct DiffArgs {
    /// The reference: a .cllm file or a Hugging Face folder.
    pub a: PathBuf,
    /// The model compared with it: a .cllm file or a Hugging Face folder.
    pub b: PathBuf,
    /// Run both models side by side (KL divergence, top-1, per-layer error, greedy continuations).
    #[arg(long)]
    pub run: bool,
    #[command(flatten)]
    pub opts: RunOptions,
    /// Print one JSON object with every figure.
    #[arg(long)]
    pub json: bool,
}

/// `cllm diff A B [--run ...]`.
#[derive(Serialize)]
struct DiffJson<'a> {
    reference: String,
    test: String,
    ok: bool,
    failures: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_kld: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top1_agreement: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weights: Option<&'a WeightDiff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<&'a RunOutcome>,
}

pub fn run_diff(a: DiffArgs) -> CmdResult {
    if !a.run {
        set_threads(a.opts.threads)?;
        let flags = a.opts.run_only_flags();
        if !flags.is_empty() {
            return Err(anyhow!("{} need --run", flags.join(", ")).into());
        }
        let (wa, wb) = (load_cpu(&a.a)?, load_cpu(&a.b)?);
        let d = weights::compare(&wa.weights, &wb.weights);
        let failures = d.structure_failures();
        if a.json {
            let j = DiffJson {
                reference: a.a.display().to_string(),
                test: a.b.display().to_string(),
                ok: failures.is_empty(),
                failures: failures.clone(),
                mean_kld: None,
                top1_agreement: None,
                weights: Some(&d),
                run: None,
            };
            println!("{}", serde_json::to_string_pretty(&j)?);
        } else {
            summary::print_weights(&a.a, &a.b, &d);
        }
        return if failures.is_empty() {
            Ok(())
        } else {
            Err(Failure::Check(format!(
                "{} and {} differ in structure: {}",
                a.a.display(),
                a.b.display(),
                failures[0]
            )))
        };
    }
    let (engine, spec) = a.opts.prepare()?;
    let (reference, test) = (load_cpu(&a.a)?, load_cpu(&a.b)?);
    let mut o = compare(&engine, reference, test, &spec, &mut progress_line())?;
    write_report(&mut o, &a.opts)?;
    if a.json {
        let j = DiffJson {
            reference: o.reference.clone(),
            test: o.test.clone(),
            ok: o.ok,
            failures: o.failures.clone(),
            mean_kld: Some(o.divergence.mean_kld),
            top1_agreement: Some(o.divergence.top1_agreement),
            weights: None,
            run: Some(&o),
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print_run_summary(&o);
    }
    check_outcome(&o)
}

/// Exit 1 with the first failure when the run failed.
fn check_outcome(o: &RunOutcome) -> CmdResult {
    if o.ok {
        Ok(())
    } else {
        Err(Failure::Check(format!(
            "{} against {}: {} check(s) failed; first: {}",
            o.test,
            o.reference,
            o.failures.len(),
            o.failures[0]
        )))
    }
}
