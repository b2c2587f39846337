//! The engine: a device opened once, on which models are opened. "A path on a device -> a
//! runnable model" lives here and nowhere else: loading (CPU memory or streamed onto the GPU),
//! the config and tokenizer, the backend's model, and the residency check.
//!
//! A [`Model`] offers one interface whatever its device: sessions, generation, text in and out,
//! and the divergence [`Backend`] that `verify --run` and `diff --run` compare.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use cllm_cuda::{CudaError, Gpu};
use cllm_kernels::cuda::{GpuWeight, Kernels};
use cllm_kernels::Weight;
use cllm_loader::gpu::{load_gpu, GpuLoadError, GpuLoadOptions, GpuLoadStats, ResidencyReport};
use cllm_loader::{load_cpu, LoadError, LoadedModel, ModelFiles};
use cllm_model::{ConfigError, ModelConfig};

use crate::chat::{ChatError, ChatMessage, ChatTemplate};
use crate::cpu::{CpuModel, CpuSession};
use crate::cuda::{generate_gpu, GpuError, GpuModel, GpuSession};
use crate::divergence::Backend;
use crate::error::ModelError;
use crate::generate::{
    generate_scored, generation_config_eos, GenerateError, GenerateOptions, GenerationConfigError,
    GenerationResult,
};
use crate::kv::KvPrecision;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Where a model runs, as the command line names it (`cpu`, `cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// The first NVIDIA GPU.
    Cuda,
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("{other}: expected cpu or cuda")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// Why a model could not be opened or run; each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("--device cuda: {0}")]
    Device(CudaError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("loading {path} onto the GPU: {source}")]
    GpuLoad {
        path: PathBuf,
        source: Box<GpuLoadError>,
    },
    #[error("{path}: config.json is not UTF-8")]
    ConfigUtf8 { path: PathBuf },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    #[error("{path}: tokenizer.json: {source}")]
    Tokenizer {
        path: PathBuf,
        source: TokenizerError,
    },
    #[error("{path}: no tokenizer.json")]
    NoTokenizer { path: PathBuf },
    #[error("{path}: {source}")]
    Model { path: PathBuf, source: ModelError },
    #[error("{path}: {source}")]
    Gpu { path: PathBuf, source: GpuError },
    #[error("{path}: {source}")]
    Residency {
        path: PathBuf,
        source: Box<GpuLoadError>,
    },
    #[error("--chat: {0}")]
    Chat(#[from] ChatError),
    #[error("--chat: the model has no chat template (no chat_template.jinja, and no tokenizer_config.json with a `chat_template`)")]
    NoChatTemplate,
    #[error("--chat: {file} is not UTF-8")]
    ChatUtf8 { file: &'static str },
    #[error("{path}: {source}")]
    GenerationConfig {
        path: PathBuf,
        source: GenerationConfigError,
    },
    #[error("tokenizing the prompt: {0}")]
    Encode(TokenizerError),
    #[error("the prompt encodes to no tokens")]
    EmptyPrompt,
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    GpuRun(#[from] GpuError),
    #[error(transparent)]
    Run(#[from] ModelError),
    #[error("decoding generated text: {0}")]
    Decode(TokenizerError),
}

/// How to open a model.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Fail unless the model has a `tokenizer.json`.
    pub need_tokenizer: bool,
    /// On the GPU: after loading, hash every resident stream with a GPU kernel and compare with
    /// the hash of the bytes decoded while loading; a mismatch is an error naming the tensor.
    pub check_resident: bool,
}

/// A device, opened once: on the GPU the context and the compiled kernels, shared by every
/// model the engine opens.
#[derive(Clone, Debug)]
pub struct Engine {
    device: Device,
    kernels: Option<Arc<Kernels>>,
}

impl Engine {
    /// Opens `device`: on `cuda` the first GPU, with its kernels compiled (or taken from the
    /// cache); "no CUDA driver found ..." on a machine without one.
    pub fn new(device: Device) -> Result<Engine, EngineError> {
        let kernels = match device {
            Device::Cpu => None,
            Device::Cuda => {
                let gpu = Gpu::new(0).map_err(EngineError::Device)?;
                Some(Kernels::new(&gpu).map_err(EngineError::Device)?)
            }
        };
        Ok(Engine { device, kernels })
    }

    /// The CPU engine (it opens nothing).
    pub fn cpu() -> Engine {
        Engine {
            device: Device::Cpu,
            kernels: None,
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The GPU, on `cuda`.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        self.kernels.as_ref().map(|k| k.gpu())
    }

    /// The kernels compiled for the GPU, on `cuda`.
    pub fn kernels(&self) -> Option<&Arc<Kernels>> {
        self.kernels.as_ref()
    }

    /// Opens a `.cllm` file or a Hugging Face folder onto this engine's device: on the CPU its
    /// weights decoded into memory, on the GPU streamed into device memory (quantized ones stay
    /// quantized on both).
    pub fn open(&self, path: &Path, opts: &OpenOptions) -> Result<Model, EngineError> {
        let start = Instant::now();
        match &self.kernels {
            None => {
                let loaded = load_cpu(path)?;
                self.build(loaded, opts)
            }
            Some(kernels) => {
                let gpu = kernels.gpu();
                let load_opts = GpuLoadOptions {
                    hash: opts.check_resident,
                    ..GpuLoadOptions::default()
                };
                let mut w =
                    load_gpu(path, gpu, &load_opts).map_err(|source| EngineError::GpuLoad {
                        path: path.to_path_buf(),
                        source: Box::new(source),
                    })?;
                let weights = std::mem::take(&mut w.weights);
                let files = std::mem::take(&mut w.files);
                let mut model =
                    self.assemble(path.to_path_buf(), files, w.lossless, opts, |path, cfg| {
                        let m = GpuModel::new(kernels, cfg.clone(), weights).map_err(|source| {
                            EngineError::Gpu {
                                path: path.to_path_buf(),
                                source,
                            }
                        })?;
                        Ok(BackendModel::Cuda(Box::new(m)))
                    })?;
                let seconds = start.elapsed().as_secs_f64();
                let residency = if opts.check_resident {
                    Some(
                        w.check_resident(kernels)
                            .map_err(|source| EngineError::Residency {
                                path: path.to_path_buf(),
                                source: Box::new(source),
                            })?,
                    )
                } else {
                    None
                };
                model.load = LoadStats {
                    seconds,
                    gpu: Some(w.stats.clone()),
                    residency,
                };
                Ok(model)
            }
        }
    }

    /// A model from weights already in CPU memory (a loader's output): on the CPU they become
    /// the model as they are, on the GPU each is copied to the device in its stored form. What
    /// `verify --run` and `diff --run` use, having decoded each input once.
    pub fn build(&self, loaded: LoadedModel, opts: &OpenOptions) -> Result<Model, EngineError> {
        let start = Instant::now();
        let LoadedModel {
            path,
            files,
            weights,
            lossless,
            load_seconds,
            ..
        } = loaded;
        let mut model = self.assemble(path, files, lossless, opts, |path, cfg| {
            Ok(match &self.kernels {
                None => {
                    let m = CpuModel::new(cfg.clone(), weights).map_err(|source| {
                        EngineError::Model {
                            path: path.to_path_buf(),
                            source,
                        }
                    })?;
                    BackendModel::Cpu(Box::new(m))
                }
                Some(kernels) => {
                    let resident =
                        upload(kernels.gpu(), weights).map_err(|source| EngineError::Gpu {
                            path: path.to_path_buf(),
                            source: source.into(),
                        })?;
                    let m = GpuModel::new(kernels, cfg.clone(), resident).map_err(|source| {
                        EngineError::Gpu {
                            path: path.to_path_buf(),
                            source,
                        }
                    })?;
                    BackendModel::Cuda(Box::new(m))
                }
            })
        })?;
        model.load.seconds = load_seconds + start.elapsed().as_secs_f64();
        Ok(model)
    }

    /// The model of `files`: its config and tokenizer read, and the backend that `backend`
    /// builds from the path (for errors) and the config; the caller fills in the load figures.
    fn assemble(
        &self,
        path: PathBuf,
        files: ModelFiles,
        lossless: bool,
        opts: &OpenOptions,
        backend: impl FnOnce(&Path, &ModelConfig) -> Result<BackendModel, EngineError>,
    ) -> Result<Model, EngineError> {
        let (config, tokenizer) = read_files(&path, &files, opts.need_tokenizer)?;
        let eos_token_ids = eos_token_ids(&path, &files, &config)?;
        let backend = backend(&path, &config)?;
        Ok(Model {
            path,
            device: self.device,
            config,
            files,
            tokenizer,
            eos_token_ids,
            lossless,
            load: LoadStats::default(),
            backend,
        })
    }
}

/// Copies CPU weights to the GPU in their stored form.
fn upload(
    gpu: &Arc<Gpu>,
    weights: HashMap<String, Weight>,
) -> Result<HashMap<String, GpuWeight>, CudaError> {
    weights
        .into_iter()
        .map(|(name, w)| Ok((name, GpuWeight::upload(gpu, &w)?)))
        .collect()
}

/// The config and (when present, or required) the tokenizer of a model's files.
fn read_files(
    path: &Path,
    files: &ModelFiles,
    need_tokenizer: bool,
) -> Result<(ModelConfig, Option<Tokenizer>), EngineError> {
    let text = std::str::from_utf8(&files.config_json).map_err(|_| EngineError::ConfigUtf8 {
        path: path.to_path_buf(),
    })?;
    let cfg = ModelConfig::from_json(text).map_err(|source| EngineError::Config {
        path: path.to_path_buf(),
        source,
    })?;
    let tokenizer = match files.tokenizer_json.as_deref() {
        Some(t) => Some(
            Tokenizer::from_bytes(t).map_err(|source| EngineError::Tokenizer {
                path: path.to_path_buf(),
                source,
            })?,
        ),
        None if need_tokenizer => {
            return Err(EngineError::NoTokenizer {
                path: path.to_path_buf(),
            })
        }
        None => None,
    };
    Ok((cfg, tokenizer))
}

/// The ids generation stops at: `generation_config.json`'s `eos_token_id` where it names one
/// or more (as transformers' `generate`), else `config.json`'s.
fn eos_token_ids(
    path: &Path,
    files: &ModelFiles,
    cfg: &ModelConfig,
) -> Result<Vec<u32>, EngineError> {
    let from_generation = match files.generation_config_json.as_deref() {
        Some(g) => generation_config_eos(g).map_err(|source| EngineError::GenerationConfig {
            path: path.to_path_buf(),
            source,
        })?,
        None => None,
    };
    Ok(from_generation.unwrap_or_else(|| cfg.eos_token_ids.clone()))
}

/// How a model was loaded.
#[derive(Clone, Debug, Default)]
pub struct LoadStats {
    /// Loading and building the model, seconds.
    pub seconds: f64,
    /// The GPU loader's figures (streamed loads only).
    pub gpu: Option<GpuLoadStats>,
    /// The residency check's result, when asked for.
    pub residency: Option<ResidencyReport>,
}

/// The backend's model (boxed: the two differ much in size).
enum BackendModel {
    Cpu(Box<CpuModel>),
    Cuda(Box<GpuModel>),
}

/// A model opened on a device: config, tokenizer, weights and a backend.
pub struct Model {
    path: PathBuf,
    device: Device,
    config: ModelConfig,
    files: ModelFiles,
    tokenizer: Option<Tokenizer>,
    /// See [`Model::eos_token_ids`].
    eos_token_ids: Vec<u32>,
    lossless: bool,
    load: LoadStats,
    backend: BackendModel,
}

/// Incremental inference over one sequence, on either backend: logits bit-identical to the
/// backend's recompute of the whole sequence, however it is split into calls.
pub enum Session<'m> {
    Cpu(CpuSession<'m>),
    Cuda(Box<GpuSession<'m>>),
}

impl Session<'_> {
    /// Processes `tokens`; returns the logits of the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        Ok(match self {
            Session::Cpu(s) => s.prefill(tokens)?,
            Session::Cuda(s) => s.prefill(tokens)?,
        })
    }

    /// Processes `tokens`; returns the logits of every one of them.
    pub fn prefill_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(match self {
            Session::Cpu(s) => s.prefill_all(tokens)?,
            Session::Cuda(s) => s.prefill_all(tokens)?,
        })
    }

    /// Processes one token; returns its logits.
    pub fn decode(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        Ok(match self {
            Session::Cpu(s) => s.decode(token)?,
            Session::Cuda(s) => s.decode(token)?,
        })
    }

    /// Tokens processed so far: the position the next token gets.
    pub fn position(&self) -> usize {
        match self {
            Session::Cpu(s) => s.position(),
            Session::Cuda(s) => s.position(),
        }
    }

    pub fn capacity(&self) -> usize {
        match self {
            Session::Cpu(s) => s.capacity(),
            Session::Cuda(s) => s.capacity(),
        }
    }

    /// Forgets the sequence; the storage is kept.
    pub fn reset(&mut self) {
        match self {
            Session::Cpu(s) => s.reset(),
            Session::Cuda(s) => s.reset(),
        }
    }
}

impl Model {
    /// The file or folder the model was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// The tokenizer, if the model has a `tokenizer.json`.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The ids generation stops at: `generation_config.json`'s `eos_token_id` (an id or a
    /// list) where the model has one, else `config.json`'s.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Whether every tensor is stored losslessly (a folder always is): two lossless models must
    /// give bit-identical logits.
    pub fn is_lossless(&self) -> bool {
        self.lossless
    }

    pub fn load_stats(&self) -> &LoadStats {
        &self.load
    }

    /// The CPU model, on `cpu`.
    pub fn cpu(&self) -> Option<&CpuModel> {
        match &self.backend {
            BackendModel::Cpu(m) => Some(m),
            BackendModel::Cuda(_) => None,
        }
    }

    /// The GPU model, on `cuda` (its sessions offer device-side sampling and profiling).
    pub fn cuda(&self) -> Option<&GpuModel> {
        match &self.backend {
            BackendModel::Cpu(_) => None,
            BackendModel::Cuda(m) => Some(m),
        }
    }

    /// The model as divergence measurement runs it.
    pub fn backend(&self) -> &dyn Backend {
        match &self.backend {
            BackendModel::Cpu(m) => m.as_ref(),
            BackendModel::Cuda(m) => m.as_ref(),
        }
    }

    /// Sets how the KV caches of later sessions, generations and divergence passes store keys
    /// and values (f32 unless set). Fails, naming the model, where its heads cannot take the
    /// form (int8 needs a head_dim that is a multiple of 8).
    pub fn set_kv_cache(&mut self, kv: KvPrecision) -> Result<(), EngineError> {
        kv.check(self.config.head_dim)
            .map_err(|reason| EngineError::Model {
                path: self.path.clone(),
                source: ModelError::KvCacheForm { reason },
            })?;
        match &mut self.backend {
            BackendModel::Cpu(m) => m.set_kv_precision(kv),
            BackendModel::Cuda(m) => m.set_kv_precision(kv),
        }
        Ok(())
    }

    /// How the model's KV caches store keys and values.
    pub fn kv_cache(&self) -> KvPrecision {
        match &self.backend {
            BackendModel::Cpu(m) => m.kv_precision(),
            BackendModel::Cuda(m) => m.kv_precision(),
        }
    }

    /// Bytes a KV cache of `capacity` positions holds in the model's setting (keys and values
    /// of every layer, int8's scales included).
    pub fn kv_cache_bytes(&self, capacity: usize) -> u64 {
        let c = &self.config;
        (2 * c.num_hidden_layers * c.num_key_value_heads * capacity) as u64
            * self.kv_cache().vector_bytes(c.head_dim) as u64
    }

    /// Bytes of weights the model holds where it runs (payloads plus quantization scales).
    pub fn resident_bytes(&self) -> u64 {
        match &self.backend {
            BackendModel::Cpu(m) => m.resident_bytes() as u64,
            BackendModel::Cuda(m) => m.resident_bytes(),
        }
    }

    /// Bytes one decode step reads from the weights: every matrix once, of an untied embedding
    /// one row.
    pub fn bytes_per_token(&self) -> u64 {
        match &self.backend {
            BackendModel::Cpu(m) => m.bytes_per_token(),
            BackendModel::Cuda(m) => m.bytes_per_token(),
        }
    }

    /// A session whose cache holds `capacity` positions (prompt plus generated tokens).
    pub fn session(&self, capacity: usize) -> Result<Session<'_>, EngineError> {
        Ok(match &self.backend {
            BackendModel::Cpu(m) => Session::Cpu(m.session(capacity)?),
            BackendModel::Cuda(m) => Session::Cuda(Box::new(m.session(capacity)?)),
        })
    }

    /// Generates up to `options.max_new_tokens` tokens after `prompt_ids`, calling `on_token`
    /// with each as soon as it is chosen (on the GPU, greedy and sampled draws stay on the
    /// device).
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        options: &GenerateOptions,
        on_token: impl FnMut(u32),
    ) -> Result<GenerationResult, EngineError> {
        Ok(match &self.backend {
            BackendModel::Cpu(m) => crate::cpu::generate(m, prompt_ids, options, on_token)?,
            BackendModel::Cuda(m) => generate_gpu(m, prompt_ids, options, on_token)?,
        })
    }

    /// [`Model::generate`] with, at each generated position, the `top` most likely tokens'
    /// log-probabilities (1 to [`crate::sampler::MAX_TOP_LOGPROBS`]), in
    /// [`GenerationResult::logprobs`]. Tokens are chosen on the host from the logits each step
    /// returns, as the CPU backend chooses them.
    pub fn generate_logprobs(
        &self,
        prompt_ids: &[u32],
        options: &GenerateOptions,
        top: usize,
        on_token: impl FnMut(u32),
    ) -> Result<GenerationResult, EngineError> {
        // The last generated token is never fed back, so the cache needs one slot less.
        let capacity = prompt_ids.len() + options.max_new_tokens.saturating_sub(1);
        let mut session = self.session(capacity)?;
        generate_scored(&mut session, prompt_ids, options, top, on_token)
    }

    /// [`Model::generate`] with the text decoded as it comes (only complete UTF-8): `on_text`
    /// hears each piece; returns the result and the whole text.
    pub fn generate_text(
        &self,
        prompt_ids: &[u32],
        options: &GenerateOptions,
        on_text: impl FnMut(&str),
    ) -> Result<(GenerationResult, String), EngineError> {
        self.stream_text(on_text, |on_token| {
            self.generate(prompt_ids, options, on_token)
        })
    }

    /// [`Model::generate_text`] with the log-probabilities of [`Model::generate_logprobs`].
    pub fn generate_text_logprobs(
        &self,
        prompt_ids: &[u32],
        options: &GenerateOptions,
        top: usize,
        on_text: impl FnMut(&str),
    ) -> Result<(GenerationResult, String), EngineError> {
        self.stream_text(on_text, |on_token| {
            self.generate_logprobs(prompt_ids, options, top, on_token)
        })
    }

    /// Runs `generate` with a token callback that decodes the ids as they come.
    fn stream_text(
        &self,
        mut on_text: impl FnMut(&str),
        generate: impl FnOnce(&mut dyn FnMut(u32)) -> Result<GenerationResult, EngineError>,
    ) -> Result<(GenerationResult, String), EngineError> {
        let tokenizer = self.require_tokenizer()?;
        let mut stream = tokenizer.stream(true);
        let mut text = String::new();
        let mut err = None;
        let result = generate(&mut |id| match stream.push(id) {
            Ok(Some(piece)) => {
                text.push_str(&piece);
                on_text(&piece);
            }
            Ok(None) => {}
            Err(e) => {
                err.get_or_insert(e);
            }
        })?;
        if let Some(e) = err {
            return Err(EngineError::Decode(e));
        }
        if let Some(rest) = stream.finish().map_err(EngineError::Decode)? {
            text.push_str(&rest);
            on_text(&rest);
        }
        Ok((result, text))
    }

    /// The prompt's token ids as transformers makes them: a plain prompt as `tokenizer(prompt)`
    /// (the post-processor adds BOS where the model's does); with `chat`, the prompt as a user
    /// message rendered through the chat template and encoded without special tokens, as
    /// `apply_chat_template(..., tokenize=True)` (the template writes `bos_token` itself).
    pub fn prompt_ids(&self, prompt: &str, chat: bool) -> Result<Vec<u32>, EngineError> {
        let ids = if chat {
            let text = self
                .chat_template()?
                .render(&[ChatMessage::user(prompt)], true)?;
            self.require_tokenizer()?.encode(&text, false)
        } else {
            self.require_tokenizer()?.encode(prompt, true)
        }
        .map_err(EngineError::Encode)?;
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        Ok(ids)
    }

    /// The chat template: `chat_template.jinja` where present (transformers 5 writes it there),
    /// else `tokenizer_config.json`'s; the special-token strings from `tokenizer_config.json`.
    pub fn chat_template(&self) -> Result<ChatTemplate, EngineError> {
        fn utf8<'b>(bytes: &'b [u8], file: &'static str) -> Result<&'b str, EngineError> {
            std::str::from_utf8(bytes).map_err(|_| EngineError::ChatUtf8 { file })
        }
        let jinja = match self.files.chat_template_jinja.as_deref() {
            Some(b) => Some(utf8(b, "chat_template.jinja")?),
            None => None,
        };
        let cfg = match self.files.tokenizer_config_json.as_deref() {
            Some(b) => utf8(b, "tokenizer_config.json")?,
            None if jinja.is_some() => "{}",
            None => return Err(EngineError::NoChatTemplate),
        };
        Ok(ChatTemplate::from_tokenizer_config(cfg, jinja)?)
    }

    fn require_tokenizer(&self) -> Result<&Tokenizer, EngineError> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| EngineError::NoTokenizer {
                path: self.path.clone(),
            })
    }
}
