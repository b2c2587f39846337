//! Hugging Face `tokenizer.json` / `tokenizer_config.json` from GGUF
//! tokenizer metadata (`tokenizer.ggml.*`).
//!
//! Two kinds of `tokenizer.ggml.model`:
//!
//! * `gpt2`: byte-level BPE (Llama 3, Qwen, SmolLM, Phi-4). The split regex
//!   of the pre-tokenizer depends on `tokenizer.ggml.pre`, which names the
//!   pre-tokenizer of the original Hugging Face tokenizer (the names are
//!   llama.cpp's, see `llama-vocab.cpp`):
//!   * `default`, `gpt2`, ...: the GPT-2 regex (`ByteLevel` with `use_regex`).
//!   * `smollm`, `starcoder`, `refact`, `codeshell`, ...: every digit split on
//!     its own (`\p{N}`), then the GPT-2 regex: `Digits(individual)` followed
//!     by `ByteLevel`, which is what SmolLM/StarCoder tokenizer.json files
//!     contain.
//!   * `llama-bpe` / `llama3`, `qwen2`: their own split regexes, then
//!     `ByteLevel` without regex.
//! * `llama`: SentencePiece BPE with byte fallback (Llama 2, Mistral v0.1-v0.3,
//!   Phi-3, Gemma). The vocabulary comes with scores and token types; the
//!   merges are usually absent and are then derived from the scores exactly as
//!   transformers' GGUF converter derives them (`GGUFTokenizerSkeleton`: every
//!   split of every token into two tokens, ordered by the merged token's
//!   score), which reproduces SentencePiece's BPE (merge the adjacent pair
//!   whose concatenation scores highest). Spaces become `▁` in the
//!   normalizer, with a `▁` prepended where `tokenizer.ggml.add_space_prefix`
//!   is true or absent (transformers' default); control tokens are special
//!   added tokens, user-defined tokens ordinary added tokens matched before
//!   BPE, as SentencePiece and llama.cpp match them.
//!
//! Both kinds put BOS (and EOS) in a `TemplateProcessing` post-processor where
//! `tokenizer.ggml.add_bos_token` (`add_eos_token`) is true, as the original
//! Hugging Face tokenizers of these models do and llama.cpp does.

use std::collections::{HashMap, HashSet};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::GgufError;
use crate::reader::Metadata;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// The `tokenizer.ggml.model` values the importer rebuilds.
pub const SUPPORTED_MODELS: &str = "gpt2 (byte-level BPE), llama (SentencePiece BPE)";

/// SentencePiece's whitespace symbol.
const SPM_SPACE: &str = "\u{2581}";

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o's (`tokenizer.ggml.pre` "gpt-4o", Phi-4-mini).
const GPT4O_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer files for a Hugging Face folder.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    /// Contents of `tokenizer.json`.
    pub tokenizer_json: String,
    /// Contents of `tokenizer_config.json`.
    pub tokenizer_config: Value,
    /// `tokenizer.chat_template`, for `chat_template.jinja`.
    pub chat_template: Option<String>,
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// Number of merges.
    pub n_merges: usize,
    /// Whether the merges were derived from the scores (absent from the file).
    pub merges_derived: bool,
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// `tokenizer.ggml.pre` as found (or "default").
    pub pre: String,
    /// The ids generation stops at: `tokenizer.ggml.eos_token_id`, then the
    /// end-of-turn ids llama.cpp also stops at (`eot_token_id`, `eom_token_id`),
    /// without repeats.
    pub eos_ids: Vec<u32>,
}

/// `tokenizer.json`, with fields in the order the tokenizers library writes them.
#[derive(Serialize)]
struct TokenizerJson<'t> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<Value>,
    normalizer: Value,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    model: BpeModel<'t>,
}

#[derive(Serialize)]
struct BpeModel<'t> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: Option<&'t str>,
    continuing_subword_prefix: Option<&'t str>,
    end_of_word_suffix: Option<&'t str>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: Vocab<'t>,
    merges: &'t [[&'t str; 2]],
}

/// The vocabulary written as a JSON object in id order.
struct Vocab<'v>(&'v [&'v str]);

impl Serialize for Vocab<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (id, tok) in self.0.iter().enumerate() {
            map.serialize_entry(tok, &id)?;
        }
        map.end()
    }
}

