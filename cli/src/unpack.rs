//! `cllm unpack`: a container back into a Hugging Face folder. Lossless tensors come back
//! bit-identical; quantized ones dequantized to their source dtype. Written atomically.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Map, Value};

use cllm_loader::Packed;

use crate::progress::{bytes_bar, human_bytes};
use crate::CmdResult;

/// Write a container's model back out as a Hugging Face folder.
#[derive(Args)]
pub struct UnpackArgs {
    /// The .cllm file, a shard set's first shard, or a pattern matching a set's shards.
    pub file: PathBuf,
    /// The folder to create (must not exist, or be empty).
    #[arg(short, long)]
    pub output: PathBuf,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The safetensors header for tensors laid out back to back in index order.
fn safetensors_header(c: &Packed) -> anyhow::Result<Vec<u8>> {
    let framing = &c.shards()[0].container.framing;
    let mut map = Map::new();
    map.insert(
        "__metadata__".into(),
        json!({"format": "pt", "cllm_source": format!("cllm {}.{}", framing.major, framing.minor)}),
    );
    let mut at = 0u64;
    for t in c.tensors() {
        let len = t.raw_bytes();
        map.insert(
            t.name.clone(),
            json!({"dtype": t.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [at, at + len]}),
        );
        at += len;
    }
    let mut header = serde_json::to_vec(&Value::Object(map))?;
    // The data section starts 8-byte aligned, as the safetensors spec asks.
    while (header.len() + 8) % 8 != 0 {
        header.push(b' ');
    }
    Ok(header)
}

pub fn run(a: UnpackArgs) -> CmdResult {
    let c = crate::common::open_packed(&a.file)?;
    let total: u64 = c.tensors().map(|t| t.raw_bytes()).sum();
    let bar = bytes_bar(
        total,
        a.quiet,
        "{spinner} unpacking [{bar:30}] {bytes}/{total_bytes} eta {eta}",
    );
    crate::atomic::write_dir(&a.output, |dir| {
        let path = dir.join("model.safetensors");
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let header = safetensors_header(&c)?;
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        // A frame at a time: memory holds one frame (and a quantized tensor's scales), never
        // a tensor, whatever the model's size.
        for i in 0..c.len() {
            c.source_chunks(i, |chunk| {
                w.write_all(chunk)
                    .map_err(|e| cllm_loader::LoadError::io(&path, e))?;
                bar.inc(chunk.len() as u64);
                Ok(())
            })
            .with_context(|| format!("unpacking {}", a.file.display()))?;
        }
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        for f in &c.index().files {
            let data = c
                .read_file(&f.name)
                .with_context(|| format!("decoding {}", a.file.display()))?
                .expect("listed in the index");
            std::fs::write(dir.join(&f.name), data)
                .with_context(|| format!("writing {}", f.name))?;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    println!(
        "unpacked {} tensors ({}) and {} files into {}",
        c.len(),
        human_bytes(total),
        c.index().files.len(),
        a.output.display()
    );
    Ok(())
}
