//! GGUF → Hugging Face folder, for every family the model description (`cllm-model`) knows:
//! tensor names, shapes and the rows llama.cpp permuted all come from its tensor table, and the
//! written `config.json` is checked by the same config mapping the runtime reads.
//!
//! llama.cpp's layout changes are undone as transformers' own GGUF loader undoes them, so the
//! weights are bit-identical to its conversion (dequantized in float32, then rounded to bf16):
//! the q/k rows of the families its converter permutes ([`Family::gguf_permutes_qk`]), and the
//! one its converter adds to the norm weights of a family whose norms act as `1 + w`
//! ([`Family::norm_weight_offset`]: `w - 1` in float32). Phi-3's long-RoPE factor tensors go
//! into `config.json`.
//!
//! Writes `model.safetensors` (bf16), `config.json`, `generation_config.json`,
//! `tokenizer.json`, `tokenizer_config.json` and, where the file has a chat template,
//! `chat_template.jinja`, into a temporary sibling of the output folder, then renames it into
//! place, so an interrupted import leaves nothing under the final name.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cllm_model::tensors::RopeRows;
use cllm_model::{Family, ModelConfig, Module, Part, Role, TensorId};
use rayon::prelude::*;
use safetensors::{Dtype, View};
use serde_json::json;

use crate::dequant::{dequantize, dequantize_into};
use crate::error::GgufError;
use crate::hparams::{config_json, optional_u64, ConfigFacts, HyperParams, LongRopeFactors};
use crate::reader::{GgufFile, Limits, TensorInfo};
use crate::tokenizer::{build_hf_tokenizer, token_type};
use crate::types::GgmlType;

/// What [`import`] wrote.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// Number of tensors written to `model.safetensors`.
    pub tensors: usize,
    /// `general.architecture`.
    pub architecture: String,
    /// The family the model was imported as (`model_type` in `config.json`).
    pub family: Family,
    /// Total size of the files written.
    pub bytes_written: u64,
    /// The output folder.
    pub out_dir: PathBuf,
    /// Number of source tensors per ggml type (`"Q4_1" -> 210`).
    pub source_types: BTreeMap<String, usize>,
    /// Whether the output embedding is tied to the input one (no `output.weight`).
    pub tie_word_embeddings: bool,
    /// Number of tokens.
    pub vocab_size: usize,
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece BPE).
    pub tokenizer_model: String,
    /// Number of BPE merges.
    pub n_merges: usize,
    /// Whether the merges were derived from the token scores (the file had none).
    pub merges_derived: bool,
    /// `tokenizer.ggml.pre`, which chose the pre-tokenizer.
    pub pre_tokenizer: String,
    /// Things that were skipped or guessed.
    pub warnings: Vec<String>,
}

/// Options for [`import_with`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Parser limits.
    pub limits: Limits,
}

/// How a tensor's rows must be reordered on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowPermutation {
    /// Rows are kept.
    None,
    /// Undo llama.cpp's rotary permutation of `attn_q` (with `n_head` heads).
    Query,
    /// Undo llama.cpp's rotary permutation of `attn_k` (with `n_head_kv` heads).
    Key,
}

/// The Hugging Face name of a llama.cpp tensor, and the row permutation to undo in a family
/// whose q and k rows llama.cpp permutes ([`Family::gguf_permutes_qk`]); `None` for names the
/// model description does not know.
pub fn hf_tensor_name(gguf_name: &str, family: Family) -> Option<(String, RowPermutation)> {
    let id = TensorId::parse_gguf(gguf_name, family)?;
    let perm = match id.module.gguf_rows().filter(|_| family.gguf_permutes_qk()) {
        Some(RopeRows::Query) => RowPermutation::Query,
        Some(RopeRows::Key) => RowPermutation::Key,
        None => RowPermutation::None,
    };
    Some((id.hf_name(), perm))
}

