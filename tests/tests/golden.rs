//! Format stability: a small v1 container checked into `fixtures/golden/` must keep decoding to the
//! same bytes. `CLLM_BLESS_GOLDEN=1` rewrites it (only when the format version changes on purpose).

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

#[test]
fn golden_v1_container_decodes_to_the_same_bytes() {
    let file = golden_dir().join("tiny-v1.cllm");
    let manifest = golden_dir().join("tiny-v1.sha256.json");
    if std::env::var_os("CLLM_BLESS_GOLDEN").is_some() {
        let tmp = tempfile::tempdir().unwrap();
        let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 42);
        std::fs::create_dir_all(golden_dir()).unwrap();
        cllm_ok(&[
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
            "--rule",
            "*.down_proj.weight=int8",
            "--rule",
            "model.embed_tokens.weight=zstd",
            "--rule",
            "lm_head.weight=raw",
        ]);
        let bytes = std::fs::read(&file).unwrap();
        let c = Container::open(&bytes, &Limits::default()).unwrap();
        std::fs::write(
            &manifest,
            serde_json::to_string_pretty(&digests(&c)).unwrap(),
        )
        .unwrap();
    }
    let bytes = std::fs::read(&file).expect("fixtures/golden/tiny-v1.cllm is checked in");
    let c = Container::open(&bytes, &Limits::default()).unwrap();
    assert_eq!((c.framing.major, c.framing.minor), (1, 0));
    let report = cllm_format::verify(&c, 1 << 20);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let codecs: std::collections::BTreeSet<_> =
        c.tensors().iter().map(|t| t.codec.as_str()).collect();
    assert_eq!(
        codecs.into_iter().collect::<Vec<_>>(),
        ["int4", "int8", "raw", "zstd", "zstd-bp"],
        "the golden file exercises every codec"
    );
    let expected: BTreeMap<String, (String, String)> =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(digests(&c), expected);

    // Its lossless tensors are still exactly the fixture generator's bytes.
    let tmp = tempfile::tempdir().unwrap();
    let src = synth_model(tmp.path(), "tiny", Dtype::Bf16, 1, 42);
    let folder = HfFolder::open(&src).unwrap();
    for (i, t) in c.tensors().iter().enumerate() {
        if c.codec(i).is_lossless() {
            assert!(
                c.tensor_source_bytes(i).unwrap() == folder.get(&t.name).unwrap().bytes,
                "{}",
                t.name
            );
        }
    }
}
