//! `cllm pack`: a Hugging Face folder in, a `.cllm` container out (or, with `--dry-run`, the plan).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use cllm_format::{
    pack, pack_sharded, policy::PolicyFile, project, Codec, PackInput, PackOptions, Policy, Preset,
    Rule,
};
use cllm_loader::hf::HfFolder;
use serde_json::json;

use crate::progress::{bytes_bar, human_bytes};
use crate::CmdResult;

/// Pack a Hugging Face model folder into a .cllm container.
#[derive(Args)]
pub struct PackArgs {
    /// The model folder: config.json, *.safetensors, tokenizer files. `synth:SHAPE` (e.g.
    /// `synth:llama-70b`) packs a synthetic model (`cllm synth`'s bf16 weights, seed 0) generated
    /// on the fly and never written out: for measuring packs larger than the disk.
    pub model_dir: PathBuf,
    /// The container to write (replaced atomically if it exists).
    #[arg(short, long, required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,
    /// Preset: lossless, mlp-only, attn-only or all-linear.
    #[arg(long)]
    pub policy: Option<String>,
    /// Quantization the preset uses: int8 (a scale per group of --group-size columns; format 1.1),
    /// int8-row (a scale per row; readable by format 1.0 readers), int4 (each group's min and
    /// range), int4m (int4 with each group's scale and min searched for least error; format
    /// 1.3; slower to pack) or int4s (int4m's parameters as 6-bit codes per super-block of 8
    /// groups; format 1.4; 4.5 bits per weight with --group-size 32).
    #[arg(long)]
    pub quant: Option<String>,
    /// Group size of int8, int4, int4m and int4s: 32, 64 or 128 columns (default 64). A tensor whose width it
    /// does not divide gets the largest smaller one that does (int8: per-row where none does).
    #[arg(long)]
    pub group_size: Option<u32>,
    /// Override PATTERN=CODEC (glob, or `re:` regex, over tensor names; the last match wins).
    /// Codecs: lossless, raw, zstd, zstd-bp, int8, int8-row, int8-g32, int8-g64, int8-g128, int4,
    /// int4-g32, int4-g64, int4-g128, int4m, int4m-g32, int4m-g64, int4m-g128, int4s, int4s-g32,
    /// int4s-g64, int4s-g128 (int8, int4, int4m and int4s alone use --group-size).
    #[arg(long = "rule", value_name = "PATTERN=CODEC")]
    pub rules: Vec<String>,
    /// Weight int4m's and int4s's search by each input column's activation energy, measured by
    /// running the source model on the CPU over a calibration text (spec section 4.7). The
    /// vectors are embedded (format 1.4), so `verify --against` re-derives every code.
    #[arg(long)]
    pub calibrate: bool,
    /// The calibration text, UTF-8 (default: a built-in text, the project's frozen design records,
    /// which is not the text `verify --run` scores).
    #[arg(long, value_name = "FILE", requires = "calibrate")]
    pub calib_text: Option<PathBuf>,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub calib_window_tokens: usize,
    /// At most N calibration windows (default: the whole text).
    #[arg(long, value_name = "N", requires = "calibrate")]
    pub calib_windows: Option<usize>,
    /// A TOML policy file (preset, quant, group_size, lossless, [[rule]] pattern/codec).
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// Accept rules that match no tensor.
    #[arg(long)]
    pub allow_unmatched: bool,
    /// Codec for tensors kept lossless: zstd-bp (default), zstd or raw.
    #[arg(long)]
    pub lossless: Option<String>,
    /// Print the resolved per-tensor plan and the projected size; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// zstd compression level.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// Cut the container into a shard set whose files are each at most SIZE (bytes, or with a
    /// unit: KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024), written as
    /// NAME-0000K-of-0000N.cllm beside --output (NAME is --output without .cllm).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_shard_size: Option<u64>,
    /// Largest decoded frame, in KiB.
    #[arg(long, default_value_t = 2048)]
    pub frame_kib: usize,
    /// Worker threads (default: all cores). The output is the same bytes for any count.
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

pub fn build_policy(a: &PackArgs) -> anyhow::Result<Policy> {
    let mut policy = Policy::default();
    if let Some(path) = &a.policy_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy file {}", path.display()))?;
        let file = PolicyFile::parse(&text).with_context(|| path.display().to_string())?;
        policy.apply_file(&file)?;
    }
    if let Some(p) = &a.policy {
        policy.preset = Preset::parse(p)?;
    }
    if let Some(q) = &a.quant {
        policy.quant = Policy::parse_quant(q)?;
    }
    if let Some(g) = a.group_size {
        policy.group_size = g;
    }
    if let Some(l) = &a.lossless {
        policy.lossless = Policy::parse_lossless(l)?;
    }
    for r in &a.rules {
        policy.rules.push(Rule::parse(r)?);
    }
    policy.allow_unmatched |= a.allow_unmatched;
    Ok(policy)
}

