//! `cllm import-gguf`: a GGUF file (llama.cpp) into a Hugging Face folder.

use std::path::PathBuf;

use clap::Args;

use crate::CmdResult;

/// Convert a GGUF model (F32/F16/BF16/Q8_0/Q4_0/Q4_1/...) into a Hugging Face folder with bf16
/// weights, undoing llama.cpp's Q/K row permutation.
#[derive(Args)]
pub struct ImportArgs {
    /// The .gguf file.
    pub file: PathBuf,
    /// The folder to create.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(a: ImportArgs) -> CmdResult {
    let s = cllm_gguf::import(&a.file, &a.output)?;
    println!(
        "imported {} tensors ({}) from {} into {}",
        s.tensors,
        s.architecture,
        a.file.display(),
        a.output.display()
    );
    Ok(())
}
