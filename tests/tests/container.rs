//! The container end to end through the `cllm` binary and the libraries: pack, inspect, verify,
//! unpack, on synthetic fixture models of several shapes and dtypes.

use cllm_format::{Container, Dtype, Limits};
use cllm_loader::hf::HfFolder;
use cllm_tests::{cllm, cllm_ok, s, synth_model};
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Every lossless tensor of `cllm unpack` equals the source byte for byte; quantized tensors come
/// back in the source dtype and close to it.
fn assert_unpacked_matches(
    src: &std::path::Path,
    restored: &std::path::Path,
    container: &Container,
) {
    let a = HfFolder::open(src).unwrap();
    let b = HfFolder::open(restored).unwrap();
    assert_eq!(a.tensors().len(), b.tensors().len());
    for ta in a.tensors() {
        let tb = b
            .get(ta.name)
            .unwrap_or_else(|| panic!("{} missing after unpack", ta.name));
        assert_eq!((ta.dtype, &ta.shape), (tb.dtype, &tb.shape), "{}", ta.name);
        let i = container.find(ta.name).unwrap();
        if container.codec(i).is_lossless() {
            assert!(
                ta.bytes == tb.bytes,
                "{}: lossless tensor not bit-identical",
                ta.name
            );
        } else {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            cllm_format::quant::to_f32(ta.dtype, ta.bytes, &mut x);
            cllm_format::quant::to_f32(tb.dtype, tb.bytes, &mut y);
            let num: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
            let rel = (num / den).sqrt();
            assert!(rel < 0.12, "{}: relative RMS error {rel}", ta.name);
        }
    }
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let x = std::fs::read(src.join(f)).unwrap();
        let y = std::fs::read(restored.join(f)).unwrap();
        assert_eq!(x, y, "{f} not restored");
    }
}

#[test]
fn round_trips_every_preset_dtype_and_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, Dtype, usize)] = &[
        ("tiny", Dtype::Bf16, 1),
        ("tiny-tied", Dtype::F16, 1),
        ("tiny-mha", Dtype::F32, 1),
        ("small", Dtype::Bf16, 3),
    ];
    let presets: &[&[&str]] = &[
        &["--policy", "lossless"],
        &["--policy", "mlp-only"],
        &["--policy", "attn-only"],
        &[
            "--policy",
            "all-linear",
            "--quant",
            "int4",
            "--group-size",
            "32",
        ],
        &["--policy", "lossless", "--lossless", "zstd"],
        &["--policy", "lossless", "--lossless", "raw"],
    ];
    for (n, &(shape, dtype, shards)) in cases.iter().enumerate() {
        let src = synth_model(tmp.path(), shape, dtype, shards, n as u64);
        for (k, preset) in presets.iter().enumerate() {
            let out = tmp.path().join(format!("{shape}-{k}.cllm"));
            let mut args = vec![
                "pack",
                s(&src),
                "-o",
                s(&out),
                "--quiet",
                "--frame-kib",
                "16",
            ];
            args.extend_from_slice(preset);
            cllm_ok(&args);
            let v = json(&cllm_ok(&[
                "verify",
                s(&out),
                "--against",
                s(&src),
                "--json",
            ]));
            assert_eq!(v["ok"], true, "{v}");
            let restored = tmp.path().join(format!("{shape}-{k}-restored"));
            cllm_ok(&["unpack", s(&out), "-o", s(&restored), "--quiet"]);
            let bytes = std::fs::read(&out).unwrap();
            let c = Container::open(&bytes, &Limits::default()).unwrap();
            assert_unpacked_matches(&src, &restored, &c);
        }
    }
}

