//! `cllm export --to compressed-tensors`: the folder's structure and `quantization_config`, the
//! packing conventions (int8 codes offset by 128 in int32 words, int4 nibbles, zero points packed
//! along the rows), what is refused and why, shards with an index, and `cllm verify --against`
//! the exported folder (passes; fails naming the tensor on a flipped byte). The bit-identity with
//! the compressed-tensors package's own decompression is `scripts/compressed_tensors_check.sh`
//! (it needs PyTorch).

use std::path::{Path, PathBuf};

use cllm_format::Dtype;
use cllm_loader::Packed;
use cllm_tests::{cllm, cllm_ok, s, synth_model};
use half::{bf16, f16};
use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::Value;

fn pack(src: &Path, out: &Path, args: &[&str]) {
    let mut a = vec!["pack", s(src), "-o", s(out), "-q"];
    a.extend_from_slice(args);
    cllm_ok(&a);
}

fn export(m: &Path, out: &Path) -> std::process::Output {
    cllm(&["export", s(m), "--to", "compressed-tensors", "-o", s(out)])
}

fn export_ok(m: &Path, out: &Path) {
    let o = export(m, out);
    assert!(
        o.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// The config group whose targets include `module`.
fn group_of<'a>(qc: &'a Value, module: &str) -> &'a Value {
    qc["config_groups"]
        .as_object()
        .unwrap()
        .values()
        .find(|g| g["targets"].as_array().unwrap().iter().any(|t| t == module))
        .unwrap_or_else(|| panic!("no config group targets {module}"))
}

/// Every tensor of a single-file export: name -> (dtype, shape, bytes).
fn tensors(file: &Path) -> Vec<(String, StDtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn find<'a>(
    ts: &'a [(String, StDtype, Vec<usize>, Vec<u8>)],
    name: &str,
) -> &'a (String, StDtype, Vec<usize>, Vec<u8>) {
    ts.iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("{name} missing from the export"))
}

/// Stream `stream` of tensor `name` of the container, decoded.
fn stream(m: &Path, name: &str, stream: usize) -> Vec<u8> {
    let p = Packed::open(m).unwrap();
    p.decode_stream(p.find(name).unwrap(), stream).unwrap()
}

fn verify(m: &Path, dir: &Path) -> std::process::Output {
    cllm(&["verify", s(m), "--against", s(dir)])
}

