//! Reading a Hugging Face model folder: `config.json` and the tokenizer and
//! generation files as raw bytes, and the safetensors weights (one
//! `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`) memory-mapped, never read whole.
//!
//! Opening checks the folder is self-consistent (every listed shard exists
//! and parses, every listed tensor is where the index says, no tensor is in
//! two files), so later stages can trust [`HfFolder::tensors`]. Every error
//! names the file, and the tensor where there is one.

use cllm_format::{Dtype, PackInput, SourceBytes, SourceTensor};
use cllm_kernels::{Weight, WeightData};
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{SafeTensorError, SafeTensors};
use serde_json::Value;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The model configuration; required.
pub const CONFIG_FILE: &str = "config.json";
/// Unsharded weights.
pub const SINGLE_WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Optional files kept as raw bytes, in this order. transformers 5 writes the chat template to
/// `chat_template.jinja` instead of `tokenizer_config.json`, so it is carried as well.
pub const AUX_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{dir}: no config.json (not a Hugging Face model folder?)")]
    MissingConfig { dir: PathBuf },
    #[error("{file}: invalid JSON: {source}")]
    Json {
        file: PathBuf,
        source: serde_json::Error,
    },
    #[error("{file}: expected a JSON object at the top level")]
    NotAnObject { file: PathBuf },
    #[error("{dir}: no safetensors weights (neither {SINGLE_WEIGHTS_FILE} nor {INDEX_FILE})")]
    NoWeights { dir: PathBuf },
    #[error("{index}: no \"weight_map\" object")]
    IndexNoWeightMap { index: PathBuf },
    #[error("{index}: \"weight_map\" is empty")]
    IndexEmpty { index: PathBuf },
    #[error("{index}: tensor {tensor} maps to {value}, not a file name")]
    IndexBadEntry {
        index: PathBuf,
        tensor: String,
        value: String,
    },
    #[error("{index}: shard {file:?} (for tensor {tensor}) is not a plain file name in the model folder")]
    BadShardName {
        index: PathBuf,
        file: String,
        tensor: String,
    },
    #[error("{index} lists shard {file} (for tensor {tensor}), which does not exist")]
    MissingShard {
        index: PathBuf,
        file: PathBuf,
        tensor: String,
    },
    #[error("{file}: not a valid safetensors file ({len} bytes): {source}")]
    Safetensors {
        file: PathBuf,
        len: u64,
        source: SafeTensorError,
    },
    #[error("{file}: tensor {tensor} has dtype {dtype}, which cllm does not carry")]
    UnsupportedDtype {
        file: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{dir}: tensor {tensor} is in both {first} and {second}")]
    DuplicateTensor {
        dir: PathBuf,
        tensor: String,
        first: String,
        second: String,
    },
    #[error("{index} lists tensor {tensor} in {file}, but {file} does not contain it")]
    TensorNotInShard {
        index: PathBuf,
        tensor: String,
        file: String,
    },
    #[error("{file} contains tensor {tensor}, which {index} does not list in that file")]
    UnlistedTensor {
        index: PathBuf,
        tensor: String,
        file: String,
    },
    #[error("tensor {tensor} ({file}): dtype {dtype} cannot become a float weight (bf16, f16, f32 only)")]
    UnsupportedWeightDtype {
        tensor: String,
        file: String,
        dtype: Dtype,
    },
    #[error("tensor {tensor} ({file}): shape {shape:?} does not fit in memory or disagrees with its {len} bytes")]
    BadWeightSize {
        tensor: String,
        file: String,
        shape: Vec<u64>,
        len: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HfError + '_ {
    move |source| HfError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One tensor of the folder: its raw little-endian bytes inside the mapped file.
#[derive(Clone, Debug)]
pub struct HfTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// File name (inside the folder) holding the tensor.
    pub file: String,
    pub bytes: &'a [u8],
}

impl HfTensor<'_> {
    /// Number of elements; `None` on overflow.
    pub fn numel(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }
}

/// A file the folder was read from, for provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub len: u64,
    /// `format!("{:032x}", xxh3_128(bytes))`.
    pub xxh3_128: String,
}

struct Shard {
    name: String,
    map: Mmap,
}

struct TensorEntry {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    shard: usize,
    start: usize,
    end: usize,
}