/// Undoes llama.cpp's `permute` of Q/K rows: llama.cpp stores, within each
/// head, the rotary pairs interleaved (`reshape(n_head, 2, d/2).swapaxes`);
/// Hugging Face keeps the two halves apart. `w` is row-major with `rows`
/// rows of `cols` values; `rows` must be a multiple of `2 * n_head`.
///
/// Output row `h*hd + j*hd/2 + k` is input row `h*hd + 2k + j`.
pub fn unpermute_rows<T: Copy + Default + Send + Sync>(
    w: &[T],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Option<Vec<T>> {
    gather_rows(w, rows, cols, n_head, |h, r, hd, half| {
        h * hd + 2 * (r % half) + r / half
    })
}

/// llama.cpp's forward permutation (the inverse of [`unpermute_rows`]):
/// output row `h*hd + 2k + j` is input row `h*hd + j*hd/2 + k`.
pub fn permute_rows<T: Copy + Default + Send + Sync>(
    w: &[T],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Option<Vec<T>> {
    gather_rows(w, rows, cols, n_head, |h, r, hd, half| {
        h * hd + (r % 2) * half + r / 2
    })
}

/// Output row `h*hd + r` (head `h`, row `r` within it) is input row `src(h, r, hd, hd/2)`.
fn gather_rows<T: Copy + Default + Send + Sync>(
    w: &[T],
    rows: usize,
    cols: usize,
    n_head: usize,
    src: impl Fn(usize, usize, usize, usize) -> usize + Sync,
) -> Option<Vec<T>> {
    if n_head == 0
        || !rows.is_multiple_of(2 * n_head)
        || rows.checked_mul(cols)? != w.len()
        || cols == 0
    {
        return None;
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![T::default(); w.len()];
    out.par_chunks_exact_mut(cols)
        .enumerate()
        .for_each(|(dst, row)| {
            let s = src(dst / hd, dst % hd, hd, half);
            if let Some(s) = w.get(s * cols..(s + 1) * cols) {
                row.copy_from_slice(s);
            }
        });
    Some(out)
}

/// Converts f32 values to little-endian bf16 bytes, rounding to nearest even.
pub fn f32_to_bf16_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * 2];
    out.par_chunks_mut(2 * 65536)
        .zip(values.par_chunks(65536))
        .for_each(|(o, v)| {
            for (dst, &x) in o.chunks_exact_mut(2).zip(v) {
                dst.copy_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes());
            }
        });
    out
}

/// What is done to a tensor's float32 values before they are rounded to bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// Nothing.
    Keep,
    /// llama.cpp's rotary permutation of the q or k rows, with this many heads.
    Unpermute(usize),
    /// The one llama.cpp's converter added to a `1 + w` norm: `w - 1` in float32, as
    /// transformers' `Gemma2TensorProcessor` subtracts it.
    SubtractOne,
}

/// One output tensor, converted when safetensors asks for its bytes.
struct LazyBf16<'a> {
    name: &'a str,
    data: &'a [u8],
    ty: GgmlType,
    shape: Vec<usize>,
    n_elements: usize,
    undo: Undo,
    /// The first conversion error (the file written alongside is discarded).
    error: &'a Mutex<Option<GgufError>>,
}

impl LazyBf16<'_> {
    fn convert(&self) -> Result<Vec<u8>, GgufError> {
        let mut f = vec![0f32; self.n_elements];
        dequantize_into(self.ty, self.data, &mut f).map_err(|e| match e {
            GgufError::UnsupportedTensorType { ty, .. } => GgufError::UnsupportedTensorType {
                tensor: self.name.to_string(),
                ty,
            },
            e => e,
        })?;
        match self.undo {
            Undo::Keep => {}
            Undo::Unpermute(n_head) => {
                let rows = self.shape.first().copied().unwrap_or(0);
                let cols = self.shape.iter().skip(1).product::<usize>();
                f = unpermute_rows(&f, rows, cols, n_head).ok_or_else(|| {
                    GgufError::BadTensorShape {
                        tensor: self.name.to_string(),
                        shape: self.shape.iter().map(|&d| d as u64).collect(),
                        reason: format!("the rotary permutation with {n_head} heads"),
                    }
                })?;
            }
            Undo::SubtractOne => f.par_iter_mut().for_each(|x| *x -= 1.0),
        }
        Ok(f32_to_bf16_bytes(&f))
    }
}