/// Flips bit 0 of byte `at` of tensor `name`'s data in the safetensors file `file`.
fn flip(file: &Path, name: &str, at: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = h[name]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[8 + n + start + at] ^= 1;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn int8_group_export_structure_config_and_packing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 0, 11);
    let m = tmp.path().join("m.cllm");
    pack(
        &src,
        &m,
        &[
            "--policy",
            "mlp-only",
            "--quant",
            "int8",
            "--group-size",
            "32",
        ],
    );
    let out = tmp.path().join("ct");
    export_ok(&m, &out);

    // Every embedded file is copied; config.json gains the quantization config.
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(out.join("model.safetensors").exists());
    assert!(!out.join("model.safetensors.index.json").exists());
    let c = config(&out);
    let qc = &c["quantization_config"];
    assert_eq!(qc["quant_method"], "compressed-tensors");
    assert_eq!(qc["format"], "pack-quantized");
    assert_eq!(qc["quantization_status"], "compressed");
    let src_cfg = config(&src);
    assert_eq!(c["hidden_size"], src_cfg["hidden_size"]);
    let g = group_of(qc, "model.layers.0.mlp.down_proj");
    assert_eq!(g["format"], "pack-quantized");
    assert_eq!(g["input_activations"], Value::Null);
    let w = &g["weights"];
    assert_eq!(w["num_bits"], 8);
    assert_eq!(w["type"], "int");
    assert_eq!(w["symmetric"], true);
    assert_eq!(w["strategy"], "group");
    assert_eq!(w["group_size"], 32);
    assert_eq!(w["dynamic"], false);
    let ignore: Vec<&str> = qc["ignore"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ignore.contains(&"lm_head"));
    assert!(ignore.contains(&"model.layers.0.self_attn.q_proj"));
    assert!(!ignore.contains(&"model.layers.0.mlp.down_proj"));

    let ts = tensors(&out.join("model.safetensors"));
    let name = "model.layers.0.mlp.down_proj.weight";
    let p = Packed::open(&m).unwrap();
    let shape = p.tensor(p.find(name).unwrap()).shape.clone();
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    assert!(
        ts.iter().all(|t| t.0 != name),
        "the float weight is replaced"
    );
    let packed = find(&ts, "model.layers.0.mlp.down_proj.weight_packed");
    assert_eq!(packed.1, StDtype::I32);
    assert_eq!(packed.2, vec![rows, cols / 4]);
    // Each int32 word holds four codes, low byte first, each as the signed code plus 128.
    let codes = stream(&m, name, 0);
    let word0 = i32::from_le_bytes(packed.3[..4].try_into().unwrap()) as u32;
    for j in 0..4 {
        let q = codes[j] as i8 as i32;
        assert_eq!(((word0 >> (8 * j)) & 0xFF) as i32, q + 128);
    }
    assert!(packed.3.iter().zip(&codes).all(|(a, b)| *a == b ^ 0x80));
    let scale = find(&ts, "model.layers.0.mlp.down_proj.weight_scale");
    assert_eq!(scale.1, StDtype::F32);
    assert_eq!(scale.2, vec![rows, cols / 32]);
    assert_eq!(scale.3, stream(&m, name, 1));
    let ws = find(&ts, "model.layers.0.mlp.down_proj.weight_shape");
    assert_eq!(ws.1, StDtype::I64);
    let dims: Vec<i64> =
        ws.3.chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
    assert_eq!(dims, vec![rows as i64, cols as i64]);
    assert!(ts
        .iter()
        .all(|t| t.0 != "model.layers.0.mlp.down_proj.weight_zero_point"));
    // Lossless tensors: the source bytes, in the source dtype.
    let q = find(&ts, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(q.1, StDtype::BF16);
    let src_ts = tensors(&src.join("model.safetensors"));
    assert_eq!(
        q.3,
        find(&src_ts, "model.layers.0.self_attn.q_proj.weight").3
    );

    // verify --against the export: every check holds.
    let o = verify(&m, &out);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(stdout.contains("compressed-tensors export"), "{stdout}");
}

#[test]
fn int8_row_is_the_channel_strategy() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::F32, 0, 12);
    let m = tmp.path().join("m.cllm");
    pack(&src, &m, &["--policy", "all-linear", "--quant", "int8-row"]);
    let out = tmp.path().join("ct");
    export_ok(&m, &out);
    let c = config(&out);
    let g = group_of(&c["quantization_config"], "model.layers.1.self_attn.k_proj");
    assert_eq!(g["weights"]["strategy"], "channel");
    assert_eq!(g["weights"]["group_size"], Value::Null);
    let ts = tensors(&out.join("model.safetensors"));
    let scale = find(&ts, "model.layers.1.self_attn.k_proj.weight_scale");
    assert_eq!(scale.2[1], 1, "one scale per row: [rows, 1]");
    assert!(verify(&m, &out).status.success());
}

#[test]
fn verify_against_the_export_names_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 0, 13);
    let m = tmp.path().join("m.cllm");
    pack(&src, &m, &["--policy", "mlp-only", "--quant", "int8"]);
    for (victim, at) in [
        ("model.layers.1.mlp.up_proj.weight_packed", 77),
        ("model.layers.0.mlp.gate_proj.weight_scale", 5),
        ("model.layers.0.self_attn.o_proj.weight", 100),
    ] {
        let out = tmp.path().join(format!("ct-{victim}"));
        export_ok(&m, &out);
        assert!(verify(&m, &out).status.success());
        flip(&out.join("model.safetensors"), victim, at);
        let o = verify(&m, &out);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!("FAIL {victim}: byte {at} ")),
            "{victim}: {text}"
        );
    }
}

