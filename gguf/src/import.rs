//! GGUF → Hugging Face folder, for every family the model description (`cllm-model`) knows:
//! tensor names, shapes and the rows llama.cpp permuted all come from its tensor table, and the
//! written `config.json` is checked by the same config mapping the runtime reads.
//!
//! Writes `model.safetensors` (bf16), `config.json`, `generation_config.json`,
//! `tokenizer.json` and `tokenizer_config.json` into a temporary sibling of
//! the output folder, then renames it into place, so an interrupted import
//! leaves nothing under the final name.

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

use crate::dequant::dequantize_into;
use crate::error::GgufError;
use crate::reader::{GgufFile, Limits, Metadata, TensorInfo};
use crate::tokenizer::build_hf_tokenizer;
use crate::types::GgmlType;

/// What [`import`] wrote.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// Number of tensors written to `model.safetensors`.
    pub tensors: usize,
    /// `general.architecture`.
    pub architecture: String,
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
    /// Number of BPE merges.
    pub n_merges: usize,
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

/// Hyper-parameters of a model, from the `<architecture>.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct HyperParams {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_ctx: Option<u64>,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
}

fn required_u64(md: &Metadata<'_>, key: &str) -> Result<u64, GgufError> {
    let v = md.get(key).ok_or_else(|| GgufError::MissingMetadata {
        key: key.to_string(),
    })?;
    v.as_u64().ok_or_else(|| GgufError::WrongMetadataType {
        key: key.to_string(),
        expected: "unsigned integer",
        found: v.type_description(),
    })
}

fn optional_u64(md: &Metadata<'_>, key: &str) -> Result<Option<u64>, GgufError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| GgufError::WrongMetadataType {
                key: key.to_string(),
                expected: "unsigned integer",
                found: v.type_description(),
            }),
    }
}

fn optional_f64(md: &Metadata<'_>, key: &str) -> Result<Option<f64>, GgufError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| GgufError::WrongMetadataType {
                key: key.to_string(),
                expected: "float",
                found: v.type_description(),
            }),
    }
}

fn nonzero(key: &str, v: u64) -> Result<u64, GgufError> {
    if v == 0 {
        Err(GgufError::BadMetadataValue {
            key: key.to_string(),
            reason: "must not be zero".into(),
        })
    } else {
        Ok(v)
    }
}

