//! `cllm verify --run` and `cllm diff`: run a reference and a test model side by side and say
//! where, and how much, the test departs from the reference (the measuring is
//! `cllm_runtime::divergence`; this module loads, chooses the token streams, judges and reports).

pub mod html;
pub mod summary;
pub mod text;
pub mod weights;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use cllm_kernels::cuda::Gpu;
use cllm_loader::{load_cpu, LoadedModel};
use cllm_runtime::divergence::{measure, Backend, Criteria, DivergenceReport, Plan};
use cllm_runtime::{LlamaConfig, Model, Tokenizer};
use serde::Serialize;

use crate::run::{load_on_gpu, open_gpu, set_threads, GpuLoaded};
use crate::verify::{open_container, open_mmap};
use crate::{CmdResult, Failure};
use weights::WeightDiff;

/// How a divergence run is made and judged (shared by `verify --run` and `diff --run`).
#[derive(Args, Clone, Debug)]
pub struct RunOptions {
    /// Backend both models run on: cpu or cuda. On cuda each layer's output error is measured
    /// but not each tensor's own (the weights are still compared tensor by tensor).
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    /// Windows of the embedded evaluation text (the container specification); 0 for none.
    #[arg(long, default_value_t = 4)]
    pub eval_windows: usize,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 128)]
    pub window_tokens: usize,
    /// Leave out the built-in prompts.
    #[arg(long)]
    pub no_builtin_prompts: bool,
    /// Worker threads (default: all cores); results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
}