fn meta_err(key: &str, reason: impl Into<String>) -> GgufError {
    GgufError::BadMetadataValue {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// A required metadata key holding an array of strings.
fn required_strs<'m, 'a>(md: &'m Metadata<'a>, key: &str) -> Result<&'m [&'a str], GgufError> {
    let arr = md
        .get_array(key)
        .ok_or_else(|| GgufError::MissingMetadata { key: key.into() })?;
    arr.as_strs().ok_or_else(|| GgufError::WrongMetadataType {
        key: key.into(),
        expected: "array of string",
        found: format!("array of {}", arr.elem_type()),
    })
}

fn token_id(md: &Metadata<'_>, key: &str, n_tokens: usize) -> Result<Option<usize>, GgufError> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    // Some converters write -1 (as a signed integer) for "none".
    if v.as_i64() == Some(-1) {
        return Ok(None);
    }
    let id = v.as_u64().ok_or_else(|| GgufError::WrongMetadataType {
        key: key.to_string(),
        expected: "integer",
        found: v.type_description(),
    })?;
    match usize::try_from(id) {
        Ok(id) if id < n_tokens => Ok(Some(id)),
        _ => Err(meta_err(
            key,
            format!("token id {id} is outside the vocabulary of {n_tokens} tokens"),
        )),
    }
}

/// The byte-level pre-tokenizer for a `tokenizer.ggml.pre` value.
fn byte_level_pre_tokenizer(pre: &str, add_prefix_space: bool) -> Result<Value, GgufError> {
    let byte_level = |use_regex: bool| {
        json!({
            "type": "ByteLevel",
            "add_prefix_space": add_prefix_space,
            "trim_offsets": true,
            "use_regex": use_regex,
        })
    };
    let split = |regex: &str| {
        json!({
            "type": "Split",
            "pattern": { "Regex": regex },
            "behavior": "Isolated",
            "invert": false,
        })
    };
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => byte_level(true),
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva" => {
            json!({
                "type": "Sequence",
                "pretokenizers": [
                    { "type": "Digits", "individual_digits": true },
                    byte_level(true),
                ],
            })
        }
        "llama-bpe" | "llama3" | "llama-v3" => json!({
            "type": "Sequence",
            "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)],
        }),
        "qwen2" => json!({
            "type": "Sequence",
            "pretokenizers": [split(QWEN2_REGEX), byte_level(false)],
        }),
        "gpt-4o" => json!({
            "type": "Sequence",
            "pretokenizers": [split(GPT4O_REGEX), byte_level(false)],
        }),
        other => return Err(GgufError::UnsupportedPreTokenizer(other.to_string())),
    })
}

/// The two vocabulary kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `gpt2`: byte-level BPE.
    ByteLevel,
    /// `llama`: SentencePiece BPE with byte fallback.
    SentencePiece,
}

