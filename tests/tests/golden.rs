//! Format stability: small containers of each format version, checked into `fixtures/golden/`,
//! must keep decoding to the same bytes. `CLLM_BLESS_GOLDEN=NAME` (e.g. `tiny-v1.1`) rewrites one of
//! them; a new minor version adds a file and leaves the older ones alone.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cllm_format::{Container, Dtype, Limits};
use cllm_loader::hf::HfFolder;
use cllm_tests::{cllm_ok, root, s, synth_model};
use sha2::{Digest, Sha256};

fn golden_dir() -> PathBuf {
    root().join("fixtures/golden")
}

/// SHA-256 of every tensor's decoded payload (all streams, in order) and source-dtype bytes.
fn digests(c: &Container) -> BTreeMap<String, (String, String)> {
    let hex = |b: &[u8]| format!("{:x}", Sha256::digest(b));
    (0..c.tensors().len())
        .map(|i| {
            let payload: Vec<u8> = c.decode_tensor(i).unwrap().concat();
            let source = c.tensor_source_bytes(i).unwrap();
            (c.tensors()[i].name.clone(), (hex(&payload), hex(&source)))
        })
        .collect()
}

/// Checks `fixtures/golden/NAME.cllm` against its manifest (rewriting both when blessing).
fn check_golden(name: &str, rules: &[&str], minor: u16, codecs: &[&str]) {
    let file = golden_dir().join(format!("{name}.cllm"));
    let manifest = golden_dir().join(format!("{name}.sha256.json"));
    if std::env::var("CLLM_BLESS_GOLDEN").is_ok_and(|v| v == name) {
        let tmp = tempfile::tempdir().unwrap();
        let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 42);
        std::fs::create_dir_all(golden_dir()).unwrap();
        let mut args = vec![
            "pack",
            s(&src),
            "-o",
            s(&file),
            "--quiet",
            "--frame-kib",
            "16",
            "--policy",
            "all-linear",
            "--quant",
            "int4",
            "--group-size",
            "32",
        ];
        for r in rules {
            args.extend(["--rule", r]);
        }
        cllm_ok(&args);
        let bytes = std::fs::read(&file).unwrap();
        let c = Container::open(&bytes, &Limits::default()).unwrap();
        std::fs::write(
            &manifest,
            serde_json::to_string_pretty(&digests(&c)).unwrap(),
        )
        .unwrap();
    }
    let bytes = std::fs::read(&file).expect("the golden files are checked in");
    let c = Container::open(&bytes, &Limits::default()).unwrap();
    assert_eq!((c.framing.major, c.framing.minor), (1, minor), "{name}");
    let report = cllm_format::verify(&c, 1 << 20);
    assert!(report.failures.is_empty(), "{name}: {:?}", report.failures);
    let found: std::collections::BTreeSet<_> =
        c.tensors().iter().map(|t| t.codec.as_str()).collect();
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        codecs,
        "{name} exercises every codec of its version"
    );
    let expected: BTreeMap<String, (String, String)> =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(digests(&c), expected, "{name}");

    // Its lossless tensors are still exactly the fixture generator's bytes.
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 42);
    let folder = HfFolder::open(&src).unwrap();
    for (i, t) in c.tensors().iter().enumerate() {
        if c.codec(i).is_lossless() {
            assert!(
                c.tensor_source_bytes(i).unwrap() == folder.get(&t.name).unwrap().bytes,
                "{name}: {}",
                t.name
            );
        }
    }
}

/// Written by the 1.0 writer (its `int8` rule meant per-row int8, today's `int8-row`).
#[test]
fn golden_v1_0_container_decodes_to_the_same_bytes() {
    check_golden(
        "tiny-v1",
        &[
            "*.down_proj.weight=int8-row",
            "model.embed_tokens.weight=zstd",
            "lm_head.weight=raw",
        ],
        0,
        &["int4", "int8", "raw", "zstd", "zstd-bp"],
    );
}

#[test]
fn golden_v1_1_container_decodes_to_the_same_bytes() {
    check_golden(
        "tiny-v1.1",
        &[
            "*.down_proj.weight=int8-row",
            "*.up_proj.weight=int8-g32",
            "model.embed_tokens.weight=zstd",
            "lm_head.weight=raw",
        ],
        1,
        &["int4", "int8", "int8g", "raw", "zstd", "zstd-bp"],
    );
}