#[test]
fn int4_with_arbitrary_minimums_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 0, 14);
    let m = tmp.path().join("m.cllm");
    pack(&src, &m, &["--policy", "mlp-only", "--quant", "int4"]);
    let out = tmp.path().join("ct");
    let o = export(&m, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("tensor model.layers.0.mlp.down_proj.weight: int4 group"),
        "{err}"
    );
    assert!(err.contains("whole-number zero point"), "{err}");
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn fused_projections_with_different_codecs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 0, 15);
    let m = tmp.path().join("m.cllm");
    pack(
        &src,
        &m,
        &["--rule", "re:.*self_attn\\.k_proj\\.weight=int8-row"],
    );
    let o = export(&m, &tmp.path().join("ct"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("q_proj/k_proj/v_proj"), "{err}");
    assert!(err.contains("fused"), "{err}");
}

#[test]
fn a_lossless_model_exports_as_a_plain_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 0, 16);
    let m = tmp.path().join("m.cllm");
    pack(&src, &m, &["--policy", "lossless"]);
    let out = tmp.path().join("ct");
    export_ok(&m, &out);
    assert!(config(&out).get("quantization_config").is_none());
    assert_eq!(
        tensors(&out.join("model.safetensors")),
        tensors(&src.join("model.safetensors"))
    );
    // A plain folder: verify --against compares it as a source folder.
    assert!(verify(&m, &out).status.success());
}

/// A tiny bf16 model whose `down_proj` weights int4 carries exactly: per group of 32, codes 0..15
/// (both ends present) minus a whole zero point k, times 2^-6; one group all zero (scale 0).
fn int4_exact_model(dir: &Path) -> PathBuf {
    let src = synth_model(dir, "tiny", Dtype::Bf16, 0, 17);
    let file = src.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut rng = cllm_tests::Rng::new(3);
    let mut owned: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = vec![];
    for (name, t) in st.tensors() {
        let mut data = t.data().to_vec();
        if name.ends_with("mlp.down_proj.weight") {
            let (rows, cols) = (t.shape()[0], t.shape()[1]);
            data.clear();
            for r in 0..rows {
                for g in 0..cols / 32 {
                    let k = rng.below(16) as f32;
                    for j in 0..32 {
                        let q = match j {
                            0 => 0,
                            1 => 15,
                            _ => rng.below(16),
                        } as f32;
                        let x = if r == 0 && g == 0 {
                            0.0
                        } else {
                            (q - k) / 64.0
                        };
                        data.extend_from_slice(&bf16::from_f32(x).to_le_bytes());
                    }
                }
            }
        }
        owned.push((name, t.dtype(), t.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, sh, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, sh.clone(), data).unwrap(),
            )
        })
        .collect();
    drop(st);
    safetensors::serialize_to_file(views, None, &file).unwrap();
    src
}

#[test]
fn int4_whose_minimums_are_whole_multiples_exports_with_zero_points() {
    let tmp = tempfile::tempdir().unwrap();
    let src = int4_exact_model(tmp.path());
    let m = tmp.path().join("m.cllm");
    pack(&src, &m, &["--rule", "re:.*down_proj\\.weight=int4-g32"]);
    let out = tmp.path().join("ct");
    export_ok(&m, &out);
    let c = config(&out);
    let name = "model.layers.1.mlp.down_proj.weight";
    let g = group_of(&c["quantization_config"], "model.layers.1.mlp.down_proj");
    assert_eq!(g["weights"]["num_bits"], 4);
    assert_eq!(g["weights"]["symmetric"], false);
    assert_eq!(g["weights"]["group_size"], 32);
    let ts = tensors(&out.join("model.safetensors"));
    let p = Packed::open(&m).unwrap();
    let shape = p.tensor(p.find(name).unwrap()).shape.clone();
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    let packed = find(&ts, "model.layers.1.mlp.down_proj.weight_packed");
    assert_eq!(packed.2, vec![rows, cols / 8]);
    assert_eq!(
        packed.3,
        stream(&m, name, 0),
        "cllm's nibbles are the words"
    );
    // Scales widened to f32; zero points k - 8 stored as k in nibble j of word (w, g) for row
    // 8w + j; with min = -k * scale.
    let scales = stream(&m, name, 1);
    let mins = stream(&m, name, 2);
    let groups = cols / 32;
    let ws = find(&ts, "model.layers.1.mlp.down_proj.weight_scale");
    assert_eq!(ws.2, vec![rows, groups]);
    let zp = find(&ts, "model.layers.1.mlp.down_proj.weight_zero_point");
    assert_eq!(zp.1, StDtype::I32);
    assert_eq!(zp.2, vec![rows.div_ceil(8), groups]);
    for r in 0..rows {
        for gi in 0..groups {
            let at = r * groups + gi;
            let s = f16::from_le_bytes([scales[2 * at], scales[2 * at + 1]]).to_f32();
            let mn = f16::from_le_bytes([mins[2 * at], mins[2 * at + 1]]).to_f32();
            let s32 = f32::from_le_bytes(ws.3[4 * at..4 * at + 4].try_into().unwrap());
            assert_eq!(s32.to_bits(), s.to_bits());
            let word_at = 4 * ((r / 8) * groups + gi);
            let word = u32::from_le_bytes(zp.3[word_at..word_at + 4].try_into().unwrap());
            let k = ((word >> (4 * (r % 8))) & 0xF) as f32;
            assert_eq!(k * s, -mn, "row {r} group {gi}");
        }
    }
    assert!(verify(&m, &out).status.success());
    flip(
        &out.join("model.safetensors"),
        "model.layers.1.mlp.down_proj.weight_zero_point",
        3,
    );
    let o = verify(&m, &out);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("down_proj.weight_zero_point: byte 3"));
}