pub fn run(a: PackArgs) -> CmdResult {
    crate::common::set_threads(a.threads)?;
    if a.frame_kib == 0 || a.frame_kib > 65536 {
        return Err(anyhow::anyhow!("--frame-kib must be between 1 and 65536").into());
    }
    let policy = build_policy(&a)?;
    let mut opts = PackOptions {
        policy,
        frame_size: a.frame_kib * 1024,
        zstd_level: a.zstd_level,
        tool: format!("cllm {}", env!("CARGO_PKG_VERSION")),
        ..PackOptions::default()
    };
    #[cfg(feature = "synth")]
    if let Some(name) = a.model_dir.to_str().and_then(|s| s.strip_prefix("synth:")) {
        if a.calibrate {
            return Err(anyhow::anyhow!("--calibrate needs a model folder, not {name}").into());
        }
        let model = crate::synth::Generated::new(name)?;
        let fills = model.fills();
        return pack_input(&a, &model.pack_input(&fills), &opts);
    }
    let folder = HfFolder::open(&a.model_dir)?;
    let input = folder.pack_input();
    if a.calibrate {
        opts.importance = Some(std::sync::Arc::new(calibrate(&a, &input, &opts)?));
    }
    pack_input(&a, &input, &opts)
}

/// `--calibrate`: the importance vectors of the tensors the policy packs with a searched fit,
/// from the source model run on the CPU over the calibration text.
fn calibrate(
    a: &PackArgs,
    input: &PackInput<'_>,
    opts: &PackOptions,
) -> anyhow::Result<cllm_format::importance::Importance> {
    use cllm_runtime::calibrate::{importance, CALIBRATION_TEXT};
    use cllm_runtime::divergence::text::EvalText;
    let keys: Vec<_> = input
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))
        .collect();
    let codecs = opts.policy.resolve(&keys)?;
    let searched: Vec<&str> = keys
        .iter()
        .zip(&codecs)
        .filter(|(_, c)| c.is_searched())
        .map(|(k, _)| k.0)
        .collect();
    if searched.is_empty() {
        anyhow::bail!(
            "--calibrate weights the search of int4m and int4s, and this policy packs no tensor \
             with either (add --quant int4s or int4m)"
        );
    }
    if a.calib_window_tokens < 2 {
        anyhow::bail!(
            "--calib-window-tokens {}: a window needs at least 2 tokens",
            a.calib_window_tokens
        );
    }
    let text = match &a.calib_text {
        Some(p) => EvalText::read(p, a.calib_windows)?,
        None => EvalText::File {
            path: PathBuf::from("the built-in calibration text"),
            text: CALIBRATION_TEXT.to_string(),
            max_windows: a.calib_windows,
        },
    };
    let model = cllm_runtime::Engine::cpu()
        .open(&a.model_dir, &cllm_runtime::OpenOptions::default())
        .with_context(|| format!("opening {} to calibrate", a.model_dir.display()))?;
    let tok = model.tokenizer().ok_or_else(|| {
        anyhow::anyhow!("--calibrate: {} has no tokenizer", a.model_dir.display())
    })?;
    let windows = text.windows(tok, a.calib_window_tokens)?;
    let positions: usize = windows.iter().map(Vec::len).sum();
    if !a.quiet {
        eprintln!(
            "calibrating on {} ({} windows, {positions} positions) on the CPU",
            text.source(),
            windows.len()
        );
    }
    let lm_head = searched.iter().any(|n| *n == "lm_head.weight");
    let vectors = importance(model.backend(), &windows, lm_head)
        .map_err(|e| anyhow::anyhow!("calibration run: {e}"))?;
    if let Some(missing) = searched.iter().find(|n| !vectors.contains_key(**n)) {
        anyhow::bail!("--calibrate: the run gave no importance vector for {missing}");
    }
    let text_bytes = match &text {
        EvalText::File { text, .. } => text.as_bytes(),
        EvalText::Embedded { .. } => unreachable!("calibration texts are files or built in"),
    };
    let about = [
        ("text", text.source()),
        (
            "text_xxh3",
            format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text_bytes)),
        ),
        ("windows", windows.len().to_string()),
        ("window_tokens", a.calib_window_tokens.to_string()),
        ("positions", positions.to_string()),
        ("device", "cpu".into()),
        (
            "weight",
            "mean of x^2 over the positions, per input column".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(cllm_format::importance::Importance { vectors, about })
}

