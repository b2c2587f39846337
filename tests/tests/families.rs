//! Every family's synthetic fixture through the whole toolchain on the CPU, as a user runs it:
//! written by the fixture generator from the model description, opened by the engine, cached
//! decode bit-identical to recompute for every prefill/decode split, packed with each preset
//! (biases are never quantized), and `verify --run` on the lossless container bit-identical to
//! the folder. (The GPU twin is `gpu_synthetic_models_match_cpu_with_long_contexts`.)

use std::path::Path;

use cllm_format::Dtype;
use cllm_model::{Family, Module, TensorId};
use cllm_runtime::{Engine, OpenOptions};
use cllm_tests::{cllm_ok, json_of, s, synth_model, Rng, SHORT_RUN};
use serde_json::Value;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Cached decode gives the recompute's bits after prefills of every length in `splits`.
fn check_kv_parity(path: &Path, tokens: &[u32], splits: &[usize]) {
    let model = Engine::cpu().open(path, &OpenOptions::default()).unwrap();
    let cpu = model.cpu().unwrap();
    let full = cpu.forward_all(tokens).unwrap();
    for &split in splits {
        let mut session = model.session(tokens.len()).unwrap();
        let mut got = session.prefill_all(&tokens[..split]).unwrap();
        for &t in &tokens[split..] {
            got.push(session.decode(t).unwrap());
        }
        for (pos, (a, b)) in full.iter().zip(&got).enumerate() {
            assert_eq!(
                bits(a),
                bits(b),
                "{}: prefill of {split}, position {pos}",
                path.display()
            );
        }
    }
}

fn verify_run(container: &Path, folder: &Path) -> Value {
    let mut args = vec![
        "verify",
        s(container),
        "--against",
        s(folder),
        "--run",
        "--json",
    ];
    args.extend_from_slice(SHORT_RUN);
    let out = cllm_tests::cllm(&args);
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v}");
    v
}

#[test]
fn every_family_fixture_runs_packs_and_verifies_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    for (shape, family) in [
        ("tiny", Family::Llama),
        ("tiny-qwen2", Family::Qwen2),
        ("tiny-mistral", Family::Mistral),
        ("tiny-qwen3", Family::Qwen3),
        ("tiny-gemma3", Family::Gemma3),
        ("tiny-phi3", Family::Phi3),
    ] {
        let folder = synth_model(tmp.path(), shape, Dtype::Bf16, 0, 11);
        let model = Engine::cpu()
            .open(&folder, &OpenOptions::default())
            .unwrap();
        let cfg = model.config();
        assert_eq!(cfg.family, family);
        // The description's biases are what the fixture has and what the model took.
        let qkv_bias = cfg.has_bias(Module::QProj);
        assert_eq!(qkv_bias, family == Family::Qwen2, "{shape}");
        assert!(!cfg.has_bias(Module::OProj));
        assert!(model.cpu().unwrap().unused_tensors().is_empty(), "{shape}");

        let mut rng = Rng::new(3);
        let tokens: Vec<u32> = (0..70)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect();
        check_kv_parity(&folder, &tokens, &[1, 33, 69]);
        // The windows of the test shapes are shorter than the sequence: the splits above cross
        // them.
        if let Some(w) = (0..cfg.num_hidden_layers)
            .filter_map(|l| cfg.window(l))
            .min()
        {
            assert!(w < tokens.len() - 1, "{shape}: window {w} is not crossed");
        }
        // Past longrope's original length a sequence takes the long factors; cached decode
        // still equals recompute there.
        if let cllm_model::RopeScaling::LongRope {
            original_max_position_embeddings: o,
            ..
        } = cfg.rope_scaling
        {
            let long: Vec<u32> = (0..o + 20)
                .map(|_| rng.below(cfg.vocab_size as u64) as u32)
                .collect();
            check_kv_parity(&folder, &long, &[o - 1, o + 1]);
        }

        // Lossless: the container runs with the folder's bits.
        let lossless = tmp.path().join(format!("{shape}.cllm"));
        cllm_ok(&["pack", s(&folder), "-o", s(&lossless), "--quiet"]);
        let v = verify_run(&lossless, &folder);
        let d = &v["run"]["divergence"];
        assert_eq!(d["logits"]["identical"], true, "{shape}: {v}");
        assert_eq!(d["kv_cache"]["test"]["identical"], true, "{shape}");
        assert_eq!(d["mean_kld"], 0.0);

        // All linear weights quantized; the biases stay as they are.
        let int8 = tmp.path().join(format!("{shape}-int8.cllm"));
        cllm_ok(&[
            "pack",
            s(&folder),
            "-o",
            s(&int8),
            "--quiet",
            "--policy",
            "all-linear",
        ]);
        let v = verify_run(&int8, &folder);
        let w = &v["run"]["weights"];
        let v_proj = if family.fused_projections() {
            Module::QkvProj
        } else {
            Module::VProj
        };
        let bias = TensorId::bias(v_proj, Some(1)).hf_name();
        let weight = TensorId::weight(v_proj, Some(1)).hf_name();
        let row = |name: &str| {
            w["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == name)
                .cloned()
        };
        assert_eq!(row(&weight).unwrap()["identical"], false, "{shape}");
        match row(&bias) {
            Some(b) => {
                assert!(qkv_bias);
                assert_eq!(b["identical"], true, "{shape}: {bias} was quantized");
            }
            None => assert!(!qkv_bias, "{shape}: {bias} missing"),
        }
        assert_eq!(
            v["run"]["divergence"]["kv_cache"]["test"]["identical"], true,
            "{shape}"
        );
        check_kv_parity(&int8, &tokens, &[1, 69]);
    }
}

