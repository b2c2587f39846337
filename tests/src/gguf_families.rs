//! GGUF files of every family, written the way llama.cpp's converter (`convert_hf_to_gguf.py`)
//! writes them, from a synthetic Hugging Face folder (`cllm synth`): for the importer's round
//! trip tests (`tests/tests/gguf_families.rs`).
//!
//! [`GgufBuilder`] writes GGUF v3 (metadata of the types the converter uses, f32 tensors);
//! [`hf_to_gguf`] turns a folder into one: the tensors under their llama.cpp names (from the
//! model description) with llama.cpp's layout changes applied (q/k rows permuted where its
//! converter permutes them, `1 +` folded into Gemma's norm weights), the hyper-parameters under
//! the `<arch>.*` keys its converter writes, and a tokenizer of either kind.

use std::collections::BTreeMap;
use std::path::Path;

use cllm_model::{Family, ModelConfig, Module, Role, RopeScaling, TensorId};

/// GGUF metadata value types.
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;
const T_ARR: u32 = 9;

/// A GGUF v3 writer: metadata and f32 tensors, 32-byte aligned as llama.cpp writes them.
#[derive(Default)]
pub struct GgufBuilder {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

impl GgufBuilder {
    fn key(&mut self, key: &str, ty: u32) -> &mut Vec<u8> {
        self.n_kv += 1;
        put_str(&mut self.kv, key);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        &mut self.kv
    }

    fn array(&mut self, key: &str, elem: u32, len: usize) -> &mut Vec<u8> {
        let b = self.key(key, T_ARR);
        b.extend_from_slice(&elem.to_le_bytes());
        b.extend_from_slice(&(len as u64).to_le_bytes());
        b
    }

    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.key(key, T_U32).extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.key(key, T_F32).extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.key(key, T_BOOL).push(u8::from(v));
        self
    }

    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        put_str(self.key(key, T_STR), v);
        self
    }

    pub fn strs<S: AsRef<str>>(&mut self, key: &str, v: &[S]) -> &mut Self {
        let b = self.array(key, T_STR, v.len());
        for s in v {
            put_str(b, s.as_ref());
        }
        self
    }

    pub fn i32s(&mut self, key: &str, v: &[i32]) -> &mut Self {
        let b = self.array(key, T_I32, v.len());
        for x in v {
            b.extend_from_slice(&x.to_le_bytes());
        }
        self
    }

    pub fn f32s(&mut self, key: &str, v: &[f32]) -> &mut Self {
        let b = self.array(key, T_F32, v.len());
        for x in v {
            b.extend_from_slice(&x.to_le_bytes());
        }
        self
    }

    pub fn bools(&mut self, key: &str, v: &[bool]) -> &mut Self {
        let b = self.array(key, T_BOOL, v.len());
        b.extend(v.iter().map(|&x| u8::from(x)));
        self
    }

    /// An f32 tensor; `shape` in PyTorch order (`[rows, cols]`), written in ggml's (reversed).
    pub fn tensor(&mut self, name: &str, shape: &[u64], data: Vec<f32>) -> &mut Self {
        assert_eq!(shape.iter().product::<u64>() as usize, data.len(), "{name}");
        let dims = shape.iter().rev().copied().collect();
        self.tensors.push((name.to_string(), dims, data));
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let pad = |b: &mut Vec<u8>| b.resize(b.len().div_ceil(32) * 32, 0);
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.n_kv.to_le_bytes());
        b.extend_from_slice(&self.kv);
        let mut offset = 0u64;
        for (name, dims, data) in &self.tensors {
            put_str(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&0u32.to_le_bytes()); // F32
            b.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + 4 * data.len() as u64).div_ceil(32) * 32;
        }
        pad(&mut b);
        for (_, _, data) in &self.tensors {
            for x in data {
                b.extend_from_slice(&x.to_le_bytes());
            }
            pad(&mut b);
        }
        b
    }
}

/// llama.cpp token types.
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const UNUSED: i32 = 5;
pub const BYTE: i32 = 6;

/// A tokenizer as GGUF metadata.
#[derive(Clone, Debug, Default)]
pub struct GgufVocab {
    /// `gpt2` or `llama`.
    pub model: &'static str,
    pub pre: &'static str,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    /// SentencePiece scores (`llama` kind).
    pub scores: Vec<f32>,
    /// BPE merges (`gpt2` kind).
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    pub fn write(&self, g: &mut GgufBuilder) {
        g.str("tokenizer.ggml.model", self.model)
            .str("tokenizer.ggml.pre", self.pre)
            .strs("tokenizer.ggml.tokens", &self.tokens)
            .i32s("tokenizer.ggml.token_type", &self.types);
        if !self.scores.is_empty() {
            g.f32s("tokenizer.ggml.scores", &self.scores);
        }
        if !self.merges.is_empty() {
            g.strs("tokenizer.ggml.merges", &self.merges);
        }
        for (key, id) in [
            ("bos", self.bos),
            ("eos", self.eos),
            ("unknown", self.unk),
            ("padding", self.pad),
            ("eot", self.eot),
        ] {
            if let Some(id) = id {
                g.u32(&format!("tokenizer.ggml.{key}_token_id"), id);
            }
        }
        g.bool("tokenizer.ggml.add_bos_token", self.add_bos)
            .bool("tokenizer.ggml.add_eos_token", false);
        if let Some(p) = self.add_space_prefix {
            g.bool("tokenizer.ggml.add_space_prefix", p);
        }
        if let Some(t) = &self.chat_template {
            g.str("tokenizer.chat_template", t);
        }
    }

