//! `tokenizer.ggml.*` from a Hugging Face `tokenizer.json` and `tokenizer_config.json`: the
//! inverse of `cllm_gguf::tokenizer` for byte-level BPE (`gpt2`: Llama 3, Qwen, SmolLM).
//! SentencePiece vocabularies (`llama`: Llama 2, Mistral, Gemma, Phi-3) need per-token scores,
//! which a `tokenizer.json` does not carry; they are refused.

use serde_json::Value;

use cllm_gguf::tokenizer::token_type;
use cllm_gguf::writer::Value as G;

use crate::ExportError;

/// The split regexes the importer writes (and llama.cpp uses) for each `tokenizer.ggml.pre`.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn unsupported(msg: impl Into<String>) -> ExportError {
    ExportError::Unsupported(format!("tokenizer.json: {}", msg.into()))
}

/// What the tokenizer gives the rest of the export.
pub struct Vocab {
    pub metadata: Vec<(String, G)>,
    pub n_tokens: usize,
}

fn ty(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// `tokenizer.ggml.pre` for a byte-level pre-tokenizer, and its `add_prefix_space`.
fn pre_name(pre: &Value) -> Result<(&'static str, bool), ExportError> {
    let byte_level = |v: &Value| -> Option<(bool, bool)> {
        (ty(v) == "ByteLevel").then(|| {
            (
                v.get("use_regex").and_then(Value::as_bool).unwrap_or(true),
                v.get("add_prefix_space")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            )
        })
    };
    let regex = |v: &Value| -> Option<String> {
        (ty(v) == "Split")
            .then(|| v.pointer("/pattern/Regex").and_then(Value::as_str))
            .flatten()
            .map(str::to_string)
    };
    if let Some((true, prefix)) = byte_level(pre) {
        return Ok(("gpt-2", prefix));
    }
    if ty(pre) == "Sequence" {
        let parts = pre
            .get("pretokenizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let [a, b] = parts.as_slice() {
            let digits = ty(a) == "Digits"
                && a.get("individual_digits").and_then(Value::as_bool) == Some(true);
            match (digits, regex(a), byte_level(b)) {
                (true, _, Some((true, prefix))) => return Ok(("smollm", prefix)),
                (_, Some(r), Some((false, prefix))) => {
                    let name = match r.as_str() {
                        LLAMA3_REGEX => Some("llama-bpe"),
                        QWEN2_REGEX => Some("qwen2"),
                        GPT4O_REGEX => Some("gpt-4o"),
                        _ => None,
                    };
                    if let Some(n) = name {
                        return Ok((n, prefix));
                    }
                }
                _ => {}
            }
        }
    }
    Err(unsupported(format!(
        "a byte-level pre-tokenizer llama.cpp names (gpt-2, smollm, llama-bpe, qwen2, gpt-4o) \
         is needed; this one is {}",
        serde_json::to_string(pre).unwrap_or_default()
    )))
}

/// A special token named in `tokenizer_config.json` (a string or `{"content": ...}`).
fn named(cfg: &Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
    }
}

