//! Holding a model to Hugging Face transformers' figures: the `reference.json` files that
//! `scripts/reference/make_reference.py` writes (per prompt: token ids, 32 greedy tokens, top-5
//! logits and top-1/top-2 gaps at every position), and [`compare`], which runs a [`Model`]
//! (CPU or GPU) on the same prompts and says where it differs.
//!
//! The rules, with [`Tolerances::default`]:
//! - prompt ids (`prompt_ids(text, chat = false)`) and, where the reference has them, chat ids
//!   equal;
//! - the greedy continuation equal token for token, except where transformers' own top-1/top-2
//!   gap at that step is below `tie_gap` (a tie within float32 noise): from there the reference's
//!   tokens are fed (teacher forcing) and the step is reported;
//! - at every position of prompt + reference continuation (one pass over the whole sequence),
//!   the logits of the reference's top-5 ids within `rel_logit` of transformers', relative to
//!   `max(|reference|, logit_floor)`, and the model's own top-5 ids the reference's up to swaps
//!   of logits the reference has within `tie_gap` of each other.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cllm_runtime::{GenerateOptions, Model};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One `reference.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Reference {
    /// The folder's `config.json` `model_type` (transformers' own, for a GGUF).
    pub model_type: String,
    /// SHA-256 (hex) of every weight file transformers read, by file name.
    pub files: BTreeMap<String, String>,
    /// SHA-256 (hex) of the folder's config and tokenizer files, by file name.
    #[serde(default)]
    pub config_files: BTreeMap<String, String>,
    /// The GGUF file transformers converted, if it loaded one.
    #[serde(default)]
    pub gguf_file: Option<String>,
    /// The torch and transformers versions and settings that produced the figures.
    pub generator: BTreeMap<String, serde_json::Value>,
    /// Where the folder came from when it is a synthetic fixture (`cllm synth`).
    #[serde(default)]
    pub synth: Option<SynthSource>,
    pub new_tokens: usize,
    pub top_k: usize,
    pub prompts: Vec<PromptReference>,
}

/// The `cllm synth` arguments that rebuild the folder a reference was made from.
#[derive(Clone, Debug, Deserialize)]
pub struct SynthSource {
    pub shape: String,
    pub dtype: String,
    pub seed: u64,
    #[serde(default)]
    pub shards: usize,
}

/// One prompt's figures.
#[derive(Clone, Debug, Deserialize)]
pub struct PromptReference {
    pub name: String,
    pub text: String,
    /// `tokenizer(text)["input_ids"]` (with the post-processor's BOS, if any).
    pub prompt_ids: Vec<u32>,
    /// The chat template applied to one user message, with the generation prompt.
    pub chat_ids: Option<Vec<u32>>,
    /// Greedy tokens after `prompt_ids`, no EOS stop.
    pub continuation: Vec<u32>,
    /// Per position of `prompt_ids + continuation`: the top-k ids, largest logit first (ties:
    /// the smaller id first), their logits, and top-1 minus top-2.
    pub top_ids: Vec<Vec<u32>>,
    pub top_logits: Vec<Vec<f32>>,
    pub gaps: Vec<f32>,
}

impl Reference {
    /// Reads and checks the shape of `path` (every per-position array one entry a position).
    pub fn load(path: &Path) -> Reference {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let r: Reference = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        for p in &r.prompts {
            let n = p.prompt_ids.len() + p.continuation.len();
            assert_eq!(
                p.continuation.len(),
                r.new_tokens,
                "{}: {}",
                path.display(),
                p.name
            );
            assert!(
                p.top_ids.len() == n && p.top_logits.len() == n && p.gaps.len() == n,
                "{}: {}: per-position arrays are not {n} long",
                path.display(),
                p.name
            );
            assert!(
                p.top_ids.iter().all(|v| v.len() == r.top_k)
                    && p.top_logits.iter().all(|v| v.len() == r.top_k),
                "{}: {}: top lists are not {} long",
                path.display(),
                p.name,
                r.top_k
            );
        }
        r
    }
}

