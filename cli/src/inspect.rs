//! `cllm inspect`: what a container holds, per tensor and in total, read from its index (and, for
//! a calibrated container, its importance vectors' record).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use cllm_format::index::TensorEntry;
use serde_json::json;

use crate::progress::human_bytes;
use crate::CmdResult;

/// Show a container's header, provenance, policy and per-tensor codecs and sizes.
#[derive(Args)]
pub struct InspectArgs {
    /// The .cllm file, a shard set's first shard, or a pattern matching a set's shards.
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Totals {
    tensors: usize,
    raw: u64,
    stored: u64,
}

fn codec_label(t: &TensorEntry) -> String {
    match t.group_size {
        Some(g) => format!("{}/g{g}", t.codec),
        None => t.codec.clone(),
    }
}

pub fn run(a: InspectArgs) -> CmdResult {
    let packed = crate::common::open_packed(&a.file)?;
    let c = &packed.shards()[0].container;
    let idx = packed.index();
    let calibration = packed.importance()?;
    let all: Vec<&TensorEntry> = packed.tensors().collect();
    let mut by_codec: BTreeMap<String, Totals> = BTreeMap::new();
    for t in &all {
        let e = by_codec.entry(codec_label(t)).or_default();
        e.tensors += 1;
        e.raw += t.raw_bytes();
        e.stored += t.stored_bytes();
    }
    let raw: u64 = by_codec.values().map(|t| t.raw).sum();
    let stored: u64 = by_codec.values().map(|t| t.stored).sum();
    let file_len: u64 = packed
        .shards()
        .iter()
        .map(|s| s.container.bytes().len() as u64)
        .sum();
    let shards: Vec<_> = packed
        .shards()
        .iter()
        .map(|s| {
            (
                s.path.display().to_string(),
                s.container.bytes().len() as u64,
                s.container.tensors().len(),
            )
        })
        .collect();
    let ratio = |r: u64, s: u64| if s == 0 { 0.0 } else { r as f64 / s as f64 };
    if a.json {
        let tensors: Vec<_> = all
            .iter()
            .map(|t| {
                json!({
                    "name": t.name, "dtype": t.dtype, "shape": t.shape, "codec": t.codec,
                    "group_size": t.group_size, "raw_bytes": t.raw_bytes(),
                    "payload_bytes": t.payload_bytes(), "stored_bytes": t.stored_bytes(),
                    "ratio": ratio(t.raw_bytes(), t.stored_bytes()),
                    "frames": t.streams.iter().map(|s| s.frames.len()).sum::<usize>(),
                    "source_xxh3": t.source_xxh3,
                })
            })
            .collect();
        let codecs: BTreeMap<_, _> = by_codec
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    json!({"tensors": v.tensors, "raw_bytes": v.raw,
                                   "stored_bytes": v.stored, "ratio": ratio(v.raw, v.stored)}),
                )
            })
            .collect();
        let files: Vec<_> = idx
            .files
            .iter()
            .map(|f| json!({"name": f.name, "len": f.len}))
            .collect();
        println!(
            "{}",
            json!({
                "file": a.file.display().to_string(), "file_bytes": file_len,
                "version": [c.framing.major, c.framing.minor],
                "provenance": idx.provenance, "policy": idx.policy, "files": files,
                "calibration": calibration.as_ref().map(|c| json!({
                    "tensors": c.vectors.len(), "about": c.about,
                })),
                "tensors": tensors, "codecs": codecs,
                "set": idx.set.as_ref().map(|s| s.id.clone()),
                "shards": shards.iter().map(|(p, b, t)| json!({"path": p, "bytes": b, "tensors": t})).collect::<Vec<_>>(),
                "total": {"tensors": all.len(), "raw_bytes": raw, "stored_bytes": stored,
                          "ratio": ratio(raw, stored), "file_ratio": ratio(raw, file_len)},
            })
        );
        return Ok(());
    }
    println!(
        "file       {} ({})",
        a.file.display(),
        human_bytes(file_len)
    );
    println!("format     cllm {}.{}", c.framing.major, c.framing.minor);
    if let Some(set) = &idx.set {
        println!("set        {} shards, id {}", set.count, set.id);
        for (p, b, t) in &shards {
            println!("shard      {p} ({t} tensors, {})", human_bytes(*b));
        }
    }
    let p = &idx.provenance;
    println!(
        "made by    {}; frames of {}; zstd level {}",
        p.tool,
        human_bytes(p.frame_size),
        p.zstd_level
    );
    let pol = &idx.policy;
    println!(
        "policy     preset {}, quant {}, int4 group {}, lossless {}{}",
        pol.preset,
        pol.quant,
        pol.group_size,
        pol.lossless,
        if pol.rules.is_empty() {
            String::new()
        } else {
            format!(", rules {}", pol.rules.join(" "))
        }
    );
    for s in &p.source_files {
        println!(
            "source     {} ({}, xxh3 {})",
            s.name,
            human_bytes(s.len),
            s.xxh3
        );
    }
    let files: Vec<_> = idx
        .files
        .iter()
        .map(|f| format!("{} ({})", f.name, human_bytes(f.len)))
        .collect();
    println!("embedded   {}", files.join(", "));
    if let Some(cal) = &calibration {
        let about = |k: &str| cal.about.get(k).map_or("?", String::as_str);
        println!(
            "calibrated {} tensors on {} (xxh3 {}): {} windows of {} tokens, {} positions",
            cal.vectors.len(),
            about("text"),
            about("text_xxh3"),
            about("windows"),
            about("window_tokens"),
            about("positions")
        );
    }
    println!();
    println!(
        "{:<52} {:>10} {:>5} {:>14} {:>11} {:>11} {:>6}",
        "tensor", "codec", "dtype", "shape", "raw", "stored", "ratio"
    );
    for t in &all {
        println!(
            "{:<52} {:>10} {:>5} {:>14} {:>11} {:>11} {:>6.3}",
            t.name,
            codec_label(t),
            t.dtype.name(),
            format!("{:?}", t.shape),
            human_bytes(t.raw_bytes()),
            human_bytes(t.stored_bytes()),
            ratio(t.raw_bytes(), t.stored_bytes())
        );
    }
    println!();
    for (k, v) in &by_codec {
        println!(
            "{:<10} {:>5} tensors  raw {:>11}  stored {:>11}  ratio {:.3}",
            k,
            v.tensors,
            human_bytes(v.raw),
            human_bytes(v.stored),
            ratio(v.raw, v.stored)
        );
    }
    println!(
        "{:<10} {:>5} tensors  raw {:>11}  stored {:>11}  ratio {:.3}  (file {})",
        "total",
        all.len(),
        human_bytes(raw),
        human_bytes(stored),
        ratio(raw, stored),
        human_bytes(file_len)
    );
    Ok(())
}
