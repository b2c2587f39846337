//! `cllm verify`: proves a container decodes bit-exactly to what was packed, and with `--against`,
//! compares it with its source folder (`cllm_loader::verify`); with `--run`, runs both models
//! side by side on the bytes it verified (`cllm_runtime::divergence`).

use std::path::{Path, PathBuf};

use clap::Args;
use cllm_loader::load_cpu;
use cllm_loader::verify::{verify_and_load, verify_file, AgainstReport, Verification, VerifyError};
use cllm_runtime::divergence::{compare, RunOutcome};
use serde::Serialize;

use crate::divergence::{print_run_summary, write_report, RunOptions};
use crate::progress::{human_bytes, progress_line};
use crate::{CmdResult, Failure};

/// Verify every byte of a container; optionally compare it with its source model.
#[derive(Args)]
pub struct VerifyArgs {
    /// The .cllm file.
    pub file: PathBuf,
    /// The Hugging Face folder it was packed from: lossless tensors must be byte-identical,
    /// quantized ones must re-quantize to the same payload.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Also run both models side by side (needs --against) and report where, and how much,
    /// the container's outputs depart from the source's: KL divergence, top-1 agreement,
    /// per-layer and (on --device cpu) per-tensor error, greedy continuations, KV-cache parity.
    #[arg(long, requires = "against")]
    pub run: bool,
    #[command(flatten)]
    pub run_opts: RunOptions,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    pub ok: bool,
    pub version: [u16; 2],
    pub tensors: usize,
    pub frames: usize,
    pub stored_bytes: u64,
    pub decoded_bytes: u64,
    pub seconds: f64,
    pub failures: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<AgainstReport>,
    /// With `--run`: the headline figures, and every figure under `run`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_kld: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunOutcome>,
}

impl Report {
    fn new(path: &Path, v: Verification) -> Report {
        let failures = v.failures().to_vec();
        Report {
            file: path.display().to_string(),
            ok: failures.is_empty(),
            version: v.version,
            tensors: v.bytes.tensors,
            frames: v.bytes.frames,
            stored_bytes: v.bytes.stored_bytes,
            decoded_bytes: v.bytes.decoded_bytes,
            seconds: v.seconds,
            failures,
            against: v.against,
            mean_kld: None,
            top1_agreement: None,
            run: None,
        }
    }
}

/// A malformed container is a verification failure (exit 1), naming the file; anything else
/// that stops verification is a usage or I/O error (exit 2).
fn failure(e: VerifyError) -> Failure {
    match e {
        VerifyError::Malformed { .. } => Failure::Check(e.to_string()),
        other => Failure::Error(other.into()),
    }
}

/// Verifies a container, and compares it with its source folder when given.
pub fn build_report(path: &Path, against: Option<&Path>) -> Result<Report, Failure> {
    let v = verify_file(path, against).map_err(failure)?;
    Ok(Report::new(path, v))
}

pub fn run(a: VerifyArgs) -> CmdResult {
    let flags = a.run_opts.run_only_flags();
    if !a.run && !flags.is_empty() {
        return Err(anyhow::anyhow!("{} need --run", flags.join(", ")).into());
    }
    if let Some(dir) = a.against.as_deref() {
        if cllm_export::compressed_tensors::is_export(dir) {
            return against_compressed_tensors(&a, dir);
        }
    }
    let report = match (a.run, a.against.as_deref()) {
        (true, Some(dir)) => run_against(&a, dir)?,
        _ => build_report(&a.file, a.against.as_deref())?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure::Check(format!(
            "{}: {} problem(s); first: {}",
            report.file,
            report.failures.len(),
            report.failures[0]
        )))
    }
}