impl View for LazyBf16<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::BF16
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.convert() {
            Ok(v) => Cow::Owned(v),
            Err(e) => {
                if let Ok(mut slot) = self.error.lock() {
                    slot.get_or_insert(e);
                }
                Cow::Owned(vec![0u8; self.data_len()])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.n_elements * 2
    }
}

struct Planned<'f> {
    hf_name: String,
    info: &'f TensorInfo,
    shape: Vec<usize>,
    undo: Undo,
}

fn usize_of(tensor: &str, v: u64) -> Result<usize, GgufError> {
    usize::try_from(v).map_err(|_| GgufError::ByteSizeOverflow {
        tensor: tensor.to_string(),
    })
}

/// Phi-3's long-RoPE factors, which become `rope_scaling` in `config.json`.
const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";
const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";

/// Llama 3.1+'s per-frequency RoPE factors, which become `rope_scaling` in `config.json`.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Each tensor of the file by what it is (the model description's llama.cpp names for
/// `family`), leaving out the RoPE tensors that are configuration, not weights:
/// `rope_freqs.weight` and Phi-3's factors (read by [`read_f32`]).
fn tensor_ids<'f>(
    file: &'f GgufFile<'_>,
    family: Family,
) -> Result<Vec<(&'f TensorInfo, TensorId)>, GgufError> {
    let mut out = Vec::with_capacity(file.tensors().len());
    for t in file.tensors() {
        match t.name.as_str() {
            ROPE_FREQS => continue,
            ROPE_FACTORS_LONG | ROPE_FACTORS_SHORT if family == Family::Phi3 => continue,
            _ => {}
        }
        let id = TensorId::parse_gguf(&t.name, family).ok_or_else(|| {
            GgufError::UnknownTensorName(format!("{} (in a {} model)", t.name, family.gguf()))
        })?;
        out.push((t, id));
    }
    Ok(out)
}

/// The values of tensor `name`, if the file has it.
fn read_f32(file: &GgufFile<'_>, name: &str) -> Result<Option<Vec<f32>>, GgufError> {
    let Some(t) = file.tensor(name) else {
        return Ok(None);
    };
    let n = usize_of(name, t.shape().iter().product())?;
    dequantize(t.ggml_type, file.tensor_data(t), n)
        .map(Some)
        .map_err(|e| match e {
            GgufError::UnsupportedTensorType { ty, .. } => GgufError::UnsupportedTensorType {
                tensor: name.to_string(),
                ty,
            },
            e => e,
        })
}