/// Packs `input` as the flags say: the plan (`--dry-run`), a shard set or one container.
fn pack_input(a: &PackArgs, input: &PackInput<'_>, opts: &PackOptions) -> CmdResult {
    let (input, opts) = (input, opts);
    if a.dry_run {
        return dry_run(input, opts, a.json);
    }
    let out = a
        .output
        .clone()
        .expect("clap requires --output without --dry-run");
    let start = Instant::now();
    if let Some(max) = a.max_shard_size {
        return pack_set(a, input, opts, &out, max, start);
    }
    let summary = pack_to_file(input, opts, &out, a.quiet)
        .with_context(|| format!("packing {}", a.model_dir.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let ratio = summary.source_bytes as f64 / summary.file_len as f64;
    let quantized = summary
        .index
        .tensors
        .iter()
        .filter(|t| Codec::from_id(&t.codec, t.group_size).is_some_and(|c| !c.is_lossless()))
        .count();
    if a.json {
        println!(
            "{}",
            json!({
                "output": out.display().to_string(),
                "tensors": summary.index.tensors.len(),
                "quantized_tensors": quantized,
                "source_bytes": summary.source_bytes,
                "file_bytes": summary.file_len,
                "ratio": ratio,
                "seconds": secs,
                "policy": summary.index.policy,
            })
        );
    } else {
        println!(
            "packed {} tensors ({} quantized) from {}: {} -> {} (ratio {:.3}) in {:.2} s -> {}",
            summary.index.tensors.len(),
            quantized,
            a.model_dir.display(),
            human_bytes(summary.source_bytes),
            human_bytes(summary.file_len),
            ratio,
            secs,
            out.display()
        );
    }
    Ok(())
}

/// `--max-shard-size`: `2GB`, `500MiB`, `1048576`...
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit '{other}' (KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 2GB or 500MiB"))?;
    let bytes = value * mult as f64;
    if !(bytes >= 1.0 && bytes < 1.8e19) {
        return Err(format!("size '{s}' out of range"));
    }
    Ok(bytes as u64)
}

/// `NAME` of `--output NAME.cllm`, the shards' common prefix.
fn shard_stem(out: &std::path::Path) -> anyhow::Result<String> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file path", out.display()))?
        .to_string_lossy()
        .into_owned();
    let stem = name.strip_suffix(".cllm").unwrap_or(&name).to_string();
    anyhow::ensure!(!stem.is_empty(), "{}: empty shard name", out.display());
    Ok(stem)
}

/// Packs a shard set atomically (no shard under a final name until every one is written and
/// synced) and reports it.
fn pack_set(
    a: &PackArgs,
    input: &PackInput<'_>,
    opts: &PackOptions,
    out: &std::path::Path,
    max: u64,
    start: Instant,
) -> CmdResult {
    let stem = shard_stem(out)?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let total: u64 = input.tensors.iter().map(|t| t.bytes.len() as u64).sum();
    let bar = bytes_bar(
        total,
        a.quiet,
        "{spinner} packing [{bar:30}] {bytes}/{total_bytes} {msg} eta {eta}",
    );
    let (summaries, paths) = crate::atomic::write_file_set(
        &dir,
        &stem,
        |k, n| cllm_format::shard::shard_file_name(&stem, k, n),
        |create| {
            let shards = pack_sharded(input, opts, max, create, &mut |p| {
                bar.set_position(p.source_done);
                bar.set_message(format!("{} written", human_bytes(p.written)));
            })
            .with_context(|| format!("packing {}", a.model_dir.display()))?;
            let mut summaries = Vec::with_capacity(shards.len());
            for (mut w, s) in shards {
                w.flush()?;
                summaries.push(s);
            }
            Ok(summaries)
        },
    )?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let source: u64 = summaries.iter().map(|s| s.source_bytes).sum();
    let written: u64 = summaries.iter().map(|s| s.file_len).sum();
    let tensors: usize = summaries.iter().map(|s| s.index.tensors.len()).sum();
    let id = summaries[0]
        .index
        .set
        .as_ref()
        .map(|s| s.id.clone())
        .unwrap_or_default();
    if a.json {
        let shards: Vec<_> = paths
            .iter()
            .zip(&summaries)
            .map(|(p, s)| json!({"path": p.display().to_string(), "bytes": s.file_len, "tensors": s.index.tensors.len()}))
            .collect();
        println!(
            "{}",
            json!({
                "output": paths[0].display().to_string(),
                "set": id,
                "shards": shards,
                "tensors": tensors,
                "source_bytes": source,
                "file_bytes": written,
                "ratio": source as f64 / written as f64,
                "seconds": secs,
                "policy": summaries[0].index.policy,
            })
        );
    } else {
        for (p, s) in paths.iter().zip(&summaries) {
            println!(
                "  {} ({} tensors, {})",
                p.display(),
                s.index.tensors.len(),
                human_bytes(s.file_len)
            );
        }
        println!(
            "packed {} tensors from {} into {} shards: {} -> {} (ratio {:.3}) in {:.2} s; set {}",
            tensors,
            a.model_dir.display(),
            paths.len(),
            human_bytes(source),
            human_bytes(written),
            source as f64 / written as f64,
            secs,
            id
        );
    }
    Ok(())
}

/// Packs into `out` atomically, with a progress bar unless `quiet`.
pub fn pack_to_file(
    input: &PackInput<'_>,
    opts: &PackOptions,
    out: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<cllm_format::PackSummary> {
    let total: u64 = input.tensors.iter().map(|t| t.bytes.len() as u64).sum();
    let bar = bytes_bar(
        total,
        quiet,
        "{spinner} packing [{bar:30}] {bytes}/{total_bytes} {msg} eta {eta}",
    );
    let summary = crate::atomic::write_file(out, |w| {
        Ok(pack(input, opts, w, &mut |p| {
            bar.set_position(p.source_done);
            if p.written > 0 {
                bar.set_message(format!(
                    "ratio {:.3}",
                    p.source_done as f64 / p.written as f64
                ));
            }
        })?)
    })?;
    bar.finish_and_clear();
    Ok(summary)
}

fn dry_run(input: &PackInput<'_>, opts: &PackOptions, as_json: bool) -> CmdResult {
    let plan = project(input, opts)?;
    let source: u64 = plan.iter().map(|p| p.source_bytes).sum();
    let projected: u64 = plan.iter().map(|p| p.projected_bytes).sum();
    if as_json {
        let tensors: Vec<_> = plan
            .iter()
            .map(|p| {
                json!({
                    "name": p.name, "dtype": p.dtype, "shape": p.shape, "codec": p.codec.id(),
                    "group_size": p.codec.group_size(), "source_bytes": p.source_bytes,
                    "payload_bytes": p.payload_bytes, "projected_bytes": p.projected_bytes,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"policy": opts.policy.record(), "tensors": tensors,
                   "source_bytes": source, "projected_bytes": projected,
                   "projected_ratio": source as f64 / projected.max(1) as f64})
        );
        return Ok(());
    }
    println!(
        "{:<52} {:>10} {:>5} {:>16} {:>11} {:>11}",
        "tensor", "codec", "dtype", "shape", "source", "projected"
    );
    for p in &plan {
        println!(
            "{:<52} {:>10} {:>5} {:>16} {:>11} {:>11}",
            p.name,
            p.codec.to_string(),
            p.dtype.name(),
            format!("{:?}", p.shape),
            human_bytes(p.source_bytes),
            human_bytes(p.projected_bytes)
        );
    }
    println!(
        "{} tensors: {} -> about {} (projected ratio {:.3}); nothing written (--dry-run)",
        plan.len(),
        human_bytes(source),
        human_bytes(projected),
        source as f64 / projected.max(1) as f64
    );
    Ok(())
}