/// An opened, validated Hugging Face model folder.
pub struct HfFolder {
    dir: PathBuf,
    config_raw: Vec<u8>,
    config: Value,
    /// The index's raw bytes, when the weights are sharded.
    index_raw: Option<Vec<u8>>,
    aux: Vec<(String, Vec<u8>)>,
    shards: Vec<Shard>,
    /// Sorted by name.
    entries: Vec<TensorEntry>,
}

impl std::fmt::Debug for HfFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfFolder")
            .field("dir", &self.dir)
            .field("weight_files", &self.weight_files())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// Reads a file that may be absent; `Ok(None)` when it is.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, HfError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn parse_object(path: &Path, bytes: &[u8]) -> Result<Value, HfError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|source| HfError::Json {
        file: path.to_path_buf(),
        source,
    })?;
    if !value.is_object() {
        return Err(HfError::NotAnObject {
            file: path.to_path_buf(),
        });
    }
    Ok(value)
}

/// A shard name must stay inside the folder: no separators, no `.`/`..`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !Path::new(name).has_root()
}

/// A tensor as found in one file: name, dtype, shape, and its byte range in the file.
type FoundTensor = (String, Dtype, Vec<u64>, usize, usize);

/// Maps `path` and lists its tensors, offsets absolute in the file.
fn map_shard(path: &Path) -> Result<(Mmap, Vec<FoundTensor>), HfError> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only and private to this process. Another
    // process truncating or rewriting the file while it is mapped is outside
    // what cllm guards against (as for every mmap-based safetensors reader).
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    let st = SafeTensors::deserialize(&map).map_err(|source| HfError::Safetensors {
        file: path.to_path_buf(),
        len: map.len() as u64,
        source,
    })?;
    let base = map.as_ptr() as usize;
    let mut tensors = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let st_dtype = view.dtype().to_string();
        let dtype =
            Dtype::from_safetensors(&st_dtype).ok_or_else(|| HfError::UnsupportedDtype {
                file: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: st_dtype.clone(),
            })?;
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        let data = view.data();
        // `data` is a sub-slice of `map`, so the difference is its offset in the file.
        let start = data.as_ptr() as usize - base;
        tensors.push((name.to_string(), dtype, shape, start, start + data.len()));
    }
    Ok((map, tensors))
}