/// `--against` a folder written by `cllm export --to compressed-tensors`: the container's own
/// checks, then every packed code, scale, zero point and lossless tensor of the folder against
/// the container's streams, bit for bit (`cllm_export::compressed_tensors::verify_against`).
fn against_compressed_tensors(a: &VerifyArgs, dir: &Path) -> CmdResult {
    if a.run {
        return Err(anyhow::anyhow!(
            "--run needs --against a float Hugging Face folder; {} is a compressed-tensors export",
            dir.display()
        )
        .into());
    }
    let mut report = build_report(&a.file, None)?;
    let packed = cllm_loader::Packed::open(&a.file)?;
    let ct = cllm_export::compressed_tensors::verify_against(&packed, dir)
        .map_err(|e| Failure::Error(e.into()))?;
    report.failures.extend(ct.failures.iter().cloned());
    report.ok = report.failures.is_empty();
    if a.json {
        let v = serde_json::json!({ "container": &report, "compressed_tensors": &ct });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "against {} (compressed-tensors export): {} tensors compared, {} lossless byte-identical, {} quantized bit-identical (codes, scales, zero points), {} files identical",
            ct.dir, ct.tensors_compared, ct.lossless_identical, ct.quantized_identical, ct.files_identical
        );
        print_report(&report);
    }
    match report.failures.first() {
        None => Ok(()),
        Some(first) => Err(Failure::Check(format!(
            "{}: {} problem(s); first: {first}",
            report.file,
            report.failures.len()
        ))),
    }
}

/// `verify --against DIR --run`: each tensor decoded once, checked, compared with the source and
/// kept; then both models run side by side. The run goes on when byte checks failed (it says how
/// much that matters), unless a tensor could not be decoded at all.
fn run_against(a: &VerifyArgs, dir: &Path) -> Result<Report, Failure> {
    // Bad run options (a missing CUDA driver too) fail before the byte checks.
    let (engine, spec) = a.run_opts.prepare()?;
    let (v, test) = verify_and_load(&a.file, dir).map_err(failure)?;
    let mut report = Report::new(&a.file, v);
    let Some(test) = test else {
        report.failures.push(format!(
            "{}: not run: a tensor could not be decoded",
            a.file.display()
        ));
        report.ok = false;
        return Ok(report);
    };
    let reference = load_cpu(dir)?;
    let mut o = compare(&engine, reference, test, &spec, &mut progress_line())?;
    write_report(&mut o, &a.run_opts)?;
    report.failures.extend(o.failures.iter().cloned());
    report.ok = report.failures.is_empty();
    report.mean_kld = Some(o.divergence.mean_kld);
    report.top1_agreement = Some(o.divergence.top1_agreement);
    report.run = Some(o);
    Ok(report)
}

fn print_report(r: &Report) {
    println!(
        "{}: format {}.{}, {} tensors, {} frames, {} stored -> {} decoded in {:.2} s",
        r.file,
        r.version[0],
        r.version[1],
        r.tensors,
        r.frames,
        human_bytes(r.stored_bytes),
        human_bytes(r.decoded_bytes),
        r.seconds
    );
    if let Some(ag) = &r.against {
        println!(
            "against {}: {} tensors compared, {} lossless byte-identical, {} quantized re-quantize bit-exactly",
            ag.dir, ag.tensors_compared, ag.lossless_identical, ag.quantized_reproduced
        );
        if !ag.quantized.is_empty() {
            let mut worst = ag.quantized.clone();
            worst.sort_by(|a, b| b.rel_rms.total_cmp(&a.rel_rms));
            println!(
                "{:<52} {:>10} {:>9} {:>10} {:>8}",
                "quantized tensor (worst first)", "codec", "rel RMS", "max abs", "SQNR dB"
            );
            for q in worst.iter().take(8) {
                println!(
                    "{:<52} {:>10} {:>9.5} {:>10.3e} {:>8.2}",
                    q.name, q.codec, q.rel_rms, q.max_abs, q.sqnr_db
                );
            }
            if worst.len() > 8 {
                println!("... {} more (--json lists all)", worst.len() - 8);
            }
        }
    }
    // The run's failures come last and are printed with its summary.
    let own = r.failures.len() - r.run.as_ref().map_or(0, |o| o.failures.len());
    for f in r.failures[..own].iter().take(20) {
        println!("FAIL {f}");
    }
    if own > 20 {
        println!("... {} more failures (--json lists all)", own - 20);
    }
    if let Some(o) = &r.run {
        println!();
        print_run_summary(o);
    }
    println!(
        "{}",
        if r.ok {
            "OK: every check holds"
        } else {
            "FAILED"
        }
    );
}
