//! `cllm export`: a packed model (a container or a shard set) handed to the engine that serves
//! it, written atomically: `--to gguf` (llama.cpp), `--to compressed-tensors` (vLLM, SGLang).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use cllm_export::ExportSummary;
use cllm_loader::Packed;

use crate::progress::human_bytes;
use crate::CmdResult;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Target {
    /// One GGUF file for llama.cpp.
    Gguf,
    /// A Hugging Face folder in the compressed-tensors format, for vLLM and SGLang.
    CompressedTensors,
}

/// Write a packed model in the format another engine serves.
#[derive(Args)]
pub struct ExportArgs {
    /// The .cllm file, a shard set's first shard, or a pattern matching a set's shards.
    pub file: PathBuf,
    /// The format to write.
    #[arg(long)]
    pub to: Target,
    /// The file (gguf) or folder (compressed-tensors) to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// GGUF only: convert the quantized tensors that no GGUF type carries exactly to this type
    /// (Q8_0, Q4_0, Q4_1), measuring and printing the error it adds.
    #[arg(long, value_name = "TYPE")]
    pub requantize: Option<String>,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: ExportArgs) -> CmdResult {
    let packed = Packed::open(&a.file)?;
    let summary: ExportSummary = match a.to {
        Target::Gguf => {
            let opts = cllm_export::gguf::GgufOptions {
                requantize: a.requantize.clone(),
            };
            crate::atomic::write_file(&a.output, |w| {
                cllm_export::gguf::export(&packed, w, &opts)
                    .with_context(|| format!("exporting {} to GGUF", a.file.display()))
            })?
        }
        Target::CompressedTensors => {
            if a.requantize.is_some() {
                return Err(anyhow::anyhow!("--requantize applies to --to gguf only").into());
            }
            crate::atomic::write_dir(&a.output, |dir| {
                cllm_export::compressed_tensors::export(&packed, dir).with_context(|| {
                    format!("exporting {} to compressed-tensors", a.file.display())
                })
            })?
        }
    };
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    println!(
        "exported {} tensors ({}) to {}",
        summary.tensors,
        human_bytes(summary.bytes),
        a.output.display()
    );
    Ok(())
}