impl HfFolder {
    /// Opens and validates the model folder `dir`.
    ///
    /// Weights come from `model.safetensors` when it exists (as in
    /// transformers, it wins over an index), otherwise from the shards that
    /// `model.safetensors.index.json` lists. Other files in the folder are ignored.
    pub fn open(dir: &Path) -> Result<HfFolder, HfError> {
        let config_path = dir.join(CONFIG_FILE);
        let config_raw = read_optional(&config_path)?.ok_or_else(|| HfError::MissingConfig {
            dir: dir.to_path_buf(),
        })?;
        let config = parse_object(&config_path, &config_raw)?;

        let mut aux = Vec::new();
        for name in AUX_FILES {
            if let Some(bytes) = read_optional(&dir.join(name))? {
                aux.push((name.to_string(), bytes));
            }
        }

        let single = dir.join(SINGLE_WEIGHTS_FILE);
        let index_path = dir.join(INDEX_FILE);
        let (index_raw, weight_map) = if single.is_file() {
            (None, None)
        } else {
            let raw = read_optional(&index_path)?.ok_or_else(|| HfError::NoWeights {
                dir: dir.to_path_buf(),
            })?;
            let map = parse_weight_map(&index_path, &raw)?;
            (Some(raw), Some(map))
        };

        let shard_names: Vec<String> = match &weight_map {
            None => vec![SINGLE_WEIGHTS_FILE.to_string()],
            Some(map) => {
                let files: BTreeSet<&String> = map.values().collect();
                files.into_iter().cloned().collect()
            }
        };
        if let Some(map) = &weight_map {
            for name in &shard_names {
                let tensor = map
                    .iter()
                    .find(|(_, f)| *f == name)
                    .map(|(t, _)| t.clone())
                    .unwrap_or_default();
                if !is_plain_file_name(name) {
                    return Err(HfError::BadShardName {
                        index: index_path.clone(),
                        file: name.clone(),
                        tensor,
                    });
                }
                let path = dir.join(name);
                if !path.is_file() {
                    return Err(HfError::MissingShard {
                        index: index_path.clone(),
                        file: path,
                        tensor,
                    });
                }
            }
        }

        let mapped: Vec<_> = shard_names
            .par_iter()
            .map(|name| map_shard(&dir.join(name)))
            .collect::<Result<_, _>>()?;

        let mut shards = Vec::with_capacity(mapped.len());
        let mut by_name: BTreeMap<String, TensorEntry> = BTreeMap::new();
        for (shard, (map, tensors)) in mapped.into_iter().enumerate() {
            for (name, dtype, shape, start, end) in tensors {
                match by_name.entry(name) {
                    Entry::Occupied(e) => {
                        return Err(HfError::DuplicateTensor {
                            dir: dir.to_path_buf(),
                            tensor: e.key().clone(),
                            first: shard_names[e.get().shard].clone(),
                            second: shard_names[shard].clone(),
                        })
                    }
                    Entry::Vacant(v) => {
                        let name = v.key().clone();
                        v.insert(TensorEntry {
                            name,
                            dtype,
                            shape,
                            shard,
                            start,
                            end,
                        });
                    }
                }
            }
            shards.push(Shard {
                name: shard_names[shard].clone(),
                map,
            });
        }

        if let Some(map) = &weight_map {
            for (tensor, file) in map {
                let found = by_name.get(tensor).map(|e| &shard_names[e.shard]);
                if found != Some(file) {
                    return Err(HfError::TensorNotInShard {
                        index: index_path.clone(),
                        tensor: tensor.clone(),
                        file: file.clone(),
                    });
                }
            }
            for (tensor, e) in &by_name {
                if map.get(tensor) != Some(&shard_names[e.shard]) {
                    return Err(HfError::UnlistedTensor {
                        index: index_path.clone(),
                        tensor: tensor.clone(),
                        file: shard_names[e.shard].clone(),
                    });
                }
            }
        }

        Ok(HfFolder {
            dir: dir.to_path_buf(),
            config_raw,
            config,
            index_raw,
            aux,
            shards,
            entries: by_name.into_values().collect(),
        })
    }

    /// The folder this was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.json` as parsed (always a JSON object).
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// `config.json` exactly as read.
    pub fn config_bytes(&self) -> &[u8] {
        &self.config_raw
    }

    /// The optional files present (among [`AUX_FILES`], in that order) with their raw bytes.
    pub fn aux_files(&self) -> Vec<(String, Vec<u8>)> {
        self.aux.clone()
    }

    /// One optional file's raw bytes, if present.
    pub fn aux_file(&self, name: &str) -> Option<&[u8]> {
        self.aux
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    /// The safetensors files read, sorted by name.
    pub fn weight_files(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.name.as_str()).collect()
    }

    /// Whether the weights came through `model.safetensors.index.json`.
    pub fn is_sharded(&self) -> bool {
        self.index_raw.is_some()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn view<'a>(&'a self, e: &'a TensorEntry) -> HfTensor<'a> {
        let shard = &self.shards[e.shard];
        HfTensor {
            name: &e.name,
            dtype: e.dtype,
            shape: e.shape.clone(),
            file: shard.name.clone(),
            bytes: &shard.map[e.start..e.end],
        }
    }

    /// Every tensor, sorted by name.
    pub fn tensors(&self) -> Vec<HfTensor<'_>> {
        self.entries.iter().map(|e| self.view(e)).collect()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<HfTensor<'_>> {
        let i = self
            .entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()?;
        Some(self.view(&self.entries[i]))
    }