#[test]
fn policy_presets_choose_the_documented_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 7);
    let plan = |extra: &[&str]| -> Value {
        let mut args = vec!["pack", s(&src), "--dry-run", "--json"];
        args.extend_from_slice(extra);
        json(&cllm_ok(&args))
    };
    let codec_of = |v: &Value, name: &str| -> String {
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} not planned"))["codec"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mlp = plan(&["--policy", "mlp-only"]);
    assert_eq!(
        codec_of(&mlp, "model.layers.0.mlp.down_proj.weight"),
        "int8g"
    );
    let row = plan(&["--policy", "mlp-only", "--quant", "int8-row"]);
    assert_eq!(
        codec_of(&row, "model.layers.0.mlp.down_proj.weight"),
        "int8"
    );
    assert_eq!(
        codec_of(&mlp, "model.layers.0.self_attn.q_proj.weight"),
        "zstd-bp"
    );
    assert_eq!(codec_of(&mlp, "model.embed_tokens.weight"), "zstd-bp");
    assert_eq!(codec_of(&mlp, "lm_head.weight"), "zstd-bp");
    assert_eq!(codec_of(&mlp, "model.norm.weight"), "zstd-bp");
    let all = plan(&[
        "--policy",
        "all-linear",
        "--quant",
        "int4",
        "--group-size",
        "32",
        "--rule",
        "re:.*down_proj.*=int8",
    ]);
    assert_eq!(
        codec_of(&all, "model.layers.1.mlp.down_proj.weight"),
        "int8g"
    );
    assert_eq!(codec_of(&all, "model.layers.1.mlp.up_proj.weight"), "int4");
    assert_eq!(
        codec_of(&all, "model.layers.1.self_attn.k_proj.weight"),
        "int4"
    );
    assert!(all["projected_bytes"].as_u64().unwrap() < all["source_bytes"].as_u64().unwrap());
    // A dry run writes nothing.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    // A rule that matches nothing is a usage error, unless allowed.
    let out = cllm(&["pack", s(&src), "--dry-run", "--rule", "*nothing*=int8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("matches no tensor"));
    cllm_ok(&[
        "pack",
        s(&src),
        "--dry-run",
        "--rule",
        "*nothing*=int8",
        "--allow-unmatched",
    ]);

    // A TOML policy file with the same rules.
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        "preset = \"attn-only\"\n[[rule]]\npattern = \"*.q_proj.weight\"\ncodec = \"lossless\"\n",
    )
    .unwrap();
    let v = json(&cllm_ok(&[
        "pack",
        s(&src),
        "--dry-run",
        "--json",
        "--policy-file",
        s(&policy),
    ]));
    assert_eq!(
        codec_of(&v, "model.layers.0.self_attn.q_proj.weight"),
        "zstd-bp"
    );
    assert_eq!(
        codec_of(&v, "model.layers.0.self_attn.k_proj.weight"),
        "int8g"
    );
}

#[test]
fn output_is_byte_identical_across_runs_and_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 3);
    let mut files = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = tmp.path().join(format!("t{threads}.cllm"));
        cllm_ok(&[
            "pack",
            s(&src),
            "-o",
            s(&out),
            "--policy",
            "mlp-only",
            "--threads",
            threads,
            "--frame-kib",
            "64",
            "--quiet",
        ]);
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn inspect_reports_codecs_sizes_and_provenance() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 1);
    let out = tmp.path().join("m.cllm");
    cllm_ok(&[
        "pack",
        s(&src),
        "-o",
        s(&out),
        "--policy",
        "mlp-only",
        "--quiet",
    ]);
    let v = json(&cllm_ok(&["inspect", s(&out), "--json"]));
    // Group-wise int8 is a format 1.1 codec; the writer says so.
    assert_eq!(v["version"], serde_json::json!([1, 1]));
    assert_eq!(v["policy"]["preset"], "mlp-only");
    // down_proj's 160 columns take groups of 32, the 64-column gate/up the default 64.
    assert_eq!(v["codecs"]["int8g/g64"]["tensors"], 4);
    assert_eq!(v["codecs"]["int8g/g32"]["tensors"], 2);
    assert!(v["provenance"]["tool"]
        .as_str()
        .unwrap()
        .starts_with("cllm "));
    let sources = v["provenance"]["source_files"].as_array().unwrap();
    assert!(sources.iter().any(|f| f["name"] == "model.safetensors"));
    let names: Vec<_> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"config.json") && names.contains(&"tokenizer.json"));
    let total = &v["total"];
    assert!(total["stored_bytes"].as_u64().unwrap() < total["raw_bytes"].as_u64().unwrap());
    let text = cllm_ok(&["inspect", s(&out)]);
    assert!(text.contains("model.layers.0.mlp.up_proj.weight") && text.contains("int8g/g64"));

    // Per-row int8 only: the file stays readable by 1.0 readers and says 1.0.
    let row = tmp.path().join("row.cllm");
    cllm_ok(&[
        "pack",
        s(&src),
        "-o",
        s(&row),
        "--policy",
        "mlp-only",
        "--quant",
        "int8-row",
        "--quiet",
    ]);
    let v = json(&cllm_ok(&["inspect", s(&row), "--json"]));
    assert_eq!(v["version"], serde_json::json!([1, 0]));
    assert_eq!(v["codecs"]["int8"]["tensors"], 6);
}

