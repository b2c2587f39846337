//! What the models are run on: a built-in prompt set, prompts from a file, and evaluation windows
//! cut from the project's own specification as it stood at version 1.1 (`eval_text.md`, a frozen
//! copy: license-clean, and the same for every build, so divergence figures stay comparable while
//! the live spec grows) or from the user's own text (`--eval-text`).

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
    #[error("{path}: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{path}: {len} bytes; an evaluation text may have at most {max} (take a part of it)")]
    TooLarge { path: PathBuf, len: u64, max: u64 },
    #[error("{path}: {tokens} tokens; an evaluation window needs at least 2")]
    TooShort { path: PathBuf, tokens: usize },
}

/// The largest evaluation text read: the whole text is held and tokenized at once.
pub const MAX_EVAL_TEXT_BYTES: u64 = 64 << 20;

/// A text the models are scored on, teacher-forced.
#[derive(Clone, Debug)]
pub enum EvalText {
    /// The embedded specification: `windows` windows spread evenly over it.
    Embedded { windows: usize },
    /// The user's text (`--eval-text`): consecutive windows from its start, as `llama-perplexity`
    /// cuts its chunks; at most `max_windows` of them when given.
    File {
        path: PathBuf,
        text: String,
        max_windows: Option<usize>,
    },
}

impl EvalText {
    /// Reads `path` as an evaluation text: UTF-8, at most [`MAX_EVAL_TEXT_BYTES`].
    pub fn read(path: &Path, max_windows: Option<usize>) -> Result<EvalText, TextError> {
        let read_err = |source| TextError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_EVAL_TEXT_BYTES {
            return Err(TextError::TooLarge {
                path: path.to_path_buf(),
                len,
                max: MAX_EVAL_TEXT_BYTES,
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|e| TextError::NotUtf8 {
            path: path.to_path_buf(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        Ok(EvalText::File {
            path: path.to_path_buf(),
            text,
            max_windows,
        })
    }

    /// Where the text comes from, for reports.
    pub fn source(&self) -> String {
        match self {
            EvalText::Embedded { .. } => "embedded (container specification 1.1)".to_string(),
            EvalText::File { path, .. } => path.display().to_string(),
        }
    }

    /// The text's windows of `len` tokens, encoded as transformers' `tokenizer(text)` encodes
    /// (the first window starts with BOS where the tokenizer adds one).
    pub fn windows(&self, tok: &Tokenizer, len: usize) -> Result<Vec<Vec<u32>>, TextError> {
        let (text, what) = match self {
            EvalText::Embedded { windows: 0 } => return Ok(Vec::new()),
            EvalText::Embedded { .. } => (EVAL_TEXT, "the evaluation text".to_string()),
            EvalText::File { path, text, .. } => (text.as_str(), path.display().to_string()),
        };
        let ids = tok
            .encode(text, true)
            .map_err(|source| TextError::Tokenize { what, source })?;
        Ok(match self {
            EvalText::Embedded { windows: n } => windows(&ids, *n, len),
            EvalText::File {
                path, max_windows, ..
            } => {
                if ids.len() < 2 {
                    return Err(TextError::TooShort {
                        path: path.clone(),
                        tokens: ids.len(),
                    });
                }
                consecutive_windows(&ids, len, *max_windows)
            }
        })
    }
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

/// Consecutive windows of `len` tokens from the start of `tokens`, the incomplete tail dropped
/// (as `llama-perplexity` cuts its chunks), at most `max` of them; a text shorter than one window
/// is one window of all its tokens.
pub fn consecutive_windows(tokens: &[u32], len: usize, max: Option<usize>) -> Vec<Vec<u32>> {
    if len == 0 || tokens.is_empty() {
        return Vec::new();
    }
    if tokens.len() < len {
        return vec![tokens.to_vec()];
    }
    tokens
        .chunks_exact(len)
        .take(max.unwrap_or(usize::MAX))
        .map(<[u32]>::to_vec)
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

    #[test]
    fn consecutive_windows_tile_the_text_from_its_start() {
        let t: Vec<u32> = (0..1050).collect();
        let w = consecutive_windows(&t, 100, None);
        assert_eq!(w.len(), 10, "the 50-token tail is dropped");
        assert_eq!(w.concat(), t[..1000].to_vec());
        assert_eq!(consecutive_windows(&t, 100, Some(3)).len(), 3);
        assert_eq!(
            consecutive_windows(&t[..40], 100, None),
            vec![t[..40].to_vec()]
        );
        assert!(consecutive_windows(&t, 0, None).is_empty());
    }

    #[test]
    fn an_eval_text_that_is_not_utf8_or_too_large_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("cllm-eval-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("latin1.txt");
        std::fs::write(&bad, b"caf\xe9 au lait").unwrap();
        let e = EvalText::read(&bad, None).unwrap_err().to_string();
        assert!(e.contains("latin1.txt") && e.contains("offset 3"), "{e}");
        let big = dir.join("big.txt");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_EVAL_TEXT_BYTES + 1).unwrap();
        let e = EvalText::read(&big, None).unwrap_err().to_string();
        assert!(e.contains("big.txt") && e.contains("at most"), "{e}");
        let missing = EvalText::read(&dir.join("none.txt"), None).unwrap_err();
        assert!(missing.to_string().contains("none.txt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
