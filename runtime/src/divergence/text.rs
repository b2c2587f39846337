//! What the models are run on: a built-in prompt set, prompts from a file, and evaluation windows
//! cut from the project's own specification as it stood at version 1.1 (`eval_text.md`, a frozen
//! copy: license-clean, and the same for every build, so divergence figures stay comparable while
//! the live spec grows).

use std::path::{Path, PathBuf};

use crate::tokenizer::{Tokenizer, TokenizerError};

/// The evaluation text: the container specification, version 1.1, frozen.
pub const EVAL_TEXT: &str = include_str!("eval_text.md");

/// Why the run's text could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("reading prompts from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no prompt (one prompt per line)")]
    NoPrompt { path: PathBuf },
    #[error("tokenizing {what}: {source}")]
    Tokenize {
        what: String,
        source: TokenizerError,
    },
    #[error("prompt {0:?} encodes to no tokens")]
    EmptyPrompt(String),
}

/// Prompts written for this tool: facts, code, arithmetic, a list, a story opening and the
/// project's own vocabulary, so that several kinds of continuation are exercised.
pub const BUILTIN_PROMPTS: &[&str] = &[
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Water boils at",
    "Here is a short story about a lighthouse keeper:",
    "Q: What is 17 + 25?\nA:",
    "The three primary colors are",
    "To check that a file was not corrupted, a reader first",
    "The planets of the solar system, in order: Mercury, Venus,",
];

/// Prompts from a file, one per line; blank lines are skipped.
pub fn read_prompts(path: &Path) -> Result<Vec<String>, TextError> {
    let text = std::fs::read_to_string(path).map_err(|source| TextError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let prompts: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        return Err(TextError::NoPrompt {
            path: path.to_path_buf(),
        });
    }
    Ok(prompts)
}

/// Encodes prompts as `cllm run` encodes a plain prompt (special tokens added, as transformers'
/// `tokenizer(text)`), failing on one that encodes to nothing.
pub fn encode_prompts(tok: &Tokenizer, prompts: &[String]) -> Result<Vec<Vec<u32>>, TextError> {
    prompts
        .iter()
        .map(|p| {
            let ids = tok.encode(p, true).map_err(|source| TextError::Tokenize {
                what: format!("prompt {p:?}"),
                source,
            })?;
            if ids.is_empty() {
                return Err(TextError::EmptyPrompt(p.clone()));
            }
            Ok(ids)
        })
        .collect()
}

/// `count` windows of `len` tokens spread evenly over `tokens` (fewer when the text is short).
pub fn windows(tokens: &[u32], count: usize, len: usize) -> Vec<Vec<u32>> {
    if count == 0 || len == 0 || tokens.is_empty() {
        return Vec::new();
    }
    let len = len.min(tokens.len());
    let room = tokens.len() - len;
    let count = count.min(room / len.max(1) + 1).max(1);
    (0..count)
        .map(|k| {
            let start = if count == 1 {
                0
            } else {
                k * room / (count - 1)
            };
            tokens[start..start + len].to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_text_evenly() {
        let t: Vec<u32> = (0..1000).collect();
        let w = windows(&t, 4, 100);
        assert_eq!(w.len(), 4);
        assert_eq!(w[0][0], 0);
        assert_eq!(w[3][99], 999);
        assert_eq!(windows(&t[..150], 4, 100).len(), 1);
        assert_eq!(windows(&t[..50], 2, 100), vec![t[..50].to_vec()]);
        assert!(windows(&t, 0, 100).is_empty());
    }
}