impl RunOptions {
    /// Options that only mean something with `--run`, by flag name, when set.
    pub fn run_only_flags(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.device != "cpu" {
            v.push("--device");
        }
        if self.prompts.is_some() {
            v.push("--prompts");
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
        v
    }

    /// Refuses bad options before anything is loaded or compared: also `--device cuda` on a
    /// machine without a CUDA driver (`run_pair` opens the GPU itself).
    pub fn check(&self) -> anyhow::Result<()> {
        match self.device.as_str() {
            "cpu" => {}
            // Only the driver's presence here: opening the GPU compiles its kernels.
            "cuda" if !Gpu::driver_present() => {
                open_gpu()?;
            }
            "cuda" => {}
            other => bail!("--device {other}: expected cpu or cuda"),
        }
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
        if self.no_builtin_prompts && self.prompts.is_none() && self.eval_windows == 0 {
            bail!("nothing to run: no built-in prompts, no --prompts and --eval-windows 0");
        }
        Ok(())
    }
}

/// Sets the global thread count from `--threads`; must run before anything uses rayon.
pub fn set_run_threads(opts: &RunOptions) -> anyhow::Result<()> {
    set_threads(opts.threads)
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

/// Whether both sides are lossless, and so must give bit-identical logits.
#[derive(Clone, Debug, Serialize)]
pub struct Lossless {
    pub reference: bool,
    pub test: bool,
    pub logits_must_be_identical: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CriteriaJson {
    pub max_kld: Option<f64>,
    pub min_top1: Option<f64>,
    pub logits_must_be_identical: bool,
    pub kv_cache_must_be_identical: bool,
}

/// A greedy pair as text: the shared part and where each continuation goes from there.
#[derive(Clone, Debug, Serialize)]
pub struct GreedyText {
    pub prompt: String,
    pub first_divergence: Option<usize>,
    pub generated: usize,
    pub shared: String,
    pub reference: String,
    pub test: String,
}

/// Everything a divergence run produced, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct RunOutcome {
    pub reference: String,
    pub test: String,
    pub device: String,
    /// The GPU's name, with `--device cuda`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// What this run did not measure, and why, one sentence each.
    pub notes: Vec<String>,
    pub ok: bool,
    pub failures: Vec<String>,
    pub lossless: Lossless,
    pub criteria: CriteriaJson,
    pub prompts: Vec<String>,
    pub eval_windows: usize,
    pub window_tokens: usize,
    pub gen_tokens: usize,
    pub greedy_text: Vec<GreedyText>,
    pub weights: WeightDiff,
    pub divergence: DivergenceReport,
    /// Wall time including loading both models.
    pub seconds: f64,
    /// The HTML report written, if any.
    pub report: Option<String>,
}

/// Whether every tensor of the model at `path` is stored losslessly (a folder always is).
fn is_lossless(path: &Path) -> Result<bool, Failure> {
    if path.is_dir() {
        return Ok(true);
    }
    let bytes = open_mmap(path)?;
    let c = open_container(path, &bytes)?;
    Ok((0..c.tensors().len()).all(|i| c.codec(i).is_lossless()))
}

fn load_weights(path: &Path) -> anyhow::Result<LoadedModel> {
    load_cpu(path).with_context(|| format!("loading {}", path.display()))
}

fn build_model(path: &Path, m: LoadedModel) -> anyhow::Result<(Model, Option<Tokenizer>)> {
    let config = std::str::from_utf8(&m.files.config_json)
        .with_context(|| format!("{}: config.json is not UTF-8", path.display()))?;
    let cfg = LlamaConfig::from_json(config)
        .with_context(|| format!("{}: config.json", path.display()))?;
    let tok = match m.files.tokenizer_json.as_deref() {
        Some(t) => Some(
            Tokenizer::from_bytes(t)
                .with_context(|| format!("{}: tokenizer.json", path.display()))?,
        ),
        None => None,
    };
    let model = Model::new(cfg, m.weights).with_context(|| format!("{}", path.display()))?;
    Ok((model, tok))
}

/// Both models, on the backend `--device` names (boxed: the variants differ much in size).
enum Models {
    Cpu(Box<Model>, Box<Model>),
    Gpu(Box<GpuLoaded>, Box<GpuLoaded>),
}

impl Models {
    fn backends(&self) -> (&dyn Backend, &dyn Backend) {
        match self {
            Models::Cpu(r, t) => (r.as_ref(), t.as_ref()),
            Models::Gpu(r, t) => (&r.model, &t.model),
        }
    }
}

/// Loads both models for the run: on the CPU from the weights already decoded, or onto `gpu`
/// (the decoded copies are dropped first: the GPU loader streams the files itself). Returns the
/// models and the tokenizer (the reference's, else the test's).
fn load_models(
    reference: (&Path, LoadedModel),
    test: (&Path, LoadedModel),
    gpu: Option<&Arc<Gpu>>,
) -> anyhow::Result<(Models, Tokenizer)> {
    let ((rp, rw), (tp, tw)) = (reference, test);
    let (models, ref_tok, test_tok) = match gpu {
        None => {
            let (r, rt) = build_model(rp, rw)?;
            let (t, tt) = build_model(tp, tw)?;
            (Models::Cpu(Box::new(r), Box::new(t)), rt, tt)
        }
        Some(gpu) => {
            drop((rw, tw));
            let mut r = load_on_gpu(gpu, rp, false, false)?;
            let mut t = load_on_gpu(gpu, tp, false, false)?;
            let (rt, tt) = (r.tokenizer.take(), t.tokenizer.take());
            (Models::Gpu(Box::new(r), Box::new(t)), rt, tt)
        }
    };
    let tok = ref_tok.or(test_tok).ok_or_else(|| {
        anyhow!(
            "neither {} nor {} has a tokenizer.json",
            rp.display(),
            tp.display()
        )
    })?;
    Ok((models, tok))
}

/// Progress on stderr, on one overwritten line, only when stderr is a terminal.
fn progress_line() -> impl FnMut(&str) {
    let tty = std::io::stderr().is_terminal();
    move |msg: &str| {
        if tty {
            eprint!("\r\x1b[2K{msg}");
        }
    }
}

fn greedy_texts(
    tok: &Tokenizer,
    prompts: &[String],
    r: &DivergenceReport,
) -> anyhow::Result<Vec<GreedyText>> {
    let dec = |ids: &[u32]| tok.decode(ids, false).context("decoding a continuation");
    r.greedy
        .iter()
        .zip(prompts)
        .map(|(g, p)| {
            let d = g.first_divergence.unwrap_or(g.reference.len());
            let d_ref = d.min(g.reference.len());
            Ok(GreedyText {
                prompt: p.clone(),
                first_divergence: g.first_divergence,
                generated: g.reference.len(),
                shared: dec(&g.reference[..d_ref])?,
                reference: dec(&g.reference[d_ref..])?,
                test: dec(&g.test[d.min(g.test.len())..])?,
            })
        })
        .collect()
}

/// Runs `test` against `reference` as `opts` says; `Err` only for usage and I/O errors.
/// The caller sets the thread count first ([`set_run_threads`]), before any parallel work.
pub fn run_pair(reference: &Path, test: &Path, opts: &RunOptions) -> Result<RunOutcome, Failure> {
    let start = Instant::now();
    opts.check()?;
    // A machine without a GPU is told so before anything is loaded.
    let gpu = match opts.device.as_str() {
        "cuda" => Some(open_gpu()?),
        _ => None,
    };
    let lossless_ref = is_lossless(reference)?;
    let lossless_test = is_lossless(test)?;
    // The weights are compared on the CPU whatever the device.
    let (wa, wb) = (load_weights(reference)?, load_weights(test)?);
    let weights = weights::compare(&wa.weights, &wb.weights);
    let (models, tok) = load_models((reference, wa), (test, wb), gpu.as_ref())?;
    let (ref_model, test_model) = models.backends();

    let mut prompts: Vec<String> = Vec::new();
    if !opts.no_builtin_prompts {
        prompts.extend(text::BUILTIN_PROMPTS.iter().map(|p| p.to_string()));
    }
    if let Some(f) = &opts.prompts {
        prompts.extend(text::read_prompts(f)?);
    }
    let eval_ids = tok
        .encode(text::EVAL_TEXT)
        .context("tokenizing the evaluation text")?;
    let windows = text::windows(&eval_ids, opts.eval_windows, opts.window_tokens);
    let plan = Plan {
        prompts: text::encode_prompts(&tok, &prompts)?,
        windows,
        gen_tokens: opts.gen_tokens,
        eos: ref_model.config().eos_token_ids.clone(),
    };
    let mut progress = progress_line();
    let report = measure(ref_model, test_model, &plan, &mut progress)
        .map_err(|e| anyhow!("{} against {}: {e}", test.display(), reference.display()))?;
    progress("");

    let must_identical = lossless_ref && lossless_test;
    let criteria = Criteria {
        max_kld: opts.max_kld,
        min_top1: opts.min_top1,
        require_identical: must_identical,
    };
    let failures = report.failures(&criteria);
    let mut notes = Vec::new();
    if !report.tensor_attribution {
        notes.push(format!(
            "per-tensor attribution was not measured: the {} backend traces only each decoder \
             layer's output, so the error is placed by layer (and the weights are compared \
             tensor by tensor); --device cpu names the tensor that adds it",
            opts.device
        ));
    }
    let outcome = RunOutcome {
        reference: reference.display().to_string(),
        test: test.display().to_string(),
        device: opts.device.clone(),
        gpu: gpu.as_ref().map(|g| g.info().name.clone()),
        notes,
        ok: failures.is_empty(),
        failures,
        lossless: Lossless {
            reference: lossless_ref,
            test: lossless_test,
            logits_must_be_identical: must_identical,
        },
        criteria: CriteriaJson {
            max_kld: opts.max_kld,
            min_top1: opts.min_top1,
            logits_must_be_identical: must_identical,
            kv_cache_must_be_identical: true,
        },
        greedy_text: greedy_texts(&tok, &prompts, &report)?,
        prompts,
        eval_windows: plan.windows.len(),
        window_tokens: opts.window_tokens,
        gen_tokens: opts.gen_tokens,
        weights,
        divergence: report,
        seconds: 0.0,
        report: opts.report.as_ref().map(|p| p.display().to_string()),
    };
    let mut outcome = outcome;
    outcome.seconds = start.elapsed().as_secs_f64();
    if let Some(path) = &opts.report {
        let page = html::render(&outcome);
        crate::atomic::write_file(path, |w| {
            use std::io::Write;
            w.write_all(page.as_bytes())
                .with_context(|| format!("writing {}", path.display()))
        })?;
    }
    Ok(outcome)
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
    set_run_threads(&a.opts)?;
    if !a.run {
        let flags = a.opts.run_only_flags();
        if !flags.is_empty() {
            return Err(anyhow!("{} need --run", flags.join(", ")).into());
        }
        let (wa, wb) = (load_weights(&a.a)?, load_weights(&a.b)?);
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
    let o = run_pair(&a.a, &a.b, &a.opts)?;
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
        summary::print_run(&o);
        if let Some(p) = &o.report {
            println!("report: {p}");
        }
    }
    check_outcome(&o)
}

/// Exit 1 with the first failure when the run failed.
pub fn check_outcome(o: &RunOutcome) -> CmdResult {
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