#[test]
fn verify_exit_codes_name_the_tensor_and_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 2);
    let out = tmp.path().join("m.cllm");
    cllm_ok(&[
        "pack",
        s(&src),
        "-o",
        s(&out),
        "--quiet",
        "--frame-kib",
        "8",
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let c = Container::open(&bytes, &Limits::default()).unwrap();
    let t = &c.tensors()[c.find("model.embed_tokens.weight").unwrap()];
    let frame = t.streams[0].frames[1];
    let mut bad = bytes.clone();
    bad[(frame.offset + frame.stored / 2) as usize] ^= 0x10;
    let bad_path = tmp.path().join("bad.cllm");
    std::fs::write(&bad_path, &bad).unwrap();
    let r = cllm(&["verify", s(&bad_path)]);
    assert_eq!(r.status.code(), Some(1));
    let text = String::from_utf8_lossy(&r.stdout).to_string() + &String::from_utf8_lossy(&r.stderr);
    assert!(
        text.contains("model.embed_tokens.weight") && text.contains("frame 1"),
        "{text}"
    );

    // Against a different source: the lossless tensors differ, named.
    let other = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 99);
    let r = cllm(&["verify", s(&out), "--against", s(&other), "--json"]);
    assert_eq!(r.status.code(), Some(1));
    let v = json(&String::from_utf8_lossy(&r.stdout));
    assert_eq!(v["ok"], false);
    assert!(v["failures"][0]
        .as_str()
        .unwrap()
        .contains("differ from the source"));

    // Usage and I/O errors exit 2.
    assert_eq!(
        cllm(&["verify", "/nonexistent.cllm"]).status.code(),
        Some(2)
    );
    assert_eq!(cllm(&["verify"]).status.code(), Some(2));
}

#[test]
fn quantized_verify_reports_error_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 4);
    let other = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 5);
    for (args, max_rel) in [
        (vec!["--policy", "all-linear"], 0.01),
        (
            vec![
                "--policy",
                "all-linear",
                "--quant",
                "int4",
                "--group-size",
                "64",
            ],
            0.12,
        ),
        // int4m: parameters searched per group; verify re-runs the search bit for bit.
        (
            vec![
                "--policy",
                "all-linear",
                "--quant",
                "int4m",
                "--group-size",
                "64",
            ],
            0.12,
        ),
        // int4s: super-blocks of searched parameters, their codes re-derived bit for bit, in
        // frames of 4 KiB that cut rows and super-blocks.
        (
            vec![
                "--policy",
                "all-linear",
                "--quant",
                "int4s",
                "--group-size",
                "32",
                "--frame-kib",
                "4",
            ],
            0.12,
        ),
        // Frames of 4 KiB: rows straddle frames, so verify re-quantizes windows inside rows.
        (
            vec![
                "--policy",
                "all-linear",
                "--quant",
                "int8-row",
                "--frame-kib",
                "4",
            ],
            0.01,
        ),
    ] {
        let out = tmp.path().join("q.cllm");
        let mut a = vec!["pack", s(&src), "-o", s(&out), "--quiet"];
        a.extend(args);
        cllm_ok(&a);
        let v = json(&cllm_ok(&[
            "verify",
            s(&out),
            "--against",
            s(&src),
            "--json",
        ]));
        let ag = &v["against"];
        let q = ag["quantized"].as_array().unwrap();
        assert_eq!(q.len(), 4 * 7);
        assert_eq!(ag["quantized_reproduced"], 28);
        for t in q {
            let rel = t["rel_rms"].as_f64().unwrap();
            assert!(rel > 0.0 && rel < max_rel, "{t}");
            assert!(t["sqnr_db"].as_f64().unwrap() > 15.0, "{t}");
        }
        // Against another model of the same shapes, no quantized tensor is reproduced, and each
        // failure names its tensor and stream.
        let r = cllm(&["verify", s(&out), "--against", s(&other), "--json"]);
        assert_eq!(r.status.code(), Some(1));
        let v = json(&String::from_utf8_lossy(&r.stdout));
        assert_eq!(v["against"]["quantized_reproduced"], 0);
        let failures: Vec<&str> = v["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(
            failures
                .iter()
                .any(|f| f.contains("model.layers.0.mlp.down_proj.weight")
                    && f.contains("does not reproduce stream 'data'")),
            "{failures:?}"
        );
    }
}

