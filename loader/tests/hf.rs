//! Hugging Face folders: single and sharded weights read back identically,
//! provenance hashes, conversion to weights, and a clear error (never a
//! panic) for each way a folder can be broken.

use cllm_format::Dtype;
use cllm_kernels::WeightData;
use cllm_loader::hf::{to_weight, HfError, HfFolder, HfTensor, AUX_FILES};
use cllm_synth::{shape, tensor_bytes, write_model, SynthOptions};
use safetensors::tensor::TensorView;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

fn model(tmp: &TempDir, name: &str, shape_name: &str, dtype: Dtype, shards: usize) -> PathBuf {
    let dir = tmp.path().join(name);
    let opts = SynthOptions {
        dtype,
        seed: 42,
        shards,
        ..Default::default()
    };
    write_model(&shape(shape_name).unwrap(), &opts, &dir).unwrap();
    dir
}

fn open_err(dir: &Path) -> HfError {
    match HfFolder::open(dir) {
        Ok(_) => panic!("{} opened, but it is broken", dir.display()),
        Err(e) => e,
    }
}

fn assert_mentions(err: &HfError, parts: &[&str]) {
    let text = err.to_string();
    for p in parts {
        assert!(text.contains(p), "error {text:?} does not mention {p:?}");
    }
}

fn shard(i: usize) -> String {
    format!("model-{:05}-of-00003.safetensors", i)
}

fn read_index(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("model.safetensors.index.json")).unwrap()).unwrap()
}

fn write_index(dir: &Path, index: &Value) {
    fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(index).unwrap(),
    )
    .unwrap();
}

/// Rewrites safetensors file `file` of `dir` with the given tensors (name, dtype, shape, bytes).
fn write_safetensors(path: &Path, tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn tensors_in(path: &Path) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect()
}

type Listing = Vec<(String, Dtype, Vec<u64>, Vec<u8>)>;

fn listing(folder: &HfFolder) -> Listing {
    folder
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.dtype,
                t.shape.clone(),
                t.bytes.to_vec(),
            )
        })
        .collect()
}

#[test]
fn single_and_sharded_folders_read_the_same_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let single_dir = model(&tmp, "single", "tiny", Dtype::Bf16, 1);
    let sharded_dir = model(&tmp, "sharded", "tiny", Dtype::Bf16, 3);
    // The fixture writes its template into tokenizer_config.json; transformers 5 writes this.
    fs::write(single_dir.join("chat_template.jinja"), "{{ messages }}").unwrap();
    let single = HfFolder::open(&single_dir).unwrap();
    let sharded = HfFolder::open(&sharded_dir).unwrap();

    assert!(!single.is_sharded());
    assert!(sharded.is_sharded());
    assert_eq!(single.weight_files(), ["model.safetensors"]);
    assert_eq!(sharded.weight_files(), [shard(1), shard(2), shard(3)]);
    assert_eq!(listing(&single), listing(&sharded));

    // Sorted by name, complete, and byte-identical to what the fixture generated.
    let tiny = shape("tiny").unwrap();
    let names: Vec<&str> = single.tensors().iter().map(|t| t.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(single.len(), tiny.tensors().len());
    for spec in tiny.tensors() {
        let t = single.get(&spec.name).unwrap();
        assert_eq!(t.dtype, Dtype::Bf16);
        assert_eq!(t.shape, spec.shape);
        assert_eq!(t.file, "model.safetensors");
        assert_eq!(t.bytes, tensor_bytes(&spec, Dtype::Bf16, 42).unwrap());
        let s = sharded.get(&spec.name).unwrap();
        assert!(s.file.starts_with("model-0000") && s.file.ends_with("-of-00003.safetensors"));
    }
    assert!(single.get("model.nope.weight").is_none());

    // Config and the optional files, raw.
    assert_eq!(single.config()["hidden_size"], 64);
    assert_eq!(single.config()["num_key_value_heads"], 2);
    assert_eq!(
        single.config_bytes(),
        fs::read(single_dir.join("config.json")).unwrap()
    );
    let aux = single.aux_files();
    let aux_names: Vec<&str> = aux.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(aux_names, AUX_FILES);
    for (name, bytes) in &aux {
        assert_eq!(bytes, &fs::read(single_dir.join(name)).unwrap(), "{name}");
    }
    assert_eq!(
        single.aux_file("tokenizer.json").unwrap(),
        fs::read(single_dir.join("tokenizer.json")).unwrap()
    );
}