#[test]
fn a_sliding_window_really_limits_attention() {
    // The same weights with and without Mistral's window: equal logits while the sequence fits
    // in the window, different after it.
    let tmp = tempfile::tempdir().unwrap();
    let folder = synth_model(tmp.path(), "tiny-mistral", Dtype::Bf16, 0, 5);
    let unlimited = tmp.path().join("unlimited");
    std::fs::create_dir(&unlimited).unwrap();
    for e in std::fs::read_dir(&folder).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), unlimited.join(e.file_name())).unwrap();
    }
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
    let window = config["sliding_window"].as_u64().unwrap() as usize;
    config["sliding_window"] = Value::Null;
    std::fs::write(unlimited.join("config.json"), config.to_string()).unwrap();

    let mut rng = Rng::new(9);
    let tokens: Vec<u32> = (0..window + 8).map(|_| rng.below(300) as u32).collect();
    let run = |p: &Path| {
        let m = Engine::cpu().open(p, &OpenOptions::default()).unwrap();
        m.cpu().unwrap().forward_all(&tokens).unwrap()
    };
    let (windowed, full) = (run(&folder), run(&unlimited));
    for pos in 0..tokens.len() {
        let same = bits(&windowed[pos]) == bits(&full[pos]);
        assert_eq!(same, pos < window, "position {pos} (window {window})");
    }
}

/// A one-layer model of family `arch` as llama.cpp stores it (f32; shapes in PyTorch order): q and k rows numbered
/// `row * 16 + col` so the importer's row order shows, q/k/v biases where `biases`.
fn tiny_gguf(arch: &str, biases: bool) -> Vec<u8> {
    let mut g = cllm_tests::gguf_families::GgufBuilder::default();
    let k = |s: &str| format!("{arch}.{s}");
    g.str("general.architecture", arch)
        .u32(&k("block_count"), 1)
        .u32(&k("embedding_length"), 8)
        .u32(&k("feed_forward_length"), 16)
        .u32(&k("attention.head_count"), 2)
        .u32(&k("attention.head_count_kv"), 1)
        .u32(&k("context_length"), 64)
        .f32(&k("rope.freq_base"), 10000.0)
        .f32(&k("attention.layer_norm_rms_epsilon"), 1e-6)
        .str("tokenizer.ggml.model", "gpt2")
        .strs("tokenizer.ggml.tokens", &["a", "b", "ab"])
        .strs("tokenizer.ggml.merges", &["a b"])
        .i32s("tokenizer.ggml.token_type", &[1, 1, 1]);
    let numbered = |rows: usize, cols: usize| -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i / cols) * 16 + i % cols) as f32)
            .collect()
    };
    let small = |n: usize| -> Vec<f32> { (0..n).map(|i| (i % 7) as f32 * 0.01).collect() };
    g.tensor("token_embd.weight", &[3, 8], small(24))
        .tensor("output_norm.weight", &[8], vec![1.0; 8])
        .tensor("blk.0.attn_norm.weight", &[8], vec![1.0; 8])
        .tensor("blk.0.ffn_norm.weight", &[8], vec![1.0; 8])
        .tensor("blk.0.attn_q.weight", &[8, 8], numbered(8, 8))
        .tensor("blk.0.attn_k.weight", &[4, 8], numbered(4, 8))
        .tensor("blk.0.attn_v.weight", &[4, 8], small(32))
        .tensor("blk.0.attn_output.weight", &[8, 8], small(64))
        .tensor("blk.0.ffn_gate.weight", &[16, 8], small(128))
        .tensor("blk.0.ffn_up.weight", &[16, 8], small(128))
        .tensor("blk.0.ffn_down.weight", &[8, 16], small(128));
    if biases {
        g.tensor("blk.0.attn_q.bias", &[8], numbered(8, 1))
            .tensor("blk.0.attn_k.bias", &[4], numbered(4, 1))
            .tensor("blk.0.attn_v.bias", &[4], small(4));
    }
    g.bytes()
}

