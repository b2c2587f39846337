//! Hugging Face `tokenizer.json` / `tokenizer_config.json` from GGUF
//! tokenizer metadata (`tokenizer.ggml.*`).
//!
//! Only `tokenizer.ggml.model == "gpt2"` (byte-level BPE) is supported. The
//! split regex of the pre-tokenizer depends on `tokenizer.ggml.pre`, which
//! names the pre-tokenizer of the original Hugging Face tokenizer (the names
//! are llama.cpp's, see `llama-vocab.cpp`):
//!
//! * `default`, `gpt2`, ...: the GPT-2 regex (`ByteLevel` with `use_regex`).
//! * `smollm`, `starcoder`, `refact`, `codeshell`, ...: every digit split on
//!   its own (`\p{N}`), then the GPT-2 regex: `Digits(individual)` followed
//!   by `ByteLevel`, which is what SmolLM/StarCoder tokenizer.json files
//!   contain.
//! * `llama-bpe` / `llama3`, `qwen2`: their own split regexes, then
//!   `ByteLevel` without regex.

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

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer files for a Hugging Face folder.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    /// Contents of `tokenizer.json`.
    pub tokenizer_json: String,
    /// Contents of `tokenizer_config.json`.
    pub tokenizer_config: Value,
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// Number of merges.
    pub n_merges: usize,
    /// `tokenizer.ggml.pre` as found (or "default").
    pub pre: String,
}

/// `tokenizer.json`, with fields in the order the tokenizers library writes them.
#[derive(Serialize)]
struct TokenizerJson<'t> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<Value>,
    normalizer: Option<()>,
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

/// The pre-tokenizer for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str, add_prefix_space: bool) -> Result<Value, GgufError> {
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
        other => return Err(GgufError::UnsupportedPreTokenizer(other.to_string())),
    })
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
    if model != "gpt2" {
        return Err(GgufError::UnsupportedTokenizer(model.to_string()));
    }
    let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("default");

    // ---- vocabulary
    let tokens_key = "tokenizer.ggml.tokens";
    let tokens = required_strs(md, tokens_key)?;
    if tokens.is_empty() {
        return Err(meta_err(tokens_key, "empty vocabulary"));
    }
    {
        let mut seen = std::collections::HashMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            if let Some(first) = seen.insert(*t, id) {
                return Err(GgufError::BadTokenizer(format!(
                    "token {t:?} appears twice in the vocabulary (ids {first} and {id})"
                )));
            }
        }
    }

    let types_key = "tokenizer.ggml.token_type";
    let types: Vec<i64> = match md.get_array(types_key) {
        None => vec![token_type::NORMAL; tokens.len()],
        Some(a) => {
            let v = a.to_i64_vec().ok_or_else(|| GgufError::WrongMetadataType {
                key: types_key.into(),
                expected: "array of integers",
                found: format!("array of {}", a.elem_type()),
            })?;
            if v.len() != tokens.len() {
                return Err(meta_err(
                    types_key,
                    format!("{} entries for {} tokens", v.len(), tokens.len()),
                ));
            }
            v
        }
    };

    // ---- merges
    let merges_key = "tokenizer.ggml.merges";
    let merges_raw = required_strs(md, merges_key)?;
    let vocab_set: std::collections::HashSet<&str> = tokens.iter().copied().collect();
    let mut merges: Vec<[&str; 2]> = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let mut parts = m.split(' ');
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(GgufError::BadTokenizer(format!(
                "merge #{i} {m:?} is not two tokens separated by one space"
            )));
        };
        for part in [a, b] {
            if !vocab_set.contains(part) {
                return Err(GgufError::BadTokenizer(format!(
                    "merge #{i} {m:?} uses {part:?}, which is not in the vocabulary"
                )));
            }
        }
        merges.push([a, b]);
    }

    // ---- special / added tokens
    let n = tokens.len();
    let bos = token_id(md, "tokenizer.ggml.bos_token_id", n)?;
    let eos = token_id(md, "tokenizer.ggml.eos_token_id", n)?;
    let unk = token_id(md, "tokenizer.ggml.unknown_token_id", n)?;
    let pad = token_id(md, "tokenizer.ggml.padding_token_id", n)?;
    let add_bos = md.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
    let add_eos = md.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
    let add_prefix_space = md
        .get_bool("tokenizer.ggml.add_space_prefix")
        .unwrap_or(false);

    let mut added_tokens = Vec::new();
    let mut added_decoder = serde_json::Map::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty != token_type::CONTROL && ty != token_type::USER_DEFINED {
            continue;
        }
        let special = ty == token_type::CONTROL;
        let entry = json!({
            "id": id,
            "content": tok,
            "single_word": false,
            "lstrip": false,
            "rstrip": false,
            "normalized": !special,
            "special": special,
        });
        added_decoder.insert(
            id.to_string(),
            json!({
                "content": tok,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": !special,
                "special": special,
            }),
        );
        added_tokens.push(entry);
    }

    // ---- post-processor: BOS/EOS only when the GGUF asks for them
    let post_processor = if add_bos || add_eos {
        let mut specials = serde_json::Map::new();
        let mut wanted = Vec::new();
        if add_bos {
            wanted.extend(bos);
        }
        if add_eos {
            wanted.extend(eos);
        }
        for id in wanted {
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
            if add_bos {
                out.extend(bos.map(special));
            }
            out.push(json!({ "Sequence": { "id": seq, "type_id": type_id } }));
            if add_eos {
                out.extend(eos.map(special));
            }
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
    } else {
        json!({
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": false,
            "use_regex": true,
        })
    };

    let tokenizer_json = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens,
        normalizer: None,
        pre_tokenizer: pre_tokenizer(pre, add_prefix_space)?,
        post_processor,
        decoder: json!({
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": true,
            "use_regex": true,
        }),
        model: BpeModel {
            kind: "BPE",
            dropout: None,
            unk_token: None,
            continuing_subword_prefix: None,
            end_of_word_suffix: None,
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: false,
            vocab: Vocab(tokens),
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
    let mut config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": add_prefix_space,
        "added_tokens_decoder": added_decoder,
        "bos_token": name(bos),
        "eos_token": name(eos),
        "unk_token": name(unk),
        "pad_token": name(pad),
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(obj) = config.as_object_mut() {
        if let Some(len) = model_max_length {
            obj.insert("model_max_length".into(), json!(len));
        }
        if let Some(t) = md.get_str("tokenizer.chat_template") {
            obj.insert("chat_template".into(), json!(t));
        }
    }

    Ok(HfTokenizer {
        tokenizer_json,
        tokenizer_config: config,
        vocab_size: tokens.len(),
        n_merges: merges.len(),
        pre: pre.to_string(),
    })
}