/// Builds `tokenizer.json` and `tokenizer_config.json` from the metadata.
/// `model_max_length` goes into the config (the context length).
pub fn build_hf_tokenizer(
    md: &Metadata<'_>,
    model_max_length: Option<u64>,
) -> Result<HfTokenizer, GgufError> {
    let model = md
        .get_str("tokenizer.ggml.model")
        .ok_or_else(|| GgufError::MissingMetadata {
            key: "tokenizer.ggml.model".into(),
        })?;
    let kind = match model {
        "gpt2" => Kind::ByteLevel,
        "llama" => Kind::SentencePiece,
        other => return Err(GgufError::UnsupportedTokenizer(other.to_string())),
    };
    let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("default");

    // ---- vocabulary
    let tokens_key = "tokenizer.ggml.tokens";
    let gguf_tokens = required_strs(md, tokens_key)?;
    if gguf_tokens.is_empty() {
        return Err(meta_err(tokens_key, "empty vocabulary"));
    }
    let n = gguf_tokens.len();
    let types_key = "tokenizer.ggml.token_type";
    let types: Vec<i64> = match md.get_array(types_key) {
        None => vec![token_type::NORMAL; n],
        Some(a) => {
            let v = a.to_i64_vec().ok_or_else(|| GgufError::WrongMetadataType {
                key: types_key.into(),
                expected: "array of integers",
                found: format!("array of {}", a.elem_type()),
            })?;
            if v.len() != n {
                return Err(meta_err(
                    types_key,
                    format!("{} entries for {n} tokens", v.len()),
                ));
            }
            v
        }
    };
    let add_prefix_space = md.get_bool("tokenizer.ggml.add_space_prefix");

    // llama.cpp's converter writes a SentencePiece model's user-defined tokens with `▁` replaced
    // by a space ("pre-normalize user-defined spaces"); where the normalizer turns spaces into
    // `▁` before they are matched, they get their `▁` back.
    let spm_user_normalized = kind == Kind::SentencePiece && add_prefix_space == Some(false);
    let restored: Vec<Option<String>> = gguf_tokens
        .iter()
        .zip(&types)
        .map(|(t, &ty)| {
            (spm_user_normalized && ty == token_type::USER_DEFINED && t.contains(' '))
                .then(|| t.replace(' ', SPM_SPACE))
        })
        .collect();
    let tokens: Vec<&str> = gguf_tokens
        .iter()
        .zip(&restored)
        .map(|(t, r)| r.as_deref().unwrap_or(t))
        .collect();
    {
        let mut seen = HashMap::with_capacity(n);
        for (id, t) in tokens.iter().enumerate() {
            if let Some(first) = seen.insert(*t, id) {
                return Err(GgufError::BadTokenizer(format!(
                    "token {t:?} appears twice in the vocabulary (ids {first} and {id})"
                )));
            }
        }
    }

    // ---- merges
    let merges_key = "tokenizer.ggml.merges";
    let vocab_set: HashSet<&str> = tokens.iter().copied().collect();
    let (merges, merges_derived): (Vec<[&str; 2]>, bool) = match md.get_array(merges_key) {
        Some(_) => (
            parse_merges(required_strs(md, merges_key)?, &vocab_set)?,
            false,
        ),
        None if kind == Kind::SentencePiece => {
            let scores = scores(md, n)?;
            (derive_merges(&tokens, &scores), true)
        }
        None => {
            return Err(GgufError::MissingMetadata {
                key: merges_key.into(),
            })
        }
    };

    // ---- special / added tokens
    let bos = token_id(md, "tokenizer.ggml.bos_token_id", n)?;
    let eos = token_id(md, "tokenizer.ggml.eos_token_id", n)?;
    let unk = token_id(md, "tokenizer.ggml.unknown_token_id", n)?;
    let pad = token_id(md, "tokenizer.ggml.padding_token_id", n)?;
    let mut eos_ids: Vec<u32> = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = token_id(md, key, n)? {
            let id = id as u32;
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
    }
    let add_bos = md.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
    let add_eos = md.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);

    let mut added_tokens = Vec::new();
    let mut added_decoder = serde_json::Map::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty != token_type::CONTROL && ty != token_type::USER_DEFINED {
            continue;
        }
        let special = ty == token_type::CONTROL;
        // Control tokens are matched in the raw text. User-defined ones are matched where
        // SentencePiece matches them, after normalization, except under a prepended `▁`
        // (which the normalizer would also put in front of the token itself): there, as in
        // llama.cpp, in the raw text.
        let normalized = !special && (kind == Kind::ByteLevel || add_prefix_space == Some(false));
        let entry = json!({
            "id": id,
            "content": tok,
            "single_word": false,
            "lstrip": false,
            "rstrip": false,
            "normalized": normalized,
            "special": special,
        });
        added_decoder.insert(
            id.to_string(),
            json!({
                "content": tok,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": normalized,
                "special": special,
            }),
        );
        added_tokens.push(entry);
    }

    // ---- post-processor: BOS/EOS only when the GGUF asks for them
    let post_processor = if add_bos || add_eos {
        template_processing(
            &tokens,
            add_bos.then_some(bos).flatten(),
            add_eos.then_some(eos).flatten(),
        )
    } else if kind == Kind::ByteLevel {
        json!({
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": false,
            "use_regex": true,
        })
    } else {
        Value::Null
    };

    // transformers' default where the file does not say: a prepended space for SentencePiece,
    // none for byte-level BPE.
    let prefix = add_prefix_space.unwrap_or(kind == Kind::SentencePiece);
    let (normalizer, pre_tokenizer, decoder) = match kind {
        Kind::ByteLevel => (
            Value::Null,
            byte_level_pre_tokenizer(pre, prefix)?,
            json!({
                "type": "ByteLevel",
                "add_prefix_space": true,
                "trim_offsets": true,
                "use_regex": true,
            }),
        ),
        Kind::SentencePiece => {
            let mut normalizers = Vec::new();
            if prefix {
                normalizers.push(json!({ "type": "Prepend", "prepend": SPM_SPACE }));
            }
            normalizers.push(json!({
                "type": "Replace",
                "pattern": { "String": " " },
                "content": SPM_SPACE,
            }));
            let mut decoders = vec![
                json!({ "type": "ByteFallback" }),
                json!({ "type": "Fuse" }),
                json!({
                    "type": "Replace",
                    "pattern": { "String": SPM_SPACE },
                    "content": " ",
                }),
            ];
            if prefix {
                decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
            }
            (
                json!({ "type": "Sequence", "normalizers": normalizers }),
                Value::Null,
                json!({ "type": "Sequence", "decoders": decoders }),
            )
        }
    };

    let spm = kind == Kind::SentencePiece;
    let tokenizer_json = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens,
        normalizer,
        pre_tokenizer,
        post_processor,
        decoder,
        model: BpeModel {
            kind: "BPE",
            dropout: None,
            unk_token: if spm {
                unk.and_then(|i| tokens.get(i).copied())
            } else {
                None
            },
            continuing_subword_prefix: None,
            end_of_word_suffix: None,
            fuse_unk: spm,
            byte_fallback: spm,
            ignore_merges: false,
            vocab: Vocab(&tokens),
            merges: &merges,
        },
    };
    let tokenizer_json =
        serde_json::to_string_pretty(&tokenizer_json).map_err(|e| GgufError::Json {
            file: "tokenizer.json",
            source: e,
        })?;

    let name = |id: Option<usize>| -> Value {
        id.and_then(|i| tokens.get(i))
            .map(|t| Value::String(t.to_string()))
            .unwrap_or(Value::Null)
    };
    let chat_template = md.get_str("tokenizer.chat_template").map(str::to_string);
    let mut config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": prefix,
        "added_tokens_decoder": added_decoder,
        "bos_token": name(bos),
        "eos_token": name(eos),
        "unk_token": name(unk),
        "pad_token": name(pad),
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(obj) = config.as_object_mut() {
        if spm {
            obj.insert("legacy".into(), json!(true));
        }
        if let Some(len) = model_max_length {
            obj.insert("model_max_length".into(), json!(len));
        }
        if let Some(t) = &chat_template {
            obj.insert("chat_template".into(), json!(t));
        }
    }

    Ok(HfTokenizer {
        tokenizer_json,
        tokenizer_config: config,
        chat_template,
        vocab_size: tokens.len(),
        n_merges: merges.len(),
        merges_derived,
        model: model.to_string(),
        pre: pre.to_string(),
        eos_ids,
    })
}