/// The rows of a bf16 tensor in a safetensors file, as f32.
fn rows(dir: &Path, name: &str) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cols: usize = t.shape().iter().skip(1).product();
    let v: Vec<f32> = t
        .data()
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    v.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
}

#[test]
fn ggufs_of_each_family_import_by_the_description_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    // (architecture, biases, llama.cpp permuted q/k rows for its RoPE)
    for (arch, biases, permuted) in [("llama", false, true), ("qwen2", true, false)] {
        let gguf = tmp.path().join(format!("{arch}.gguf"));
        std::fs::write(&gguf, tiny_gguf(arch, biases)).unwrap();
        let dir = tmp.path().join(arch);
        cllm_ok(&["import-gguf", s(&gguf), "-o", s(&dir)]);
        let config: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], arch);
        let cfg = cllm_model::ModelConfig::from_json(&config.to_string()).unwrap();
        // Exactly the tensors the description gives the config.
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let mut written: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .names()
            .into_iter()
            .map(String::from)
            .collect();
        written.sort();
        let mut want: Vec<String> = cfg.tensors().into_iter().map(|t| t.name).collect();
        want.sort();
        assert_eq!(written, want, "{arch}");

        // q has 2 heads of 4 rows: llama.cpp interleaves each head's halves (rows 0, 2, 1, 3).
        let q = rows(&dir, &TensorId::weight(Module::QProj, Some(0)).hf_name());
        let order: Vec<usize> = q.iter().map(|r| r[0] as usize / 16).collect();
        let expect = if permuted {
            vec![0, 2, 1, 3, 4, 6, 5, 7]
        } else {
            (0..8).collect()
        };
        assert_eq!(order, expect, "{arch}");
        // Columns keep their order.
        assert_eq!(q[1][3], q[1][0] + 3.0, "{arch}");
        if biases {
            let b = rows(&dir, &TensorId::bias(Module::QProj, Some(0)).hf_name());
            let order: Vec<usize> = b.iter().map(|r| r[0] as usize / 16).collect();
            assert_eq!(order, expect, "{arch}: q bias");
        }

        // The imported folder runs, and so does its container.
        let out = cllm_ok(&["run", s(&dir), "-p", "ab", "-n", "2", "--json"]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["prompt_ids"], serde_json::json!([2]), "{v}");
        assert_eq!(v["generated_ids"].as_array().unwrap().len(), 2, "{v}");
        let container = tmp.path().join(format!("{arch}.cllm"));
        cllm_ok(&["pack", s(&dir), "-o", s(&container), "--quiet"]);
        let out = cllm_ok(&["run", s(&container), "-p", "ab", "-n", "2", "--json"]);
        let w: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(w["generated_ids"], v["generated_ids"], "{arch}");
    }
}

#[test]
fn an_unsupported_architecture_is_named_once_with_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = synth_model(tmp.path(), "tiny", Dtype::Bf16, 0, 2);
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
    config["model_type"] = "falcon".into();
    std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
    let out = cllm_tests::cllm(&["run", s(&folder), "-p", "hi", "-n", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let supported = cllm_model::Family::supported_model_types();
    assert!(
        err.contains("\"falcon\"") && err.contains(&supported),
        "{err}"
    );
    // The message is said once (library errors carry their source in their own text).
    assert_eq!(err.matches("falcon").count(), 1, "{err}");
}

#[test]
fn importing_a_gguf_twice_gives_the_same_bytes() {
    // References record the imported folder's file hashes, so an import must be a function of
    // its input (a metadata map written in hash order once made the header differ run to run).
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    std::fs::write(&gguf, tiny_gguf("qwen2", true)).unwrap();
    let mut files = Vec::new();
    for i in 0..4 {
        let dir = tmp.path().join(format!("out{i}"));
        cllm_ok(&["import-gguf", s(&gguf), "-o", s(&dir)]);
        let mut all = Vec::new();
        for name in [
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            all.push(std::fs::read(dir.join(name)).unwrap());
        }
        files.push(all);
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]));
}