/// Every `fixtures/reference/*/reference.json` (under `root`), sorted by directory name.
pub fn reference_files(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .flatten()
        .map(|e| e.path().join("reference.json"))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Checks that `folder` holds the weight, config and tokenizer files the reference was made
/// from, byte for byte: `Err` names the first file that is missing or differs.
pub fn check_files(folder: &Path, reference: &Reference) -> Result<(), String> {
    for (name, want) in reference.files.iter().chain(&reference.config_files) {
        let bytes = std::fs::read(folder.join(name))
            .map_err(|e| format!("{}: {e}", folder.join(name).display()))?;
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if &got != want {
            return Err(format!(
                "{}: sha256 {got}, the reference was made from {want}",
                folder.join(name).display()
            ));
        }
    }
    Ok(())
}

/// How close is close enough.
#[derive(Clone, Copy, Debug)]
pub struct Tolerances {
    /// Largest `|logit - reference| / max(|reference|, logit_floor)` accepted.
    pub rel_logit: f32,
    pub logit_floor: f32,
    /// A top-1/top-2 (or any adjacent) gap of the reference below this is a tie.
    pub tie_gap: f32,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            rel_logit: 1e-3,
            logit_floor: 1e-2,
            tie_gap: 1e-4,
        }
    }
}

/// A greedy step where the model and the reference chose differently at a near-tie, after which
/// the reference's tokens were fed.
#[derive(Clone, Debug)]
pub struct ForcedStep {
    /// Index into the continuation.
    pub step: usize,
    pub reference: u32,
    pub model: u32,
    /// The reference's top-1 minus top-2 logit there.
    pub gap: f32,
}

/// One prompt's comparison.
#[derive(Clone, Debug, Default)]
pub struct PromptReport {
    pub name: String,
    pub prompt_ids_equal: bool,
    /// `None` where the reference has no chat ids.
    pub chat_ids_equal: Option<bool>,
    /// Greedy steps that matched with no forcing before them, out of `new_tokens`.
    pub greedy_matched: usize,
    pub new_tokens: usize,
    pub forced: Vec<ForcedStep>,
    /// Largest relative logit error over every position's reference top-k, and where.
    pub max_rel_err: f32,
    pub max_abs_err: f32,
    pub worst: (usize, u32),
    /// Top-k ranks where the model's id differs from the reference's, accepted as ties.
    pub tie_swaps: usize,
    pub failures: Vec<String>,
}

/// The comparison of one model with one reference.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub prompts: Vec<PromptReport>,
}

impl Report {
    pub fn max_rel_err(&self) -> f32 {
        self.prompts
            .iter()
            .map(|p| p.max_rel_err)
            .fold(0.0, f32::max)
    }

    pub fn forced_steps(&self) -> usize {
        self.prompts.iter().map(|p| p.forced.len()).sum()
    }

    /// Every failure, prefixed with its prompt's name.
    pub fn failures(&self) -> Vec<String> {
        self.prompts
            .iter()
            .flat_map(|p| p.failures.iter().map(move |f| format!("{}: {f}", p.name)))
            .collect()
    }