/// `tokenizer.ggml.merges`: "a b" pairs of vocabulary tokens.
fn parse_merges<'a>(
    raw: &[&'a str],
    vocab: &HashSet<&str>,
) -> Result<Vec<[&'a str; 2]>, GgufError> {
    let mut merges = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let mut parts = m.split(' ');
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(GgufError::BadTokenizer(format!(
                "merge #{i} {m:?} is not two tokens separated by one space"
            )));
        };
        for part in [a, b] {
            if !vocab.contains(part) {
                return Err(GgufError::BadTokenizer(format!(
                    "merge #{i} {m:?} uses {part:?}, which is not in the vocabulary"
                )));
            }
        }
        merges.push([a, b]);
    }
    Ok(merges)
}

/// `tokenizer.ggml.scores`, one per token.
fn scores(md: &Metadata<'_>, n: usize) -> Result<Vec<f64>, GgufError> {
    let key = "tokenizer.ggml.scores";
    let arr = md
        .get_array(key)
        .ok_or_else(|| GgufError::MissingMetadata {
            key: format!("{key} (a SentencePiece vocabulary without merges needs its scores)"),
        })?;
    let v = arr
        .to_f64_vec()
        .ok_or_else(|| GgufError::WrongMetadataType {
            key: key.into(),
            expected: "array of floats",
            found: format!("array of {}", arr.elem_type()),
        })?;
    if v.len() != n {
        return Err(meta_err(key, format!("{} entries for {n} tokens", v.len())));
    }
    if let Some(i) = v.iter().position(|s| s.is_nan()) {
        return Err(meta_err(key, format!("the score of token {i} is NaN")));
    }
    Ok(v)
}