#[test]
fn optional_files_may_be_absent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 1);
    fs::write(dir.join("chat_template.jinja"), "{{ messages }}").unwrap();
    for name in AUX_FILES {
        fs::remove_file(dir.join(name)).unwrap();
    }
    let folder = HfFolder::open(&dir).unwrap();
    assert!(folder.aux_files().is_empty());
    assert!(folder.aux_file("tokenizer.json").is_none());
    let names: Vec<String> = folder.source_files().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);
}

#[test]
fn source_files_hash_every_file_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 3);
    // A file the loader does not read is not part of the provenance.
    fs::write(dir.join("README.md"), "hello").unwrap();
    let folder = HfFolder::open(&dir).unwrap();
    let files = folder.source_files();
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let mut want = vec![
        "config.json".to_string(),
        "generation_config.json".to_string(),
        shard(1),
        shard(2),
        shard(3),
        "model.safetensors.index.json".to_string(),
        "special_tokens_map.json".to_string(),
        "tokenizer.json".to_string(),
        "tokenizer_config.json".to_string(),
    ];
    want.sort();
    assert_eq!(names, want);
    for f in &files {
        let bytes = fs::read(dir.join(&f.name)).unwrap();
        assert_eq!(f.len, bytes.len() as u64, "{}", f.name);
        assert_eq!(f.xxh3_128.len(), 32);
        assert!(f
            .xxh3_128
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(
            f.xxh3_128,
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)),
            "{}",
            f.name
        );
    }
}

#[test]
fn float_tensors_become_weights() {
    let tmp = tempfile::tempdir().unwrap();
    for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
        let dir = model(&tmp, dtype.name(), "tiny", dtype, 1);
        let folder = HfFolder::open(&dir).unwrap();
        let q = folder
            .get("model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        let w = to_weight(&q).unwrap();
        assert_eq!((w.rows, w.cols), (32, 64));
        let decoded: Vec<f32> = match (&w.data, dtype) {
            (WeightData::Bf16(v), Dtype::Bf16) => v.iter().map(|x| x.to_f32()).collect(),
            (WeightData::F16(v), Dtype::F16) => v.iter().map(|x| x.to_f32()).collect(),
            (WeightData::F32(v), Dtype::F32) => v.clone(),
            _ => panic!("{dtype}: wrong WeightData variant"),
        };
        assert_eq!(decoded.len(), 32 * 64);
        let reference = to_f32(&q);
        assert_eq!(decoded, reference);

        let norm = to_weight(&folder.get("model.norm.weight").unwrap()).unwrap();
        assert_eq!((norm.rows, norm.cols), (1, 64));
        assert_eq!(norm.resident_bytes(), 64 * dtype.size());
    }
}

fn to_f32(t: &HfTensor<'_>) -> Vec<f32> {
    t.bytes
        .chunks_exact(t.dtype.size())
        .map(|b| match t.dtype {
            Dtype::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        })
        .collect()
}

#[test]
fn weight_shapes_and_refused_dtypes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::F32, 1);
    let f32_bytes =
        |n: usize| -> Vec<u8> { (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect() };
    write_safetensors(
        &dir.join("model.safetensors"),
        &[
            (
                "cube".into(),
                safetensors::Dtype::F32,
                vec![2, 3, 4],
                f32_bytes(24),
            ),
            (
                "scalar".into(),
                safetensors::Dtype::F32,
                vec![],
                f32_bytes(1),
            ),
            ("ids".into(), safetensors::Dtype::I32, vec![3], vec![0; 12]),
        ],
    );
    let folder = HfFolder::open(&dir).unwrap();
    let cube = to_weight(&folder.get("cube").unwrap()).unwrap();
    assert_eq!((cube.rows, cube.cols), (2, 12));
    match &cube.data {
        WeightData::F32(v) => assert_eq!(v[23], 23.0),
        other => panic!("{other:?}"),
    }
    let scalar = to_weight(&folder.get("scalar").unwrap()).unwrap();
    assert_eq!((scalar.rows, scalar.cols), (1, 1));

    let ids = folder.get("ids").unwrap();
    assert_eq!(ids.dtype, Dtype::I32);
    let err = to_weight(&ids).unwrap_err();
    assert!(
        matches!(err, HfError::UnsupportedWeightDtype { .. }),
        "{err}"
    );
    assert_mentions(&err, &["ids", "model.safetensors", "i32"]);

    // A hand-made view whose bytes disagree with its shape is refused, not read past.
    let mut bad = folder.get("cube").unwrap();
    bad.shape = vec![4, 4, 4];
    let err = to_weight(&bad).unwrap_err();
    assert!(matches!(err, HfError::BadWeightSize { .. }), "{err}");
    bad.shape = vec![u64::MAX, u64::MAX];
    assert!(matches!(
        to_weight(&bad),
        Err(HfError::BadWeightSize { .. })
    ));
}