impl HyperParams {
    /// Reads `<arch>.*` hyper-parameters.
    pub fn from_metadata(md: &Metadata<'_>, arch: &str) -> Result<Self, GgufError> {
        let k = |s: &str| format!("{arch}.{s}");
        let n_layer = required_u64(md, &k("block_count"))?;
        let n_embd = nonzero(
            &k("embedding_length"),
            required_u64(md, &k("embedding_length"))?,
        )?;
        let n_ff = required_u64(md, &k("feed_forward_length"))?;
        let n_head = nonzero(
            &k("attention.head_count"),
            required_u64(md, &k("attention.head_count"))?,
        )?;
        let n_head_kv = match optional_u64(md, &k("attention.head_count_kv"))? {
            Some(v) => nonzero(&k("attention.head_count_kv"), v)?,
            None => n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(GgufError::BadMetadataValue {
                key: k("attention.head_count_kv"),
                reason: format!("{n_head_kv} does not divide the head count {n_head}"),
            });
        }
        let head_dim = match optional_u64(md, &k("attention.key_length"))? {
            Some(v) => v,
            None => match optional_u64(md, &k("rope.dimension_count"))? {
                Some(v) => v,
                None => n_embd / n_head,
            },
        };
        let head_dim = nonzero(&k("attention.key_length"), head_dim)?;
        if head_dim % 2 != 0 {
            return Err(GgufError::BadMetadataValue {
                key: k("rope.dimension_count"),
                reason: format!("head dimension {head_dim} is odd"),
            });
        }
        Ok(HyperParams {
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx: optional_u64(md, &k("context_length"))?,
            rope_theta: optional_f64(md, &k("rope.freq_base"))?.unwrap_or(10_000.0),
            rms_norm_eps: optional_f64(md, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        })
    }
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
pub fn hf_tensor_name(gguf_name: &str) -> Option<(String, RowPermutation)> {
    let id = TensorId::parse_gguf(gguf_name)?;
    let perm = match id.module.gguf_rows() {
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

/// One output tensor, converted when safetensors asks for its bytes.
struct LazyBf16<'a> {
    name: &'a str,
    data: &'a [u8],
    ty: GgmlType,
    shape: Vec<usize>,
    n_elements: usize,
    /// Heads of the Q/K permutation to undo.
    unpermute_heads: Option<usize>,
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
        if let Some(n_head) = self.unpermute_heads {
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
    unpermute_heads: Option<usize>,
}

fn usize_of(tensor: &str, v: u64) -> Result<usize, GgufError> {
    usize::try_from(v).map_err(|_| GgufError::ByteSizeOverflow {
        tensor: tensor.to_string(),
    })
}

/// Each tensor of the file by what it is (the model description's llama.cpp names), skipping
/// `rope_freqs.weight` with a warning.
fn tensor_ids<'f>(
    file: &'f GgufFile<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<(&'f TensorInfo, TensorId)>, GgufError> {
    let mut out = Vec::with_capacity(file.tensors().len());
    for t in file.tensors() {
        if t.name == "rope_freqs.weight" {
            warnings.push(
                "skipped rope_freqs.weight (llama3 rope scaling factors are not carried over)"
                    .into(),
            );
            continue;
        }
        let id = TensorId::parse_gguf(&t.name)
            .ok_or_else(|| GgufError::UnknownTensorName(t.name.clone()))?;
        out.push((t, id));
    }
    Ok(out)
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
                    cfg.family.gguf()
                ),
            });
        }
        let unpermute_heads = match id
            .module
            .gguf_rows()
            .filter(|_| cfg.family.gguf_permutes_qk())
        {
            None => None,
            Some(RopeRows::Query) => Some(usize_of(&t.name, p.n_head)?),
            Some(RopeRows::Key) => Some(usize_of(&t.name, p.n_head_kv)?),
        };
        if let Some(h) = unpermute_heads {
            let rows = shape_u64.first().copied().unwrap_or(0);
            if rows % (2 * h as u64) != 0 {
                return Err(GgufError::BadTensorShape {
                    tensor: t.name.clone(),
                    shape: shape_u64,
                    reason: format!("the rotary permutation with {h} heads"),
                });
            }
        }
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
            unpermute_heads,
        });
    }
    // Every tensor the config's model has must be there.
    for spec in cfg.tensors() {
        if !seen.contains_key(&spec.name) {
            return Err(GgufError::MissingTensor(spec.name));
        }
    }
    Ok(out)
}

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
    let family = Family::from_gguf(arch)
        .ok_or_else(|| GgufError::UnsupportedArchitecture(arch.to_string()))?;
    let p = HyperParams::from_metadata(md, arch)?;
    let mut warnings = Vec::new();

    let tok = build_hf_tokenizer(md, p.n_ctx)?;
    let vocab_size = match optional_u64(md, &format!("{arch}.vocab_size"))? {
        Some(v) => v,
        None => tok.vocab_size as u64,
    };
    if vocab_size != tok.vocab_size as u64 {
        warnings.push(format!(
            "{arch}.vocab_size is {vocab_size} but the tokenizer has {} tokens",
            tok.vocab_size
        ));
    }
    if let Some(t) = md.get_str(&format!("{arch}.rope.scaling.type")) {
        if t != "none" {
            warnings.push(format!(
                "{arch}.rope.scaling.type = {t:?} is not carried into config.json"
            ));
        }
    }

    let tensors = tensor_ids(&gguf, &mut warnings)?;
    let has = |f: &dyn Fn(&TensorId) -> bool| tensors.iter().any(|(_, id)| f(id));
    let tied = !has(&|id| id.module == Module::LmHead);
    // A bias on the o projection means every attention projection has one (`attention_bias`);
    // q/k/v biases alone are the family's own (Qwen2) or taken where present.
    let has_attn_bias = has(&|id| id.module == Module::OProj && id.part == Part::Bias);
    let has_mlp_bias = has(&|id| id.module.role() == Role::Mlp && id.part == Part::Bias);

    let token = |key: &str| md.get_u64(key);
    let bos = token("tokenizer.ggml.bos_token_id");
    let eos = token("tokenizer.ggml.eos_token_id");
    let pad = token("tokenizer.ggml.padding_token_id");
    let config = json!({
        "architectures": [family.class()],
        "model_type": family.model_type(),
        "hidden_size": p.n_embd,
        "intermediate_size": p.n_ff,
        "num_hidden_layers": p.n_layer,
        "num_attention_heads": p.n_head,
        "num_key_value_heads": p.n_head_kv,
        "head_dim": p.head_dim,
        "rms_norm_eps": p.rms_norm_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": null,
        "max_position_embeddings": p.n_ctx.unwrap_or(2048),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
        "attention_bias": has_attn_bias,
        "attention_dropout": 0.0,
        "mlp_bias": has_mlp_bias,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
    });
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
    let mut generation_config = json!({
        "bos_token_id": bos,
        "eos_token_id": eos,
    });
    if let (Some(obj), Some(pad)) = (generation_config.as_object_mut(), pad) {
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
                unpermute_heads: pl.unpermute_heads,
                error: &error,
            };
            (pl.hf_name.clone(), view)
        })
        .collect();
    let n_tensors = views.len();
    let mut info = HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    info.insert("source".to_string(), "gguf".to_string());
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
        bytes_written,
        out_dir: out_dir.to_path_buf(),
        source_types,
        tie_word_embeddings: tied,
        vocab_size: tok.vocab_size,
        n_merges: tok.n_merges,
        pre_tokenizer: tok.pre,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let m = hf_tensor_name;
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
