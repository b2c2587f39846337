//! `cllm bench codec`: ratio and single-core speed of every codec on seeded normal bf16 data.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use cllm_format::{
    pack, Codec, Container, Dtype, Limits, PackInput, PackOptions, Policy, Rule, SourceTensor,
};
use cllm_synth::{Init, TensorSpec};
use serde_json::json;

use crate::CmdResult;

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

pub fn run(a: CodecArgs) -> CmdResult {
    let cols: u64 = 8192;
    let rows = (a.size_mib << 20) / 2 / cols;
    let spec = TensorSpec {
        name: "bench.weight".into(),
        shape: vec![rows, cols],
        init: Init::Normal { std: 0.02 },
    };
    let t0 = Instant::now();
    let data = cllm_synth::tensor_bytes(&spec, Dtype::Bf16, 0).context("generating data")?;
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
                bytes: data.as_slice().into(),
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