/// The tokenizer metadata for a model whose embedding has `n_embd_rows` rows; `config` is
/// `config.json` (token ids where the tokenizer config names none), `chat_template` the
/// separate `chat_template.jinja` where there is one.
pub fn metadata(
    tokenizer_json: &[u8],
    tokenizer_config: Option<&[u8]>,
    config: &Value,
    chat_template_file: Option<String>,
    n_embd_rows: usize,
) -> Result<Vocab, ExportError> {
    let tj: Value = serde_json::from_slice(tokenizer_json)
        .map_err(|e| unsupported(format!("not JSON: {e}")))?;
    let tc: Value = match tokenizer_config {
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| ExportError::Unsupported(format!("tokenizer_config.json: {e}")))?,
        None => Value::Null,
    };
    let model = tj.get("model").cloned().unwrap_or(Value::Null);
    if ty(&model) != "BPE" {
        return Err(unsupported(format!(
            "model type {:?}: only BPE vocabularies are exported",
            ty(&model)
        )));
    }
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported(
            "a SentencePiece-style vocabulary (byte fallback): GGUF's `llama` tokenizer needs \
             each token's SentencePiece score, which tokenizer.json does not have; not exported yet",
        ));
    }
    let (pre, add_prefix_space) = pre_name(tj.get("pre_tokenizer").unwrap_or(&Value::Null))?;

    // ---- tokens by id: the BPE vocabulary and the added tokens
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    let mut put = |id: usize, t: &str, kind: i64| -> Result<(), ExportError> {
        if id >= tokens.len() {
            tokens.resize(id + 1, None);
            types.resize(id + 1, token_type::UNUSED as i32);
        }
        match &tokens[id] {
            Some(prev) if prev != t => {
                Err(unsupported(format!("id {id} is both {prev:?} and {t:?}")))
            }
            _ => {
                tokens[id] = Some(t.to_string());
                types[id] = kind as i32;
                Ok(())
            }
        }
    };
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| unsupported("model.vocab is not an object"))?;
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| unsupported(format!("token {t:?} has no integer id")))?;
        put(id as usize, t, token_type::NORMAL)?;
    }
    for a in tj
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(t)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            return Err(unsupported("an added token without id or content"));
        };
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        let kind = if special {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        put(id as usize, t, kind)?;
    }
    if tokens.len() > n_embd_rows {
        return Err(unsupported(format!(
            "{} tokens but the embedding has {n_embd_rows} rows",
            tokens.len()
        )));
    }
    // Ids without a token, and rows beyond the vocabulary, as llama.cpp's converter pads them.
    tokens.resize(n_embd_rows, None);
    types.resize(n_embd_rows, token_type::UNUSED as i32);
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    {
        let mut seen = std::collections::HashSet::new();
        if let Some(t) = tokens.iter().find(|t| !seen.insert(t.as_str())) {
            return Err(unsupported(format!("token {t:?} appears twice")));
        }
    }
    let id_of = |t: &str| tokens.iter().position(|x| x == t);

    // ---- merges: "a b" strings, or [a, b] pairs in newer files
    let mut merges = Vec::new();
    for m in model
        .get("merges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = match m {
            Value::String(s) => s.clone(),
            Value::Array(p) => match p.as_slice() {
                [Value::String(a), Value::String(b)] => {
                    if a.contains(' ') || b.contains(' ') {
                        return Err(unsupported(format!(
                            "merge ({a:?}, {b:?}) has a space, which GGUF's \"a b\" form cannot \
                             carry"
                        )));
                    }
                    format!("{a} {b}")
                }
                _ => return Err(unsupported(format!("merge {m} is not two strings"))),
            },
            _ => return Err(unsupported(format!("merge {m} is not a string or pair"))),
        };
        merges.push(s);
    }

    // ---- special tokens: tokenizer_config's names, else config.json's ids
    let cfg_id = |key: &str| -> Option<usize> {
        match config.get(key)? {
            Value::Number(n) => n.as_u64().map(|v| v as usize),
            Value::Array(a) => a.first()?.as_u64().map(|v| v as usize),
            _ => None,
        }
    };
    let special = |name: &str, cfg_key: Option<&str>| -> Option<usize> {
        named(&tc, name)
            .and_then(|t| id_of(&t))
            .or_else(|| cfg_key.and_then(cfg_id))
    };
    let bos = special("bos_token", Some("bos_token_id"));
    let eos = special("eos_token", Some("eos_token_id"));
    let unk = special("unk_token", None);
    let pad = special("pad_token", Some("pad_token_id"));

    // add_bos / add_eos: the config's flags, else what the post-processor puts around a text.
    let post = tj.get("post_processor").unwrap_or(&Value::Null);
    let template_adds = |first: bool| -> bool {
        let single = post.get("single").and_then(Value::as_array);
        let piece = single.and_then(|s| if first { s.first() } else { s.last() });
        ty(post) == "TemplateProcessing" && piece.is_some_and(|p| p.get("SpecialToken").is_some())
    };
    let add_bos = tc
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| template_adds(true));
    let add_eos = tc
        .get("add_eos_token")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| template_adds(false));

    let chat_template = match tc.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
    .or(chat_template_file);

    let mut md: Vec<(String, G)> = vec![
        ("tokenizer.ggml.model".into(), G::str("gpt2")),
        ("tokenizer.ggml.pre".into(), G::str(pre)),
        ("tokenizer.ggml.tokens".into(), G::strs(&tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            G::Array(types.iter().map(|&t| G::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges".into(), G::strs(&merges)),
    ];
    for (key, id) in [
        ("bos", bos),
        ("eos", eos),
        ("unknown", unk),
        ("padding", pad),
    ] {
        if let Some(id) = id {
            md.push((format!("tokenizer.ggml.{key}_token_id"), G::U32(id as u32)));
        }
    }
    md.push(("tokenizer.ggml.add_bos_token".into(), G::Bool(add_bos)));
    md.push(("tokenizer.ggml.add_eos_token".into(), G::Bool(add_eos)));
    if add_prefix_space {
        md.push(("tokenizer.ggml.add_space_prefix".into(), G::Bool(true)));
    }
    if let Some(t) = chat_template {
        md.push(("tokenizer.chat_template".into(), G::Str(t)));
    }
    Ok(Vocab {
        metadata: md,
        n_tokens: tokens.len(),
    })
}
