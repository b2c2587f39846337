//! `cllm unpack`: a container back into a Hugging Face folder. Lossless tensors come back
//! bit-identical; quantized ones dequantized to their source dtype. Written atomically.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Map, Value};

use crate::progress::{bytes_bar, human_bytes};
use crate::CmdResult;

/// Write a container's model back out as a Hugging Face folder.
#[derive(Args)]
pub struct UnpackArgs {
    /// The .cllm file.
    pub file: PathBuf,
    /// The folder to create (must not exist, or be empty).
    #[arg(short, long)]
    pub output: PathBuf,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The safetensors header for tensors laid out back to back in index order.
fn safetensors_header(c: &cllm_format::Container<'_>) -> anyhow::Result<Vec<u8>> {
    let mut map = Map::new();
    map.insert(
        "__metadata__".into(),
        json!({"format": "pt", "cllm_source": format!("cllm {}.{}", c.framing.major, c.framing.minor)}),
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
    let file = crate::common::open_container(&a.file)?;
    let c = file.container()?;
    let total: u64 = c.tensors().iter().map(|t| t.raw_bytes()).sum();
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
        for i in 0..c.tensors().len() {
            let data = c
                .tensor_source_bytes(i)
                .with_context(|| format!("decoding {}", a.file.display()))?;
            w.write_all(&data)
                .with_context(|| format!("writing {}", path.display()))?;
            bar.inc(data.len() as u64);
        }
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        for f in &c.index.files {
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
        c.tensors().len(),
        human_bytes(total),
        c.index.files.len(),
        a.output.display()
    );
    Ok(())
}