#[test]
fn int4_zero_point_rule() {
    use cllm_export::compressed_tensors::int4_zero_points;
    let h = |v: f32| f16::from_f32(v).to_le_bytes();
    let pair = |s: f32, m: f32| (h(s).to_vec(), h(m).to_vec());
    // min = -k * scale for whole k in 0..=15: carried, k returned.
    for (s, m, k) in [
        (0.25, -2.0, 8u8),
        (0.5, 0.0, 0),
        (0.5, -7.5, 15),
        (0.0, 0.0, 0),
    ] {
        let (sb, mb) = pair(s, m);
        assert_eq!(int4_zero_points("t", 32, 32, &sb, &mb).unwrap(), vec![k]);
    }
    // Anything else: refused, naming the tensor.
    for (s, m) in [(0.25, -2.1), (0.5, 0.5), (0.5, -8.0), (0.0, -1.0)] {
        let (sb, mb) = pair(s, m);
        let e = int4_zero_points("blk.w", 32, 32, &sb, &mb).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tensor blk.w: int4 group 0 of row 0"),
            "{e}"
        );
    }
}

#[test]
fn a_large_export_is_sharded_with_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 0, 18);
    let m = tmp.path().join("m.cllm");
    pack(&src, &m, &["--policy", "all-linear", "--quant", "int8"]);
    let out = tmp.path().join("ct");
    std::fs::create_dir(&out).unwrap();
    let p = Packed::open(&m).unwrap();
    let opts = cllm_export::compressed_tensors::Options {
        shard_bytes: 40 << 10,
    };
    cllm_export::compressed_tensors::export_with(&p, &out, &opts).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut files: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    files.sort();
    files.dedup();
    let n = files.len();
    assert!(n > 2, "{files:?}");
    let mut total = 0u64;
    for (k, f) in files.iter().enumerate() {
        assert_eq!(*f, format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        let ts = tensors(&out.join(f));
        total += ts.iter().map(|t| t.3.len() as u64).sum::<u64>();
        let len = std::fs::metadata(out.join(f)).unwrap().len();
        // Bounded shards: only a unit larger than the limit gets a larger shard of its own.
        assert!(len < (40 << 10) + 4096 || ts.len() <= 4, "{f}: {len} bytes");
        for t in &ts {
            assert_eq!(map[&t.0], *f);
            // A module's parameters are in one shard.
            if let Some(module) = t.0.strip_suffix(".weight_packed") {
                for suffix in ["weight_scale", "weight_shape"] {
                    assert_eq!(map[&format!("{module}.{suffix}")], *f);
                }
            }
        }
    }
    assert_eq!(index["metadata"]["total_size"].as_u64().unwrap(), total);
    assert!(!out.join("model.safetensors").exists());
    let o = verify(&m, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