    /// Every file read (config, index, tokenizer and generation files,
    /// safetensors files) with its length and xxh3-128, sorted by name.
    ///
    /// Hashes every byte of the weights (in parallel over files), so this
    /// costs one pass over the model; call it once.
    pub fn source_files(&self) -> Vec<SourceFile> {
        // (name, bytes, whether the bytes are a file mapping whose pages may be handed back)
        let mut inputs: Vec<(&str, &[u8], bool)> = vec![(CONFIG_FILE, &self.config_raw, false)];
        if let Some(index) = &self.index_raw {
            inputs.push((INDEX_FILE, index, false));
        }
        inputs.extend(
            self.aux
                .iter()
                .map(|(n, b)| (n.as_str(), b.as_slice(), false)),
        );
        inputs.extend(
            self.shards
                .iter()
                .map(|s| (s.name.as_str(), &s.map[..], true)),
        );
        let mut out: Vec<SourceFile> = inputs
            .par_iter()
            .map(|&(name, bytes, mapped)| {
                // A block at a time, each handed back once hashed: the hash of a file of any
                // size costs a block of resident memory.
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                for block in bytes.chunks(8 << 20) {
                    h.update(block);
                    if mapped {
                        crate::packed::release_mapped(block);
                    }
                }
                SourceFile {
                    name: name.to_string(),
                    len: bytes.len() as u64,
                    xxh3_128: format!("{:032x}", h.digest128()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The index's `weight_map` as tensor name → shard file name.
fn parse_weight_map(path: &Path, raw: &[u8]) -> Result<BTreeMap<String, String>, HfError> {
    let index = parse_object(path, raw)?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| HfError::IndexNoWeightMap {
            index: path.to_path_buf(),
        })?;
    if map.is_empty() {
        return Err(HfError::IndexEmpty {
            index: path.to_path_buf(),
        });
    }
    map.iter()
        .map(|(tensor, file)| match file.as_str() {
            Some(f) => Ok((tensor.clone(), f.to_string())),
            None => Err(HfError::IndexBadEntry {
                index: path.to_path_buf(),
                tensor: tensor.clone(),
                value: file.to_string(),
            }),
        })
        .collect()
}

impl HfFolder {
    /// What `cllm_format::pack` packs from this folder: every tensor (borrowed from the mapped
    /// files), `config.json` and the tokenizer and generation files, and each safetensors
    /// file's name, length and hash (the container's provenance).
    pub fn pack_input(&self) -> PackInput<'_> {
        let tensors = self
            .tensors()
            .into_iter()
            .map(|t| SourceTensor {
                name: t.name.to_string(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                bytes: SourceBytes::Mapped {
                    bytes: t.bytes,
                    release: &crate::packed::release_mapped,
                },
            })
            .collect();
        let mut files = vec![("config.json".to_string(), self.config_bytes().to_vec())];
        files.extend(self.aux_files());
        let source_files = self
            .source_files()
            .into_iter()
            .map(|f| cllm_format::index::SourceFile {
                name: f.name,
                len: f.len,
                xxh3: f.xxh3_128,
            })
            .collect();
        PackInput {
            tensors,
            files,
            source_files,
        }
    }
}

/// Copies a bf16/f16/f32 tensor into a [`Weight`]: `rows = shape[0]` and
/// `cols` = the product of the other dimensions for 2-D and up; `rows = 1`
/// for 1-D (and 0-D) tensors.
pub fn to_weight(t: &HfTensor<'_>) -> Result<Weight, HfError> {
    let bad_size = || HfError::BadWeightSize {
        tensor: t.name.to_string(),
        file: t.file.clone(),
        shape: t.shape.clone(),
        len: t.bytes.len(),
    };
    let (rows, cols) = match t.shape.as_slice() {
        [] => (1, 1),
        [n] => (1, *n),
        [r, rest @ ..] => (
            *r,
            rest.iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(bad_size)?,
        ),
    };
    let rows = usize::try_from(rows).map_err(|_| bad_size())?;
    let cols = usize::try_from(cols).map_err(|_| bad_size())?;
    let numel = rows.checked_mul(cols).ok_or_else(bad_size)?;
    if !t.dtype.is_float() {
        return Err(HfError::UnsupportedWeightDtype {
            tensor: t.name.to_string(),
            file: t.file.clone(),
            dtype: t.dtype,
        });
    }
    if numel.checked_mul(t.dtype.size()) != Some(t.bytes.len()) {
        return Err(bad_size());
    }
    let data = match t.dtype {
        Dtype::Bf16 => WeightData::Bf16(
            t.bytes
                .par_chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        Dtype::F16 => WeightData::F16(
            t.bytes
                .par_chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        Dtype::F32 => WeightData::F32(
            t.bytes
                .par_chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        _ => {
            return Err(HfError::UnsupportedWeightDtype {
                tensor: t.name.to_string(),
                file: t.file.clone(),
                dtype: t.dtype,
            })
        }
    };
    Ok(Weight { rows, cols, data })
}