#[test]
fn missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 3);
    fs::remove_file(dir.join(shard(2))).unwrap();
    let err = open_err(&dir);
    assert!(matches!(err, HfError::MissingShard { .. }), "{err}");
    assert_mentions(&err, &[&shard(2), "model.safetensors.index.json"]);
}

#[test]
fn tensor_listed_but_absent_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 3);
    let mut index = read_index(&dir);
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = Value::from(shard(3));
    write_index(&dir, &index);
    let err = open_err(&dir);
    assert!(matches!(err, HfError::TensorNotInShard { .. }), "{err}");
    assert_mentions(&err, &["model.layers.9.mlp.up_proj.weight", &shard(3)]);
}

#[test]
fn tensor_in_a_shard_but_not_in_the_index_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 3);
    let mut index = read_index(&dir);
    let map = index["weight_map"].as_object_mut().unwrap();
    let (victim, file) = map
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .unwrap();
    map.remove(&victim);
    write_index(&dir, &index);
    let err = open_err(&dir);
    assert!(matches!(err, HfError::UnlistedTensor { .. }), "{err}");
    assert_mentions(&err, &[&victim, &file]);
}

#[test]
fn tensor_in_two_shards_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 3);
    // Copy one tensor of shard 1 into shard 3 as well; the index still points to shard 1.
    let first = tensors_in(&dir.join(shard(1)));
    let stolen = first[0].clone();
    let mut third = tensors_in(&dir.join(shard(3)));
    third.push(stolen.clone());
    write_safetensors(&dir.join(shard(3)), &third);
    let err = open_err(&dir);
    assert!(matches!(err, HfError::DuplicateTensor { .. }), "{err}");
    assert_mentions(&err, &[&stolen.0, &shard(1), &shard(3)]);
}

#[test]
fn truncated_safetensors_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 1);
    let path = dir.join("model.safetensors");
    let full = fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    // Inside the data, inside the header, inside the length prefix, and empty.
    for len in [full.len() - 1, full.len() / 2, header_end - 3, 5, 0] {
        fs::write(&path, &full[..len]).unwrap();
        let err = open_err(&dir);
        assert!(matches!(err, HfError::Safetensors { .. }), "{len}: {err}");
        assert_mentions(&err, &["model.safetensors"]);
    }
    // A truncated shard is named too.
    let dir = model(&tmp, "s", "tiny", Dtype::Bf16, 3);
    let path = dir.join(shard(2));
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() - 100]).unwrap();
    assert_mentions(&open_err(&dir), &[&shard(2)]);
}

#[test]
fn garbage_headers_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 1);
    let path = dir.join("model.safetensors");
    let mut not_json = 16u64.to_le_bytes().to_vec();
    not_json.extend_from_slice(b"this is not json");
    let mut not_utf8 = 8u64.to_le_bytes().to_vec();
    not_utf8.extend_from_slice(&[0xff; 8]);
    let huge = u64::MAX.to_le_bytes().to_vec();
    let mut bad_offsets = Vec::new();
    let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,99]}}"#;
    bad_offsets.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bad_offsets.extend_from_slice(header);
    bad_offsets.extend_from_slice(&[0; 16]);
    for (what, bytes) in [
        ("not json", not_json),
        ("not utf-8", not_utf8),
        ("huge length", huge),
        ("bad offsets", bad_offsets),
        (
            "random",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
    ] {
        fs::write(&path, &bytes).unwrap();
        let err = open_err(&dir);
        assert!(matches!(err, HfError::Safetensors { .. }), "{what}: {err}");
        assert_mentions(&err, &["model.safetensors"]);
    }
}