#[test]
fn an_existing_good_file_survives_a_failed_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 5);
    let out = tmp.path().join("m.cllm");
    cllm_ok(&["pack", s(&src), "-o", s(&out), "--quiet"]);
    let before = std::fs::read(&out).unwrap();
    // An explicit int4 group of 128 cannot hold the tiny model's 64-column tensors: the pack
    // fails.
    let r = cllm(&[
        "pack",
        s(&src),
        "-o",
        s(&out),
        "--rule",
        "*.up_proj.weight=int4-g128",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `pack --calibrate`: the source model runs over a calibration text, its columns' activation
/// energy weights int4s's search, the vectors are embedded, and `verify --against` re-derives
/// every code from them. A different text gives different codes that verify just the same.
#[test]
fn calibrated_int4s_is_reproduced_by_verify_from_its_embedded_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 11);
    let text = tmp.path().join("calib.txt");
    std::fs::write(
        &text,
        "Calibration runs the model over text like the text it will meet. ".repeat(40),
    )
    .unwrap();
    let pack = |out: &std::path::Path, extra: &[&str]| {
        let mut a = vec![
            "pack",
            s(&src),
            "-o",
            s(out),
            "--quiet",
            "--policy",
            "all-linear",
            "--quant",
            "int4s",
            "--group-size",
            "32",
            "--frame-kib",
            "4",
        ];
        a.extend(extra);
        cllm_ok(&a);
        std::fs::read(out).unwrap()
    };
    let small = ["--calib-window-tokens", "32", "--calib-windows", "4"];
    let plain_path = tmp.path().join("plain.cllm");
    let plain = pack(&plain_path, &[]);
    let inspect = json(&cllm_ok(&["inspect", s(&plain_path), "--json"]));
    assert!(inspect["calibration"].is_null(), "{inspect}");
    let built_in = tmp.path().join("a.cllm");
    let a = pack(&built_in, &[&["--calibrate"][..], &small].concat());
    let own = tmp.path().join("b.cllm");
    let b = pack(
        &own,
        &[&["--calibrate", "--calib-text", s(&text)][..], &small].concat(),
    );
    let codes = |bytes: &[u8]| {
        let c = Container::open(bytes, &Limits::default()).unwrap();
        let i = c.find("model.layers.0.mlp.down_proj.weight").unwrap();
        (c.index.version, c.decode_tensor(i).unwrap())
    };
    let (va, ca) = codes(&a);
    assert_eq!(va, [1, 4]);
    assert_ne!(ca, codes(&plain).1, "the weights changed no parameter");
    assert_ne!(ca, codes(&b).1, "two texts gave the same parameters");
    for file in [&built_in, &own] {
        let v = json(&cllm_ok(&[
            "verify",
            s(file),
            "--against",
            s(&src),
            "--json",
        ]));
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["against"]["quantized_reproduced"], 28, "{v}");
        let inspect = json(&cllm_ok(&["inspect", s(file), "--json"]));
        assert!(
            inspect.to_string().contains("importance.safetensors"),
            "{inspect}"
        );
        // What the calibration ran on: every quantized projection, 4 windows of 32 tokens.
        let cal = &inspect["calibration"];
        assert_eq!(cal["tensors"], 28, "{cal}");
        assert_eq!(cal["about"]["windows"], "4", "{cal}");
        assert_eq!(cal["about"]["window_tokens"], "32", "{cal}");
        let text = cllm_ok(&["inspect", s(file)]);
        assert!(text.contains("calibrated 28 tensors on "), "{text}");
    }
    // Nothing to weight, and a missing text: clear errors before anything is written.
    for (extra, expect) in [
        (vec!["--quant", "int8"], "int4m and int4s"),
        (
            vec!["--quant", "int4s", "--calib-text", "/nonexistent/text"],
            "/nonexistent/text",
        ),
    ] {
        let out = tmp.path().join("bad.cllm");
        let mut a = vec![
            "pack",
            s(&src),
            "-o",
            s(&out),
            "--policy",
            "all-linear",
            "--calibrate",
        ];
        a.extend(extra);
        let r = cllm(&a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(expect), "{err}");
        assert!(!out.exists());
    }
}

/// `cllm inspect m.cllm | head`: a reader that goes away is not a panic; the command stops with
/// the shell's status for SIGPIPE (or 0 when everything was written before it went).
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "small", Dtype::Bf16, 1, 2);
    let out = tmp.path().join("m.cllm");
    cllm_ok(&["pack", s(&src), "-o", s(&out), "--quiet"]);
    for _ in 0..3 {
        let mut child = Command::new(cllm_tests::cllm_bin())
            .args(["inspect", s(&out)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!err.contains("panicked"), "{err}");
        assert!(matches!(status.code(), Some(0 | 141)), "{status:?}: {err}");
    }
}