    pub fn passed(&self) -> bool {
        self.prompts.iter().all(|p| p.failures.is_empty())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.prompts {
            write!(
                f,
                "  {:<10} prompt ids {}, chat ids {}, greedy {}/{} before any forcing, max rel logit err {:.3e} (abs {:.3e}, position {} id {}), {} top-k tie swaps",
                p.name,
                if p.prompt_ids_equal { "equal" } else { "DIFFER" },
                match p.chat_ids_equal {
                    None => "n/a",
                    Some(true) => "equal",
                    Some(false) => "DIFFER",
                },
                p.greedy_matched,
                p.new_tokens,
                p.max_rel_err,
                p.max_abs_err,
                p.worst.0,
                p.worst.1,
                p.tie_swaps,
            )?;
            for s in &p.forced {
                write!(
                    f,
                    "\n             teacher-forced at step {}: reference {} (gap {:.3e}), model {}",
                    s.step, s.reference, s.gap, s.model
                )?;
            }
            for e in &p.failures {
                write!(f, "\n             FAIL {e}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The ids of the `k` largest values, largest first, ties broken by the smaller id (the order
/// `make_reference.py` writes).
pub fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let k = k.min(idx.len());
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Logits at every position of `tokens`: the CPU model's `forward_all`, else one session's
/// `prefill_all` (the GPU).
pub fn all_logits(model: &Model, tokens: &[u32]) -> Result<Vec<Vec<f32>>, String> {
    match model.cpu() {
        Some(cpu) => cpu.forward_all(tokens).map_err(|e| e.to_string()),
        None => model
            .session(tokens.len())
            .and_then(|mut s| s.prefill_all(tokens))
            .map_err(|e| e.to_string()),
    }
}

/// Greedy tokens after `prompt`, no EOS stop.
fn greedy(model: &Model, prompt: &[u32], n: usize) -> Result<Vec<u32>, String> {
    let opts = GenerateOptions {
        eos_token_ids: Vec::new(),
        ..GenerateOptions::greedy(model.config(), n)
    };
    let r = model
        .generate(prompt, &opts, |_| {})
        .map_err(|e| e.to_string())?;
    Ok(r.generated_ids)
}

/// Runs `model` on every prompt of `reference` and compares (see the module's rules).
pub fn compare(model: &Model, reference: &Reference, tol: &Tolerances) -> Report {
    let prompts = reference
        .prompts
        .iter()
        .map(|p| compare_prompt(model, reference, p, tol))
        .collect();
    Report { prompts }
}

fn compare_prompt(
    model: &Model,
    reference: &Reference,
    p: &PromptReference,
    tol: &Tolerances,
) -> PromptReport {
    let mut r = PromptReport {
        name: p.name.clone(),
        new_tokens: p.continuation.len(),
        ..PromptReport::default()
    };
    let n_prompt = p.prompt_ids.len();
    let n_new = p.continuation.len();

    // Tokenization.
    match model.prompt_ids(&p.text, false) {
        Ok(ids) => {
            r.prompt_ids_equal = ids == p.prompt_ids;
            if !r.prompt_ids_equal {
                r.failures.push(format!(
                    "prompt ids {ids:?}, transformers {:?}",
                    p.prompt_ids
                ));
            }
        }
        Err(e) => r.failures.push(format!("prompt ids: {e}")),
    }
    if let Some(want) = &p.chat_ids {
        match model.prompt_ids(&p.text, true) {
            Ok(ids) => {
                r.chat_ids_equal = Some(&ids == want);
                if &ids != want {
                    r.failures
                        .push(format!("chat ids {ids:?}, transformers {want:?}"));
                }
            }
            Err(e) => {
                r.chat_ids_equal = Some(false);
                r.failures.push(format!("chat ids: {e}"));
            }
        }
    }

    // Greedy continuation from the reference's prompt ids, teacher-forced past near-ties.
    let mut start = 0;
    let mut forced_any = false;
    while start < n_new {
        let mut ids = p.prompt_ids.clone();
        ids.extend_from_slice(&p.continuation[..start]);
        let got = match greedy(model, &ids, n_new - start) {
            Ok(g) => g,
            Err(e) => {
                r.failures.push(format!("generate from step {start}: {e}"));
                break;
            }
        };
        let want = &p.continuation[start..];
        match got.iter().zip(want).position(|(a, b)| a != b) {
            None if got.len() == want.len() => {
                if !forced_any {
                    r.greedy_matched = n_new;
                }
                break;
            }
            None => {
                r.failures.push(format!(
                    "generate from step {start} gave {} tokens, not {}",
                    got.len(),
                    want.len()
                ));
                break;
            }
            Some(j) => {
                let step = start + j;
                if !forced_any {
                    r.greedy_matched = step;
                }
                forced_any = true;
                let pos = n_prompt + step - 1;
                let gap = p.gaps[pos];
                if gap >= tol.tie_gap {
                    r.failures.push(format!(
                        "greedy step {step}: chose {}, transformers {} (its top ids {:?}, logits {:?}, gap {gap:e})",
                        got[j], want[j], p.top_ids[pos], p.top_logits[pos]
                    ));
                }
                r.forced.push(ForcedStep {
                    step,
                    reference: want[j],
                    model: got[j],
                    gap,
                });
                start = step + 1;
            }
        }
    }
    if start >= n_new && !forced_any {
        r.greedy_matched = n_new;
    }

    // Logits at every position of prompt + reference continuation.
    let mut tokens = p.prompt_ids.clone();
    tokens.extend_from_slice(&p.continuation);
    let logits = match all_logits(model, &tokens) {
        Ok(l) => l,
        Err(e) => {
            r.failures.push(format!("forward: {e}"));
            return r;
        }
    };
    if logits.len() != tokens.len() {
        r.failures.push(format!(
            "forward gave {} positions, not {}",
            logits.len(),
            tokens.len()
        ));
        return r;
    }
    let k = reference.top_k;
    let mut bad_logits = 0usize;
    let mut bad_ids = 0usize;
    for (pos, row) in logits.iter().enumerate() {
        let ref_ids = &p.top_ids[pos];
        let ref_logits = &p.top_logits[pos];
        if let Some(i) = row.iter().position(|v| !v.is_finite()) {
            r.failures
                .push(format!("position {pos}: logit of id {i} is {}", row[i]));
            return r;
        }
        for (&id, &want) in ref_ids.iter().zip(ref_logits) {
            let Some(&got) = row.get(id as usize) else {
                r.failures.push(format!(
                    "position {pos}: id {id} outside the vocabulary ({})",
                    row.len()
                ));
                return r;
            };
            let abs = (got - want).abs();
            let rel = abs / want.abs().max(tol.logit_floor);
            if rel > r.max_rel_err {
                r.max_rel_err = rel;
                r.worst = (pos, id);
            }
            r.max_abs_err = r.max_abs_err.max(abs);
            if rel > tol.rel_logit {
                bad_logits += 1;
                if bad_logits <= 5 {
                    r.failures.push(format!(
                        "position {pos} id {id}: logit {got}, transformers {want} (relative error {rel:.3e})"
                    ));
                }
            }
        }
        let mine = top_k(row, k);
        let last = ref_logits[k - 1];
        for (rank, &id) in mine.iter().enumerate() {
            if id == ref_ids[rank] {
                continue;
            }
            let want = ref_logits[rank];
            let tied = match ref_ids.iter().position(|&x| x == id) {
                // An id the reference also ranks, at a logit within the gap of this rank's.
                Some(i) => (ref_logits[i] - want).abs() < tol.tie_gap,
                // An id from outside the reference's top-k: this rank and every one below it
                // tied in the reference, and the model's logit for it no higher than theirs.
                None => {
                    want - last < tol.tie_gap
                        && row[id as usize] - last
                            <= tol.tie_gap + tol.rel_logit * last.abs().max(tol.logit_floor)
                }
            };
            if tied {
                r.tie_swaps += 1;
            } else {
                bad_ids += 1;
                if bad_ids <= 5 {
                    r.failures.push(format!(
                        "position {pos}: top-{k} ids {mine:?} (logits {:?}), transformers {ref_ids:?} (logits {ref_logits:?})",
                        mine.iter().map(|&i| row[i as usize]).collect::<Vec<_>>()
                    ));
                }
                break;
            }
        }
    }
    if bad_logits > 5 {
        r.failures
            .push(format!("... {bad_logits} logits out of tolerance in all"));
    }
    if bad_ids > 5 {
        r.failures.push(format!(
            "... {bad_ids} positions with other top-{k} ids in all"
        ));
    }
    r
}