/// BPE merges from a SentencePiece vocabulary, as transformers derives them
/// (`integrations/ggml.py`, `GGUFTokenizerSkeleton`): for each token, every
/// split into two vocabulary tokens (at character boundaries), ordered by the
/// two parts' scores (descending, stable); then all of them ordered by the
/// whole token's score (descending, stable). A merge's rank thus follows the
/// score of the token it makes, which is SentencePiece's BPE order.
pub fn derive_merges<'t>(tokens: &[&'t str], scores: &[f64]) -> Vec<[&'t str; 2]> {
    // transformers' `{token: score}`: the last score of a repeated token, in first-seen order.
    let mut score_of: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (&t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    // Python compares floats: -0.0 == 0.0, so no total order here.
    let desc = |a: f64, b: f64| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    let mut merges: Vec<([&'t str; 2], f64)> = Vec::new();
    let mut local: Vec<[&'t str; 2]> = Vec::new();
    for &token in &order {
        let score = score_of[token];
        local.clear();
        for (i, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(i);
            if score_of.contains_key(l) && score_of.contains_key(r) {
                local.push([l, r]);
            }
        }
        local.sort_by(|a, b| {
            desc(score_of[a[0]], score_of[b[0]]).then(desc(score_of[a[1]], score_of[b[1]]))
        });
        merges.extend(local.iter().map(|&m| (m, score)));
    }
    merges.sort_by(|a, b| desc(a.1, b.1));
    merges.into_iter().map(|(m, _)| m).collect()
}

/// A `TemplateProcessing` post-processor putting `bos` before and `eos` after each sequence
/// (transformers' `LlamaTokenizerFast.update_post_processor`).
fn template_processing(tokens: &[&str], bos: Option<usize>, eos: Option<usize>) -> Value {
    let mut specials = serde_json::Map::new();
    for id in bos.into_iter().chain(eos) {
        let tok = tokens.get(id).copied().unwrap_or_default();
        specials.insert(
            tok.to_string(),
            json!({ "id": tok, "ids": [id], "tokens": [tok] }),
        );
    }
    let piece = |seq: &str| {
        let type_id = if seq == "B" { 1 } else { 0 };
        let special = |id: usize| {
            let tok = tokens.get(id).copied().unwrap_or_default();
            json!({ "SpecialToken": { "id": tok, "type_id": type_id } })
        };
        let mut out = Vec::new();
        out.extend(bos.map(special));
        out.push(json!({ "Sequence": { "id": seq, "type_id": type_id } }));
        out.extend(eos.map(special));
        out
    };
    let single = piece("A");
    let mut pair = piece("A");
    pair.extend(piece("B"));
    json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_merged_tokens_score() {
        // "ab" (-1) before "abc" (-2) before "bc" (-3); "abc" splits as "a"+"bc" and "ab"+"c",
        // the split with the better-scored left part first.
        let tokens = ["a", "b", "c", "ab", "bc", "abc", "▁"];
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0, 0.0];
        let m = derive_merges(&tokens, &scores);
        assert_eq!(m, vec![["a", "b"], ["a", "bc"], ["ab", "c"], ["b", "c"]]);
    }

    #[test]
    fn merges_split_at_characters_not_bytes() {
        let tokens = ["é", "▁", "▁é", "\u{1F642}"];
        let scores = [0.0, 0.0, -1.0, 0.0];
        assert_eq!(derive_merges(&tokens, &scores), vec![["▁", "é"]]);
    }
}
