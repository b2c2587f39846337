//! `cllm verify`: proves a container decodes bit-exactly to what was packed, and with `--against`,
//! compares it with its source folder.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use cllm_format::{quant, tensor, verify, Container, Limits};
use cllm_loader::hf::HfFolder;
use memmap2::Mmap;
use serde::Serialize;

use crate::progress::human_bytes;
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
    pub run_opts: crate::divergence::RunOptions,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

pub fn open_mmap(path: &Path) -> anyhow::Result<Mmap> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the map is read-only; a file changed underneath is caught by the checksums.
    unsafe { Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))
}

/// Opens a container; a malformed one is a verification failure (exit 1), naming the file.
pub fn open_container<'a>(path: &Path, bytes: &'a [u8]) -> Result<Container<'a>, Failure> {
    Container::open(bytes, &Limits::default())
        .map_err(|e| Failure::Check(format!("{}: {e}", path.display())))
}

/// Error figures of one quantized tensor against its source.
#[derive(Clone, Debug, Serialize)]
pub struct QuantError {
    pub name: String,
    pub codec: String,
    pub rel_rms: f64,
    pub max_abs: f64,
    pub sqnr_db: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct AgainstReport {
    pub dir: String,
    pub tensors_compared: usize,
    pub lossless_identical: usize,
    pub quantized_reproduced: usize,
    pub quantized: Vec<QuantError>,
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
    pub run: Option<crate::divergence::RunOutcome>,
}

pub fn error_figures(name: &str, codec: &str, source: &[f32], approx: &[f32]) -> QuantError {
    let (mut sig, mut noise, mut max_abs) = (0f64, 0f64, 0f64);
    for (&x, &y) in source.iter().zip(approx) {
        let d = (x as f64) - (y as f64);
        sig += (x as f64) * (x as f64);
        noise += d * d;
        max_abs = max_abs.max(d.abs());
    }
    QuantError {
        name: name.to_string(),
        codec: codec.to_string(),
        rel_rms: if sig > 0.0 { (noise / sig).sqrt() } else { 0.0 },
        max_abs,
        sqnr_db: if noise > 0.0 {
            10.0 * (sig / noise).log10()
        } else {
            f64::INFINITY
        },
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Compares every tensor with the source folder, appending failures.
pub fn compare_with_source(
    c: &Container<'_>,
    folder: &HfFolder,
    failures: &mut Vec<String>,
) -> anyhow::Result<AgainstReport> {
    let mut rep = AgainstReport {
        dir: folder.dir().display().to_string(),
        ..AgainstReport::default()
    };
    for (i, t) in c.tensors().iter().enumerate() {
        let Some(src) = folder.get(&t.name) else {
            failures.push(format!("tensor {}: not in the source folder", t.name));
            continue;
        };
        if src.dtype != t.dtype || src.shape != t.shape {
            failures.push(format!(
                "tensor {}: container has {} {:?}, source has {} {:?}",
                t.name, t.dtype, t.shape, src.dtype, src.shape
            ));
            continue;
        }
        rep.tensors_compared += 1;
        let codec = c.codec(i);
        let stored = match c.decode_tensor(i) {
            Ok(s) => s,
            Err(e) => {
                failures.push(e.to_string());
                continue;
            }
        };
        if codec.is_lossless() {
            if stored[0] == src.bytes {
                rep.lossless_identical += 1;
            } else {
                failures.push(format!(
                    "tensor {}: decoded bytes differ from the source at byte {}",
                    t.name,
                    first_difference(&stored[0], src.bytes)
                ));
            }
            continue;
        }
        let params = tensor::quant_params(&t.name, codec, t.dtype, &t.shape, src.bytes)?;
        let mut same = true;
        for (si, s) in stored.iter().enumerate() {
            let again = tensor::stream_range(t.dtype, &t.shape, &params, src.bytes, si, 0..s.len());
            if &again != s {
                same = false;
                failures.push(format!(
                    "tensor {}: re-quantizing the source does not reproduce stream '{}' (first difference at byte {})",
                    t.name,
                    t.streams[si].role,
                    first_difference(&again, s)
                ));
            }
        }
        if same {
            rep.quantized_reproduced += 1;
        }
        let mut orig = Vec::new();
        quant::to_f32(t.dtype, src.bytes, &mut orig);
        let approx = tensor::dequantize(codec, &t.shape, &stored);
        rep.quantized
            .push(error_figures(&t.name, &codec.to_string(), &orig, &approx));
    }
    for s in folder.tensors() {
        if c.find(s.name).is_none() {
            failures.push(format!(
                "tensor {}: in the source but not in the container",
                s.name
            ));
        }
    }
    Ok(rep)
}

/// Verifies a container, and compares it with its source folder when given.
pub fn build_report(path: &Path, against: Option<&Path>) -> Result<Report, Failure> {
    let start = Instant::now();
    let bytes = open_mmap(path)?;
    let c = open_container(path, &bytes)?;
    let r = verify(&c, 256 << 20);
    let mut failures = r.failures.clone();
    let against = match against {
        Some(dir) => {
            let folder = HfFolder::open(dir)?;
            Some(compare_with_source(&c, &folder, &mut failures)?)
        }
        None => None,
    };
    Ok(Report {
        file: path.display().to_string(),
        ok: failures.is_empty(),
        version: [c.framing.major, c.framing.minor],
        tensors: r.tensors,
        frames: r.frames,
        stored_bytes: r.stored_bytes,
        decoded_bytes: r.decoded_bytes,
        seconds: start.elapsed().as_secs_f64(),
        failures,
        against,
        mean_kld: None,
        top1_agreement: None,
        run: None,
    })
}

pub fn run(a: VerifyArgs) -> CmdResult {
    let flags = a.run_opts.run_only_flags();
    if !a.run && !flags.is_empty() {
        return Err(anyhow::anyhow!("{} need --run", flags.join(", ")).into());
    }
    if a.run {
        crate::divergence::set_run_threads(&a.run_opts)?;
        // Bad run options (a missing CUDA driver too) fail before the byte checks.
        a.run_opts.check()?;
    }
    let mut report = build_report(&a.file, a.against.as_deref())?;
    if let (true, Some(dir)) = (a.run, a.against.as_deref()) {
        // The run goes on when byte checks failed: it says how much that matters.
        let o = crate::divergence::run_pair(dir, &a.file, &a.run_opts)?;
        report.failures.extend(o.failures.iter().cloned());
        report.ok = report.failures.is_empty();
        report.mean_kld = Some(o.divergence.mean_kld);
        report.top1_agreement = Some(o.divergence.top1_agreement);
        report.run = Some(o);
    }
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
        crate::divergence::summary::print_run(o);
        if let Some(p) = o.report.as_deref() {
            println!("report: {p}");
        }
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
