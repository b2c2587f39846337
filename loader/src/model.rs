//! A model from a Hugging Face folder or a `.cllm` file, with its config and tokenizer files and
//! its weights in CPU memory: what the engine builds a CPU model from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cllm_format::Container;
use cllm_kernels::Weight;

use crate::cllm::load_weights;
use crate::error::LoadError;
use crate::hf::HfFolder;
use crate::packed::Packed;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Folder,
    Container,
}

/// The text files a model needs besides its weights.
#[derive(Clone, Debug, Default)]
pub struct ModelFiles {
    pub config_json: Vec<u8>,
    pub tokenizer_json: Option<Vec<u8>>,
    pub tokenizer_config_json: Option<Vec<u8>>,
    pub generation_config_json: Option<Vec<u8>>,
    /// The chat template written on its own (transformers 5); it replaces the template of
    /// `tokenizer_config.json`. Containers packed before it was carried have none.
    pub chat_template_jinja: Option<Vec<u8>>,
}

impl ModelFiles {
    /// A folder's `config.json` and the tokenizer and generation files beside it.
    pub fn from_folder(folder: &HfFolder) -> ModelFiles {
        ModelFiles {
            config_json: folder.config_bytes().to_vec(),
            tokenizer_json: folder.aux_file("tokenizer.json").map(<[u8]>::to_vec),
            tokenizer_config_json: folder.aux_file("tokenizer_config.json").map(<[u8]>::to_vec),
            generation_config_json: folder
                .aux_file("generation_config.json")
                .map(<[u8]>::to_vec),
            chat_template_jinja: folder.aux_file("chat_template.jinja").map(<[u8]>::to_vec),
        }
    }

    /// The files embedded in a container (each checked); `config.json` is required.
    pub fn from_container(path: &Path, c: &Container<'_>) -> Result<ModelFiles, LoadError> {
        let read = |name: &str| {
            c.read_file(name).map_err(|e| LoadError::Format {
                path: path.to_path_buf(),
                source: e,
            })
        };
        Ok(ModelFiles {
            config_json: read("config.json")?.ok_or_else(|| LoadError::Model {
                path: path.to_path_buf(),
                msg: "no embedded config.json".into(),
            })?,
            tokenizer_json: read("tokenizer.json")?,
            tokenizer_config_json: read("tokenizer_config.json")?,
            generation_config_json: read("generation_config.json")?,
            chat_template_jinja: read("chat_template.jinja")?,
        })
    }
}

impl ModelFiles {
    /// The model files embedded in a packed model (its first container).
    pub fn from_packed(p: &Packed) -> Result<ModelFiles, LoadError> {
        let path = p.path();
        Ok(ModelFiles {
            config_json: p
                .read_file("config.json")?
                .ok_or_else(|| LoadError::Model {
                    path: path.to_path_buf(),
                    msg: "no embedded config.json".into(),
                })?,
            tokenizer_json: p.read_file("tokenizer.json")?,
            tokenizer_config_json: p.read_file("tokenizer_config.json")?,
            generation_config_json: p.read_file("generation_config.json")?,
            chat_template_jinja: p.read_file("chat_template.jinja")?,
        })
    }
}

/// Whether every tensor of a container is stored losslessly.
pub fn container_is_lossless(c: &Container<'_>) -> bool {
    (0..c.tensors().len()).all(|i| c.codec(i).is_lossless())
}

/// A model's files and its weights in CPU memory.
pub struct LoadedModel {
    pub path: PathBuf,
    pub kind: SourceKind,
    pub files: ModelFiles,
    pub weights: HashMap<String, Weight>,
    /// Every tensor is stored losslessly (a folder always is).
    pub lossless: bool,
    pub load_seconds: f64,
}

/// Loads a model for the CPU backend from a folder or a `.cllm` file.
pub fn load_cpu(path: &Path) -> Result<LoadedModel, LoadError> {
    let start = Instant::now();
    if path.is_dir() {
        let folder = HfFolder::open(path)?;
        let weights = folder
            .tensors()
            .iter()
            .map(|t| Ok((t.name.to_string(), crate::hf::to_weight(t)?)))
            .collect::<Result<HashMap<_, _>, LoadError>>()?;
        return Ok(LoadedModel {
            path: path.to_path_buf(),
            kind: SourceKind::Folder,
            files: ModelFiles::from_folder(&folder),
            weights,
            lossless: true,
            load_seconds: start.elapsed().as_secs_f64(),
        });
    }
    let packed = Packed::open(path)?;
    let files = ModelFiles::from_packed(&packed)?;
    let weights = load_weights(&packed)?;
    Ok(LoadedModel {
        path: path.to_path_buf(),
        kind: SourceKind::Container,
        files,
        weights,
        lossless: packed.is_lossless(),
        load_seconds: start.elapsed().as_secs_f64(),
    })
}