    /// Pads the vocabulary to `n` tokens as llama.cpp does (`[PAD{i}]`, unused).
    pub fn pad_to(&mut self, n: usize) {
        while self.tokens.len() < n {
            let i = self.tokens.len();
            self.tokens.push(format!("[PAD{i}]"));
            self.types.push(UNUSED);
            if !self.scores.is_empty() {
                self.scores.push(-1000.0);
            }
        }
    }
}

/// A small SentencePiece BPE vocabulary (`llama` kind) with byte fallback, as llama.cpp writes
/// a SentencePiece model: `<unk>` (unknown), `<s>` and `</s>` (control), the 256 byte tokens,
/// then pieces with descending scores (the BPE order). `user` adds user-defined tokens.
pub fn spm_vocab(pieces: &[&str], user: &[&str]) -> GgufVocab {
    let mut v = GgufVocab {
        model: "llama",
        pre: "default",
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_bos: true,
        ..GgufVocab::default()
    };
    let mut push = |t: String, ty: i32, score: f32| {
        v.tokens.push(t);
        v.types.push(ty);
        v.scores.push(score);
    };
    push("<unk>".into(), UNKNOWN, 0.0);
    push("<s>".into(), CONTROL, 0.0);
    push("</s>".into(), CONTROL, 0.0);
    for b in 0..256 {
        push(format!("<0x{b:02X}>"), BYTE, 0.0);
    }
    for (i, p) in pieces.iter().enumerate() {
        push(p.to_string(), NORMAL, -(i as f32));
    }
    for u in user {
        push(u.to_string(), USER_DEFINED, -1000.0);
    }
    v
}

/// The pieces of [`spm_vocab`] for the tests: single characters (among them non-ASCII ones),
/// then the merges a SentencePiece trainer would have found, best first.
pub const SPM_PIECES: &[&str] = &[
    "▁", "e", "t", "a", "o", "n", "h", "l", "r", "s", "i", "c", "d", "u", "p", "f", "é", "ü", "ö",
    "Z", "S", "P", "T", "C", "w", "m", "k", "y", "g", "b", "1", "2", "3", ",", ".", "?", "▁t",
    "he", "▁the", "in", "er", "an", "▁a", "on", "re", "▁c", "ll", "▁h", "ch", "ic", "▁he", "▁hell",
    "o▁", "ri", "▁Z", "ür", "ich", "▁S", "ão", "▁P", "au", "lo", "af", "▁caf", "é▁", "▁w", "or",
    "ld", "▁wor", "▁world", "▁hello", "▁1", "▁2", "12",
];

/// A GPT-2 style byte-level vocabulary (`gpt2` kind): the specials of the synthetic
/// tokenizer, the 256 byte symbols, and a few merges.
pub fn byte_level_vocab() -> GgufVocab {
    let bytes = cllm_synth::tokenizer::byte_to_unicode();
    let mut v = GgufVocab {
        model: "gpt2",
        pre: "default",
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        ..GgufVocab::default()
    };
    for s in ["<unk>", "<s>", "</s>"] {
        v.tokens.push(s.into());
        v.types.push(CONTROL);
    }
    for c in bytes {
        v.tokens.push(c.to_string());
        v.types.push(NORMAL);
    }
    for (a, b) in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")] {
        v.tokens.push(format!("{a}{b}"));
        v.types.push(NORMAL);
        v.merges.push(format!("{a} {b}"));
    }
    for s in ["<|im_start|>", "<|im_end|>"] {
        v.tokens.push(s.into());
        v.types.push(CONTROL);
    }
    v
}

/// How [`hf_to_gguf`] writes the file.
#[derive(Clone, Debug)]
pub struct GgufOptions {
    /// `general.architecture` (and the prefix of the hyper-parameter keys); by default the
    /// family's own.
    pub arch: Option<&'static str>,
    pub name: &'static str,
    pub vocab: GgufVocab,
    /// Gemma 3: write each layer's kind as `attention.sliding_window_pattern` (booleans); else
    /// nothing, as llama.cpp's converter, whose runtime fixes the pattern at six.
    pub gemma_pattern: bool,
}

/// The tensors of a safetensors folder as f32 (bf16 or f32 on disk), by name.
pub fn read_tensors(dir: &Path) -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, t) in st.tensors() {
            let v: Vec<f32> = match t.dtype() {
                safetensors::Dtype::BF16 => t
                    .data()
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect(),
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                d => panic!("{name}: dtype {d:?}"),
            };
            let shape = t.shape().iter().map(|&d| d as u64).collect();
            out.insert(name, (shape, v));
        }
    }
    out
}

