//! One entry point for the runtime: a model from a Hugging Face folder or a `.cllm` file, with its
//! config and tokenizer files and its weights in CPU memory.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use cllm_kernels::Weight;

use crate::cllm::{load_weights, CllmFile};
use crate::error::LoadError;
use crate::hf::HfFolder;

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
}

pub struct LoadedModel {
    pub kind: SourceKind,
    pub files: ModelFiles,
    pub weights: HashMap<String, Weight>,
    pub load_seconds: f64,
    /// Bytes of the weights as they sit in memory (quantized ones quantized).
    pub resident_bytes: u64,
}

fn resident(weights: &HashMap<String, Weight>) -> u64 {
    weights.values().map(|w| w.resident_bytes() as u64).sum()
}

/// Loads a model for the CPU backend from a folder or a `.cllm` file.
pub fn load_cpu(path: &Path) -> Result<LoadedModel, LoadError> {
    let start = Instant::now();
    if path.is_dir() {
        let folder = HfFolder::open(path)?;
        let aux: HashMap<String, Vec<u8>> = folder.aux_files().into_iter().collect();
        let weights = folder
            .tensors()
            .iter()
            .map(|t| Ok((t.name.to_string(), crate::hf::to_weight(t)?)))
            .collect::<Result<HashMap<_, _>, LoadError>>()?;
        return Ok(LoadedModel {
            kind: SourceKind::Folder,
            files: ModelFiles {
                config_json: folder.config_bytes().to_vec(),
                tokenizer_json: aux.get("tokenizer.json").cloned(),
                tokenizer_config_json: aux.get("tokenizer_config.json").cloned(),
                generation_config_json: aux.get("generation_config.json").cloned(),
            },
            resident_bytes: resident(&weights),
            weights,
            load_seconds: start.elapsed().as_secs_f64(),
        });
    }
    let file = CllmFile::open(path)?;
    let c = file.container()?;
    let read = |name: &str| {
        c.read_file(name).map_err(|e| LoadError::Format {
            path: path.to_path_buf(),
            source: e,
        })
    };
    let files = ModelFiles {
        config_json: read("config.json")?.ok_or_else(|| LoadError::Model {
            path: path.to_path_buf(),
            msg: "no embedded config.json".into(),
        })?,
        tokenizer_json: read("tokenizer.json")?,
        tokenizer_config_json: read("tokenizer_config.json")?,
        generation_config_json: read("generation_config.json")?,
    };
    let weights = load_weights(&file, &c)?;
    Ok(LoadedModel {
        kind: SourceKind::Container,
        files,
        resident_bytes: resident(&weights),
        weights,
        load_seconds: start.elapsed().as_secs_f64(),
    })
}
