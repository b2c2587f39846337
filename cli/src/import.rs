//! `cllm import-gguf`: a GGUF file (llama.cpp) into a Hugging Face folder.

use std::path::PathBuf;

use clap::Args;

use crate::CmdResult;

/// Convert a GGUF model (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K) of the families
/// llama, mistral, qwen2, qwen3, gemma3 and phi3 into a Hugging Face folder with bf16 weights:
/// llama.cpp's Q/K row permutation and Gemma's `1 + w` norms undone, the tokenizer rebuilt
/// from its metadata (byte-level BPE or SentencePiece), the hyper-parameters as the family's
/// config.json.
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
    let types = s
        .source_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "imported {} tensors ({}) from {} into {}",
        s.tensors,
        s.architecture,
        a.file.display(),
        a.output.display()
    );
    println!(
        "  model     {} ({types}), {}",
        s.family.model_type(),
        if s.tie_word_embeddings {
            "tied embeddings"
        } else {
            "own LM head"
        }
    );
    println!(
        "  tokenizer {} ({} tokens, {} merges{})",
        s.tokenizer_model,
        s.vocab_size,
        s.n_merges,
        if s.merges_derived {
            ", derived from the scores"
        } else {
            ""
        }
    );
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}