/// The config of a folder.
pub fn read_config(dir: &Path) -> ModelConfig {
    ModelConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// A GGUF of the model in `dir` (see the module docs).
pub fn hf_to_gguf(dir: &Path, o: &GgufOptions) -> Vec<u8> {
    let cfg = read_config(dir);
    let family = cfg.family;
    let arch = o.arch.unwrap_or(family.gguf());
    let k = |s: &str| format!("{arch}.{s}");
    let mut g = GgufBuilder::default();
    g.str("general.architecture", arch)
        .str("general.name", o.name)
        .u32(&k("context_length"), cfg.max_position_embeddings as u32)
        .u32(&k("embedding_length"), cfg.hidden_size as u32)
        .u32(&k("block_count"), cfg.num_hidden_layers as u32)
        .u32(&k("feed_forward_length"), cfg.intermediate_size as u32)
        .u32(&k("attention.head_count"), cfg.num_attention_heads as u32)
        .u32(
            &k("attention.head_count_kv"),
            cfg.num_key_value_heads as u32,
        )
        .f32(&k("rope.freq_base"), cfg.rope_theta as f32)
        .f32(
            &k("attention.layer_norm_rms_epsilon"),
            cfg.rms_norm_eps as f32,
        );
    match family {
        // Phi-3's converter writes the rotated width, not the head's.
        Family::Phi3 => {
            g.u32(&k("rope.dimension_count"), cfg.rotary_dim as u32);
            g.u32(
                &k("attention.sliding_window"),
                cfg.sliding_window.unwrap_or(0) as u32,
            );
        }
        _ => {
            g.u32(&k("attention.key_length"), cfg.head_dim as u32)
                .u32(&k("attention.value_length"), cfg.head_dim as u32);
            if family != Family::Gemma3 {
                g.u32(&k("rope.dimension_count"), cfg.head_dim as u32);
            }
        }
    }
    // Gemma 3's window, and Mistral's where it has an architecture of its own (written as
    // `llama`, as llama.cpp writes Mistral, it has none).
    if let (Some(w), Family::Gemma3 | Family::Mistral) = (cfg.sliding_window, family) {
        if arch != "llama" {
            g.u32(&k("attention.sliding_window"), w as u32);
        }
    }
    if family == Family::Gemma3 && o.gemma_pattern {
        let sliding: Vec<bool> = (0..cfg.num_hidden_layers)
            .map(|l| cfg.window(l).is_some())
            .collect();
        g.bools(&k("attention.sliding_window_pattern"), &sliding);
    }
    if let RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: orig,
        ..
    } = &cfg.rope_scaling
    {
        // The converter's attention factor (transformers' default), and the factors as tensors.
        let scale = cfg.max_position_embeddings as f64 / *orig as f64;
        let attn = if scale > 1.0 {
            (1.0 + scale.ln() / (*orig as f64).ln()).sqrt()
        } else {
            1.0
        };
        g.u32(&k("rope.scaling.original_context_length"), *orig as u32)
            .f32(&k("rope.scaling.attn_factor"), attn as f32);
        let n = long_factor.len() as u64;
        g.tensor("rope_factors_long.weight", &[n], long_factor.clone())
            .tensor("rope_factors_short.weight", &[n], short_factor.clone());
    }
    if let RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: orig,
    } = &cfg.rope_scaling
    {
        // The converter's `rope_freqs.weight` (LlamaModel.generate_extra_tensors), in float32.
        let (low, high, orig, factor) = (*low, *high, *orig as f32, *factor);
        let dim = cfg.head_dim as f32;
        let freqs: Vec<f32> = (0..cfg.head_dim / 2)
            .map(|i| {
                let freq = 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / dim);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < orig / high {
                    1.0
                } else if wavelen > orig / low {
                    factor
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect();
        g.tensor("rope_freqs.weight", &[freqs.len() as u64], freqs);
    }
    o.vocab.write(&mut g);

    let tensors = read_tensors(dir);
    for spec in cfg.tensors() {
        let (shape, mut v) = tensors
            .get(&spec.name)
            .unwrap_or_else(|| panic!("{} missing", spec.name))
            .clone();
        let heads = match spec.id.module {
            Module::QProj => cfg.num_attention_heads,
            Module::KProj => cfg.num_key_value_heads,
            _ => 0,
        };
        if heads > 0 && family.gguf_permutes_qk() {
            let cols = shape.iter().skip(1).product::<u64>() as usize;
            v = cllm_gguf::permute_rows(&v, shape[0] as usize, cols, heads).unwrap();
        }
        if family.norm_weight_offset() && spec.id.module.role() == Role::Norm {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        g.tensor(&spec.id.gguf_name(family), &shape, v);
    }
    g.bytes()
}

/// What the importer must give for a source value: transformers' undoing of llama.cpp's
/// layout (a norm of a `1 + w` family comes back as `(w + 1) - 1` in float32), rounded to bf16.
pub fn expected_bf16(family: Family, id: TensorId, v: f32) -> u16 {
    let x = if family.norm_weight_offset() && id.module.role() == Role::Norm {
        (v + 1.0) - 1.0
    } else {
        v
    };
    half::bf16::from_f32(x).to_bits()
}