/// Phi-3's `rope_factors_long.weight` and `rope_factors_short.weight`, both or neither.
fn rope_factors(file: &GgufFile<'_>) -> Result<Option<LongRopeFactors>, GgufError> {
    let read = |name: &str| read_f32(file, name);
    match (read(ROPE_FACTORS_LONG)?, read(ROPE_FACTORS_SHORT)?) {
        (Some(long), Some(short)) => Ok(Some(LongRopeFactors { long, short })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(GgufError::MissingTensor(ROPE_FACTORS_SHORT.into())),
        (None, Some(_)) => Err(GgufError::MissingTensor(ROPE_FACTORS_LONG.into())),
    }
}

/// Maps and checks every tensor against the shapes `cfg` gives it, and that the model is
/// complete; nothing is converted yet.
fn plan<'f>(
    tensors: &[(&'f TensorInfo, TensorId)],
    cfg: &ModelConfig,
    p: &HyperParams,
) -> Result<Vec<Planned<'f>>, GgufError> {
    let mut out = Vec::with_capacity(tensors.len());
    let mut seen = HashMap::new();
    let family = cfg.family;
    for &(t, id) in tensors {
        if let Some(layer) = id.layer {
            if layer as u64 >= p.n_layer {
                return Err(GgufError::BadTensorShape {
                    tensor: t.name.clone(),
                    shape: t.shape(),
                    reason: format!("a model of {} layers (layer {layer})", p.n_layer),
                });
            }
        }
        if !t.ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedTensorType {
                tensor: t.name.clone(),
                ty: t.ggml_type,
            });
        }
        let shape_u64 = t.shape();
        let expected = id.module.shape(cfg, id.part);
        if expected != shape_u64 {
            return Err(GgufError::BadTensorShape {
                tensor: t.name.clone(),
                shape: shape_u64,
                reason: format!(
                    "the expected shape {expected:?} from the {}.* metadata",
                    family.gguf()
                ),
            });
        }
        let heads = match id.module.gguf_rows().filter(|_| family.gguf_permutes_qk()) {
            None => None,
            Some(RopeRows::Query) => Some(usize_of(&t.name, p.n_head)?),
            Some(RopeRows::Key) => Some(usize_of(&t.name, p.n_head_kv)?),
        };
        let undo = match heads {
            Some(h) => {
                let rows = shape_u64.first().copied().unwrap_or(0);
                if rows % (2 * h as u64) != 0 {
                    return Err(GgufError::BadTensorShape {
                        tensor: t.name.clone(),
                        shape: shape_u64,
                        reason: format!("the rotary permutation with {h} heads"),
                    });
                }
                Undo::Unpermute(h)
            }
            None if family.norm_weight_offset() && id.module.role() == Role::Norm => {
                Undo::SubtractOne
            }
            None => Undo::Keep,
        };
        let shape = shape_u64
            .iter()
            .map(|&d| usize_of(&t.name, d))
            .collect::<Result<Vec<_>, _>>()?;
        let hf_name = id.hf_name();
        if let Some(prev) = seen.insert(hf_name.clone(), t.name.clone()) {
            return Err(GgufError::DuplicateTensor {
                name: format!("{hf_name} (from {prev} and {})", t.name),
            });
        }
        out.push(Planned {
            hf_name,
            info: t,
            shape,
            undo,
        });
    }
    // Every tensor the config's model has must be there.
    for spec in cfg.tensors() {
        if !seen.contains_key(&spec.name) {
            return Err(GgufError::MissingTensor(format!(
                "{} ({})",
                spec.id.gguf_name(family),
                spec.name
            )));
        }
    }
    Ok(out)
}

/// The family a GGUF architecture is imported as. llama.cpp writes Mistral's models (v0.1 to
/// v0.3) as `llama`, with no sliding window (it runs them with full attention): those whose
/// `general.name` says Mistral become a `mistral` config (as transformers' loader does for
/// the name "mistral") with `sliding_window` null, the same computation.
fn family_of(arch: &str, name: Option<&str>) -> Result<Family, GgufError> {
    let family = Family::from_gguf(arch)
        .ok_or_else(|| GgufError::UnsupportedArchitecture(arch.to_string()))?;
    let mistral = name.is_some_and(|n| n.to_ascii_lowercase().contains("mistral"));
    Ok(if family == Family::Llama && mistral {
        Family::Mistral
    } else {
        family
    })
}

/// Control tokens llama.cpp stops generation at whatever the file's ids say (its
/// end-of-generation list in `llama-vocab.cpp`, the end-of-turn entries).
const END_OF_TURN: [&str; 5] = [
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
];

/// Checks that `out_dir` is absent or an empty folder.
fn check_out_dir(out_dir: &Path) -> Result<(), GgufError> {
    match fs::symlink_metadata(out_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GgufError::io(out_dir, e)),
        Ok(m) if !m.is_dir() => Err(GgufError::OutDirNotDir(out_dir.to_path_buf())),
        Ok(_) => {
            let mut entries = fs::read_dir(out_dir).map_err(|e| GgufError::io(out_dir, e))?;
            if entries.next().is_some() {
                Err(GgufError::OutDirNotEmpty(out_dir.to_path_buf()))
            } else {
                Ok(())
            }
        }
    }
}