#[test]
fn every_prefix_and_byte_flip_is_an_error_or_ok_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 1);
    let path = dir.join("model.safetensors");
    let full = fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    for len in (0..header_end + 64).step_by(7) {
        fs::write(&path, &full[..len]).unwrap();
        assert!(HfFolder::open(&dir).is_err(), "prefix {len} accepted");
    }
    for pos in (0..header_end).step_by(13) {
        let mut bytes = full.clone();
        bytes[pos] ^= 0x5a;
        fs::write(&path, &bytes).unwrap();
        let _ = HfFolder::open(&dir);
    }
}

#[test]
fn unsupported_dtype_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(&tmp, "m", "tiny", Dtype::Bf16, 1);
    write_safetensors(
        &dir.join("model.safetensors"),
        &[(
            "fp8.weight".into(),
            safetensors::Dtype::F8_E4M3,
            vec![4],
            vec![0; 4],
        )],
    );
    let err = open_err(&dir);
    assert!(matches!(err, HfError::UnsupportedDtype { .. }), "{err}");
    assert_mentions(&err, &["fp8.weight", "F8_E4M3", "model.safetensors"]);
}

#[test]
fn broken_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();

    // No config.json.
    let dir = model(&tmp, "a", "tiny", Dtype::Bf16, 1);
    fs::remove_file(dir.join("config.json")).unwrap();
    let err = open_err(&dir);
    assert!(matches!(err, HfError::MissingConfig { .. }), "{err}");

    // config.json that is not JSON, or not an object.
    let dir = model(&tmp, "b", "tiny", Dtype::Bf16, 1);
    fs::write(dir.join("config.json"), "{ nope").unwrap();
    assert_mentions(&open_err(&dir), &["config.json"]);
    fs::write(dir.join("config.json"), "[1, 2]").unwrap();
    let err = open_err(&dir);
    assert!(matches!(err, HfError::NotAnObject { .. }), "{err}");

    // No weights at all.
    let dir = model(&tmp, "c", "tiny", Dtype::Bf16, 1);
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = open_err(&dir);
    assert!(matches!(err, HfError::NoWeights { .. }), "{err}");

    // Index problems: not JSON, no weight_map, a non-string entry, a path escaping the folder.
    let dir = model(&tmp, "d", "tiny", Dtype::Bf16, 3);
    let index = read_index(&dir);
    fs::write(dir.join("model.safetensors.index.json"), "nope").unwrap();
    assert_mentions(&open_err(&dir), &["model.safetensors.index.json"]);
    write_index(&dir, &serde_json::json!({"metadata": {}}));
    let err = open_err(&dir);
    assert!(matches!(err, HfError::IndexNoWeightMap { .. }), "{err}");
    write_index(&dir, &serde_json::json!({"weight_map": {}}));
    let err = open_err(&dir);
    assert!(matches!(err, HfError::IndexEmpty { .. }), "{err}");
    let mut bad = index.clone();
    bad["weight_map"]["model.norm.weight"] = Value::from(7);
    write_index(&dir, &bad);
    let err = open_err(&dir);
    assert!(matches!(err, HfError::IndexBadEntry { .. }), "{err}");
    assert_mentions(&err, &["model.norm.weight"]);
    for escape in [
        "../m/model-00001-of-00003.safetensors",
        "/etc/passwd",
        "..",
        "",
    ] {
        let mut bad = index.clone();
        bad["weight_map"]["model.norm.weight"] = Value::from(escape);
        write_index(&dir, &bad);
        let err = open_err(&dir);
        assert!(
            matches!(err, HfError::BadShardName { .. }),
            "{escape}: {err}"
        );
        assert_mentions(&err, &["model.norm.weight"]);
    }

    // A single model.safetensors wins over an index, as in transformers.
    write_index(&dir, &index);
    let both = HfFolder::open(&dir).unwrap();
    assert!(both.is_sharded());
    let single = model(&tmp, "e", "tiny", Dtype::Bf16, 1);
    fs::copy(
        single.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    fs::write(dir.join("model.safetensors.index.json"), "not even json").unwrap();
    let folder = HfFolder::open(&dir).unwrap();
    assert!(!folder.is_sharded());
    let map: BTreeMap<String, String> = folder
        .tensors()
        .iter()
        .map(|t| (t.name.to_string(), t.file.clone()))
        .collect();
    assert!(map.values().all(|f| f == "model.safetensors"));
}