fn write_json(dir: &Path, file: &'static str, value: &serde_json::Value) -> Result<(), GgufError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| GgufError::Json { file, source: e })?;
    write_file(dir, file, text.as_bytes())
}

fn write_file(dir: &Path, file: &str, bytes: &[u8]) -> Result<(), GgufError> {
    let path = dir.join(file);
    fs::write(&path, bytes).map_err(|e| GgufError::io(path, e))
}

/// Imports a GGUF file as a Hugging Face folder (see the module docs).
pub fn import(gguf_path: &Path, out_dir: &Path) -> Result<ImportSummary, GgufError> {
    import_with(gguf_path, out_dir, &ImportOptions::default())
}

/// [`import`] with options.
pub fn import_with(
    gguf_path: &Path,
    out_dir: &Path,
    options: &ImportOptions,
) -> Result<ImportSummary, GgufError> {
    check_out_dir(out_dir)?;

    let file = fs::File::open(gguf_path).map_err(|e| GgufError::io(gguf_path, e))?;
    // SAFETY: the map is read-only; the file must not be truncated while we
    // hold it (the usual contract of memory-mapped model files).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| GgufError::io(gguf_path, e))?;
    let gguf = GgufFile::parse(&map, &options.limits)?;
    let md = gguf.metadata();

    let arch = gguf
        .architecture()
        .ok_or_else(|| GgufError::MissingMetadata {
            key: "general.architecture".into(),
        })?;
    let family = family_of(arch, md.get_str("general.name"))?;
    let p = HyperParams::from_metadata(md, arch, family)?;
    let mut warnings = Vec::new();

    let tok = build_hf_tokenizer(md, p.n_ctx)?;
    let tensors = tensor_ids(&gguf, family)?;
    let find = |m: Module| {
        tensors
            .iter()
            .find(|(_, id)| id.module == m)
            .map(|(t, _)| *t)
    };
    let vocab_size = match optional_u64(md, &format!("{arch}.vocab_size"))? {
        Some(v) => v,
        // llama.cpp pads the vocabulary to the embedding's rows; the rows are the model's.
        None => match find(Module::Embed) {
            Some(t) => t.shape().first().copied().unwrap_or(0),
            None => tok.vocab_size as u64,
        },
    };
    if vocab_size != tok.vocab_size as u64 {
        warnings.push(format!(
            "the model has {vocab_size} token embeddings but the tokenizer {} tokens",
            tok.vocab_size
        ));
    }

    let has = |f: &dyn Fn(&TensorId) -> bool| tensors.iter().any(|(_, id)| f(id));
    let tied = !has(&|id| id.module == Module::LmHead);
    let token = |key: &str| md.get_u64(key);
    let facts = ConfigFacts {
        vocab_size,
        tied,
        // A bias on the o projection means every attention projection has one
        // (`attention_bias`); q/k/v biases alone are the family's own (Qwen2).
        attention_bias: has(&|id| id.module == Module::OProj && id.part == Part::Bias),
        mlp_bias: has(&|id| id.module.role() == Role::Mlp && id.part == Part::Bias),
        bos: token("tokenizer.ggml.bos_token_id"),
        eos: token("tokenizer.ggml.eos_token_id"),
        pad: token("tokenizer.ggml.padding_token_id"),
        rope_factors: if family == Family::Phi3 {
            rope_factors(&gguf)?
        } else {
            None
        },
        rope_freqs: read_f32(&gguf, ROPE_FREQS)?,
    };
    let config = config_json(md, arch, family, &p, &facts, &mut warnings)?;
    // The config the runtime will read; its tensor table checks every tensor below.
    let cfg =
        ModelConfig::from_json(&config.to_string()).map_err(|e| GgufError::BadMetadataValue {
            key: format!("{arch}.*"),
            reason: format!("the config.json it gives is refused: {e}"),
        })?;
    let planned = plan(&tensors, &cfg, &p)?;
    let mut source_types: BTreeMap<String, usize> = BTreeMap::new();
    for pl in &planned {
        *source_types
            .entry(pl.info.ggml_type.name().to_string())
            .or_default() += 1;
    }

    // generation_config.json: the file's EOS and end-of-turn ids, and the end-of-turn control
    // tokens llama.cpp stops at by their text.
    let mut eos_ids = tok.eos_ids.clone();
    if let (Some(tokens), Some(types)) = (
        md.get_array("tokenizer.ggml.tokens")
            .and_then(|a| a.as_strs()),
        md.get_array("tokenizer.ggml.token_type")
            .and_then(|a| a.to_i64_vec()),
    ) {
        for (id, (t, ty)) in tokens.iter().zip(types).enumerate() {
            if ty == token_type::CONTROL
                && END_OF_TURN.contains(t)
                && !eos_ids.contains(&(id as u32))
            {
                eos_ids.push(id as u32);
            }
        }
    }
    let mut generation_config = json!({
        "bos_token_id": facts.bos,
        "eos_token_id": match eos_ids.as_slice() {
            [] => json!(null),
            [one] => json!(one),
            many => json!(many),
        },
    });
    if let (Some(obj), Some(pad)) = (generation_config.as_object_mut(), facts.pad) {
        obj.insert("pad_token_id".into(), json!(pad));
    }

    // ---- write into a temporary sibling, then rename
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| GgufError::io(&parent, e))?;
    let base = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{base}.importing-"))
        .tempdir_in(&parent)
        .map_err(|e| GgufError::io(&parent, e))?;
    let dir = tmp.path();

    let error = Mutex::new(None);
    let views: Vec<(String, LazyBf16<'_>)> = planned
        .iter()
        .map(|pl| {
            let view = LazyBf16 {
                name: &pl.info.name,
                data: gguf.tensor_data(pl.info),
                ty: pl.info.ggml_type,
                shape: pl.shape.clone(),
                n_elements: pl.shape.iter().product(),
                undo: pl.undo,
                error: &error,
            };
            (pl.hf_name.clone(), view)
        })
        .collect();
    let n_tensors = views.len();
    // One metadata entry: the safetensors crate writes a map's entries in its hash order, so a
    // second one would make two imports of one file differ in their header bytes.
    let info = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st_path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(info), &st_path)
        .map_err(|e| GgufError::Safetensors(e.to_string()))?;
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }

    write_json(dir, "config.json", &config)?;
    write_json(dir, "generation_config.json", &generation_config)?;
    write_file(dir, "tokenizer.json", tok.tokenizer_json.as_bytes())?;
    write_json(dir, "tokenizer_config.json", &tok.tokenizer_config)?;
    if let Some(t) = &tok.chat_template {
        // transformers 5 keeps the template in its own file.
        write_file(dir, "chat_template.jinja", t.as_bytes())?;
    }

    // safetensors writes through a private (0600) temporary file: give the
    // weights the same permissions as the other files (umask applied).
    #[cfg(unix)]
    if let Ok(m) = fs::metadata(dir.join("config.json")) {
        let _ = fs::set_permissions(&st_path, m.permissions());
    }

    // Make the contents durable before the rename publishes them.
    let mut bytes_written = 0u64;
    for entry in fs::read_dir(dir).map_err(|e| GgufError::io(dir, e))? {
        let path = entry.map_err(|e| GgufError::io(dir, e))?.path();
        let f = fs::File::open(&path).map_err(|e| GgufError::io(&path, e))?;
        f.sync_all().map_err(|e| GgufError::io(&path, e))?;
        bytes_written += f.metadata().map_err(|e| GgufError::io(&path, e))?.len();
    }

    // An empty folder may have appeared or been there: rename replaces an
    // empty directory, and fails on a non-empty one.
    check_out_dir(out_dir)?;
    let tmp_path = tmp.keep();
    if let Err(e) = fs::rename(&tmp_path, out_dir) {
        let _ = fs::remove_dir_all(&tmp_path);
        return Err(GgufError::io(out_dir, e));
    }
    if let Ok(d) = fs::File::open(&parent) {
        let _ = d.sync_all();
    }

    Ok(ImportSummary {
        tensors: n_tensors,
        architecture: arch.to_string(),
        family,
        bytes_written,
        out_dir: out_dir.to_path_buf(),
        source_types,
        tie_word_embeddings: tied,
        vocab_size: tok.vocab_size,
        tokenizer_model: tok.model,
        n_merges: tok.n_merges,
        merges_derived: tok.merges_derived,
        pre_tokenizer: tok.pre,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let m = |n: &str| hf_tensor_name(n, Family::Llama);
        assert_eq!(
            m("token_embd.weight"),
            Some(("model.embed_tokens.weight".into(), RowPermutation::None))
        );
        assert_eq!(
            m("blk.12.attn_q.weight"),
            Some((
                "model.layers.12.self_attn.q_proj.weight".into(),
                RowPermutation::Query
            ))
        );
        assert_eq!(m("blk.0.attn_k.weight").unwrap().1, RowPermutation::Key);
        assert_eq!(
            m("blk.3.attn_output.weight").unwrap().0,
            "model.layers.3.self_attn.o_proj.weight"
        );
        assert_eq!(
            m("blk.3.ffn_norm.weight").unwrap().0,
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            m("blk.3.attn_norm.weight").unwrap().0,
            "model.layers.3.input_layernorm.weight"
        );
        assert_eq!(m("output_norm.weight").unwrap().0, "model.norm.weight");
        assert_eq!(m("output.weight").unwrap().0, "lm_head.weight");
        assert_eq!(m("blk.01.attn_q.weight"), None);
        assert_eq!(m("blk.x.attn_q.weight"), None);
        assert_eq!(m("blk.1.attn_q.scale"), None);
        assert_eq!(m("blk.1.attn_qkv.weight"), None);
        assert_eq!(m("rope_freqs.weight"), None);
    }

    /// The permutation written in numpy terms, on row indices:
    /// `w.reshape(n_head, 2, d/2).swapaxes(1, 2).reshape(d)`.
    fn numpy_permute(rows: usize, n_head: usize) -> Vec<usize> {
        let hd = rows / n_head;
        let half = hd / 2;
        let mut out = Vec::new();
        // after swapaxes the index order is (h, k, j) over shape (n_head, half, 2)
        for h in 0..n_head {
            for k in 0..half {
                for j in 0..2 {
                    out.push(h * hd + j * half + k);
                }
            }
        }
        out
    }

    #[test]
    fn permutation_round_trip_and_matches_numpy() {
        let (rows, cols, n_head) = (24, 3, 3);
        let w: Vec<u32> = (0..(rows * cols) as u32).collect();
        let permuted = permute_rows(&w, rows, cols, n_head).unwrap();
        let order = numpy_permute(rows, n_head);
        for (dst, &src) in order.iter().enumerate() {
            assert_eq!(
                &permuted[dst * cols..dst * cols + cols],
                &w[src * cols..src * cols + cols]
            );
        }
        assert_eq!(unpermute_rows(&permuted, rows, cols, n_head).unwrap(), w);
        // bad shapes
        assert!(unpermute_rows(&w, rows, cols, 5).is_none());
        assert!(unpermute_rows(&w, rows, cols, 0).is_none());
        assert!(unpermute_rows(&w[1..], rows, cols, 3).is_none());
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
        let halfway = f32::from_bits(0x3F80_8000);
        // just above halfway rounds up
        let above = f32::from_bits(0x3F80_8001);
        // odd mantissa at halfway rounds up to even
        let odd_half = f32::from_bits(0x3F81_8000);
        let b = f32_to_bf16_bytes(&[halfway, above, odd_half, -0.0]);
        assert_eq!(&b, &[0x80, 0x3F, 0x81, 0x3F, 0x82, 0x3F, 0x00, 0x80]);
    }
}
