//! The independent Python reader (spec/cllm_reader.py, written from spec/FORMAT.md alone) against
//! the Rust reader, on containers packed here with every codec: same names, dtypes, shapes and
//! codecs, the same decoded bytes (SHA-256) for lossless tensors and the same dequantized f32
//! values, bit for bit, for int8 and int4. Then corrupt files: the Python CLI must fail cleanly.
//!
//! Needs python3 with spec/requirements.txt installed; without them this test fails (on purpose).

use std::path::Path;
use std::process::{Command, Output};

use cllm_format::{
    pack, tensor, Codec, Container, Dtype, Limits, PackInput, PackOptions, Policy, Preset, Quant,
    SourceTensor,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const READER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/cllm_reader.py");
const INSTALL: &str = "pip install -r spec/requirements.txt";
const FRAME: usize = 4096;

fn python(args: &[&str]) -> Output {
    Command::new("python3")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 cannot be run ({e}): install Python 3.11, then run `{INSTALL}`")
        })
}

/// Fails, not skips, when the reader's packages are missing: checksums must be checked here.
fn require_python() {
    let out = python(&["-c", "import numpy, zstandard, xxhash"]);
    assert!(
        out.status.success(),
        "python3 lacks the reader's packages; run `{INSTALL}`:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn reader(file: &Path, args: &[&str]) -> Output {
    let mut all = vec![READER, file.to_str().unwrap()];
    all.extend_from_slice(args);
    python(&all)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / u32::MAX as f32 - 0.5) * 0.04
        })
        .collect()
}

fn encode(dtype: Dtype, v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    cllm_format::quant::from_f32(dtype, v, &mut out);
    out
}

/// A small model: every float dtype, 0-D, 1-D, empty, integer tensors, and a tensor of many frames.
fn model() -> Vec<(String, Dtype, Vec<u64>, Vec<u8>)> {
    let specials = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-40,
        -65504.0,
        3.5,
    ];
    let mut norm = values(64, 7);
    norm[..specials.len()].copy_from_slice(&specials);
    let mut halfs = values(33, 8);
    halfs[..specials.len()].copy_from_slice(&specials);
    let t = |n: &str, d: Dtype, s: &[u64], b: Vec<u8>| (n.to_string(), d, s.to_vec(), b);
    vec![
        t(
            "model.embed_tokens.weight",
            Dtype::Bf16,
            &[40, 64],
            encode(Dtype::Bf16, &values(40 * 64, 1)),
        ),
        t(
            "model.layers.0.mlp.down_proj.weight",
            Dtype::F16,
            &[64, 128],
            encode(Dtype::F16, &values(64 * 128, 2)),
        ),
        // 96 KiB: 24 frames lossless, 6 as int8, 3 as int4.
        t(
            "model.layers.0.mlp.gate_proj.weight",
            Dtype::F32,
            &[96, 256],
            encode(Dtype::F32, &values(96 * 256, 3)),
        ),
        t(
            "model.layers.0.mlp.up_proj.weight",
            Dtype::Bf16,
            &[128, 64],
            encode(Dtype::Bf16, &values(128 * 64, 4)),
        ),
        t(
            "model.layers.0.self_attn.q_proj.weight",
            Dtype::F32,
            &[64, 64],
            encode(Dtype::F32, &values(64 * 64, 5)),
        ),
        t(
            "model.layers.1.mlp.down_proj.weight",
            Dtype::Bf16,
            &[0, 64],
            Vec::new(),
        ),
        t(
            "model.layers.1.norm.weight",
            Dtype::F16,
            &[33],
            encode(Dtype::F16, &halfs),
        ),
        t(
            "model.mask",
            Dtype::U8,
            &[13],
            (0..13u8).map(|i| i * 19).collect(),
        ),
        t(
            "model.norm.weight",
            Dtype::F32,
            &[64],
            encode(Dtype::F32, &norm),
        ),
        t(
            "model.positions",
            Dtype::I32,
            &[10, 3],
            (0..30i32).flat_map(|i| (i * -7919).to_le_bytes()).collect(),
        ),
        t(
            "model.scalar",
            Dtype::F32,
            &[],
            0.125f32.to_le_bytes().to_vec(),
        ),
    ]
}

fn pack_to_file(policy: Policy) -> tempfile::NamedTempFile {
    let m = model();
    let tokenizer: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("{} ", i * 31 % 977).into_bytes())
        .collect();
    let input = PackInput {
        tensors: m
            .iter()
            .map(|(n, d, s, b)| SourceTensor {
                name: n.clone(),
                dtype: *d,
                shape: s.clone(),
                bytes: b.into(),
            })
            .collect(),
        files: vec![
            ("config.json".into(), b"{\"model_type\":\"llama\"}".to_vec()),
            ("tokenizer.json".into(), tokenizer),
        ],
        source_files: vec![],
    };
    let opts = PackOptions {
        policy,
        frame_size: FRAME,
        ..PackOptions::default()
    };
    let mut out = Vec::new();
    pack(&input, &opts, &mut out, &mut |_| {}).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &out).unwrap();
    file
}

/// Runs `--json` and compares every tensor with the Rust reader's view of the same file.
fn compare(label: &str, policy: Policy, expect_quant: Option<Codec>) {
    let file = pack_to_file(policy);
    let bytes = std::fs::read(file.path()).unwrap();
    let c = Container::open(&bytes, &Limits::default()).unwrap();
    let out = reader(file.path(), &["--json"]);
    assert!(
        out.status.success(),
        "{label}: python reader failed:\n{}",
        stderr(&out)
    );
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{label}: --json output is not JSON ({e})"));
    assert_eq!(listed.len(), c.tensors().len(), "{label}: tensor count");
    let sources = model();
    let mut multi_frame = false;
    for (i, (t, p)) in c.tensors().iter().zip(&listed).enumerate() {
        let at = format!("{label}: {}", t.name);
        assert_eq!(p["name"], json!(t.name), "{at}");
        assert_eq!(p["dtype"], json!(t.dtype.name()), "{at}");
        assert_eq!(p["shape"], json!(t.shape), "{at}");
        assert_eq!(p["codec"], json!(t.codec), "{at}");
        assert_eq!(p["group_size"], json!(t.group_size), "{at}");
        assert_eq!(p["stored_bytes"], json!(t.stored_bytes()), "{at}");
        multi_frame |= t.streams.iter().any(|s| s.frames.len() > 1);
        let codec = c.codec(i);
        let src = &sources.iter().find(|s| s.0 == t.name).unwrap().3;
        if codec.is_lossless() {
            let rust = c.tensor_source_bytes(i).unwrap();
            assert_eq!(&rust, src, "{at}: Rust round trip");
            assert_eq!(
                p["sha256"],
                json!(sha256(&rust)),
                "{at}: decoded bytes differ"
            );
        } else {
            if let Some(q) = expect_quant {
                assert_eq!(codec, q, "{at}");
            }
            let deq = tensor::dequantize(codec, &t.shape, &c.decode_tensor(i).unwrap());
            assert_eq!(
                p["dequant_sha256"],
                json!(sha256(&f32_bytes(&deq))),
                "{at}: dequantized values differ"
            );
        }
    }
    assert!(multi_frame, "{label}: no tensor needed several frames");
    if let Some(q) = expect_quant {
        let n = c
            .tensors()
            .iter()
            .enumerate()
            .filter(|(i, _)| c.codec(*i) == q)
            .count();
        assert_eq!(n, 5, "{label}: the five projections are {q}");
        // The dequantized f32 values themselves, bit for bit, through --dump.
        let name = "model.layers.0.mlp.gate_proj.weight";
        let i = c.find(name).unwrap();
        let dump = tempfile::NamedTempFile::new().unwrap();
        let out = reader(
            file.path(),
            &["--dump", name, dump.path().to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{label}: --dump failed:\n{}",
            stderr(&out)
        );
        let deq = tensor::dequantize(
            c.codec(i),
            &c.tensors()[i].shape,
            &c.decode_tensor(i).unwrap(),
        );
        let py = std::fs::read(dump.path()).unwrap();
        assert_eq!(py.len(), deq.len() * 4, "{label}: dump length");
        for (k, (a, b)) in py.chunks_exact(4).zip(&deq).enumerate() {
            let a = u32::from_le_bytes(a.try_into().unwrap());
            assert_eq!(
                a,
                b.to_bits(),
                "{label}: {name} element {k}: {} vs {b}",
                f32::from_bits(a)
            );
        }
    }
    let out = reader(file.path(), &["--verify"]);
    assert!(
        out.status.success(),
        "{label}: --verify failed:\n{}",
        stderr(&out)
    );
}

#[test]
fn python_reader_agrees_with_rust_on_every_codec() {
    require_python();
    for lossless in [Codec::Raw, Codec::Zstd, Codec::ZstdBp] {
        let policy = Policy {
            lossless,
            ..Policy::default()
        };
        compare(&format!("lossless {lossless}"), policy, None);
    }
    let quants = [
        (Quant::Int8Row, 64, Codec::Int8Row),
        (Quant::Int8Group, 32, Codec::Int8Group { group_size: 32 }),
        (Quant::Int8Group, 64, Codec::Int8Group { group_size: 64 }),
        (Quant::Int4, 32, Codec::int4(32)),
        (Quant::Int4, 64, Codec::int4(64)),
        (
            Quant::Int4M,
            64,
            Codec::Int4 {
                group_size: 64,
                fit: cllm_format::Int4Fit::MinError,
            },
        ),
        (Quant::Int4S, 32, Codec::Int4S { group_size: 32 }),
        (Quant::Int4S, 64, Codec::Int4S { group_size: 64 }),
    ];
    for (quant, group_size, codec) in quants {
        let policy = Policy {
            preset: Preset::AllLinear,
            quant,
            group_size,
            ..Policy::default()
        };
        compare(&format!("all-linear {codec}"), policy, Some(codec));
    }
}

/// A failure of the CLI: exit status 1, a message, no Python traceback.
fn assert_clean_failure(file: &Path, args: &[&str], what: &str, expect: &str) {
    let out = reader(file, args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit 1, stderr:\n{err}"
    );
    assert!(
        !err.contains("Traceback"),
        "{what}: the reader crashed:\n{err}"
    );
    assert!(
        err.contains(expect),
        "{what}: stderr lacks '{expect}':\n{err}"
    );
}

#[test]
fn python_reader_rejects_every_single_byte_change() {
    require_python();
    let policy = Policy {
        preset: Preset::AllLinear,
        quant: Quant::Int4,
        group_size: 32,
        ..Policy::default()
    };
    let file = pack_to_file(policy);
    let good = std::fs::read(file.path()).unwrap();
    let c = Container::open(&good, &Limits::default()).unwrap();
    let first = &c.tensors()[0];
    let frame0 = first.streams[0].frames[0];
    let index_at = c.framing.index_offset as usize;
    let bad = tempfile::NamedTempFile::new().unwrap();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        std::fs::write(bad.path(), &b).unwrap();
    };

    with(&|b| b[frame0.offset as usize + 3] ^= 0x10);
    let named = format!("tensor {} stream data frame 0", first.name);
    assert_clean_failure(bad.path(), &["--json"], "frame byte", &named);
    with(&|b| b[index_at + 20] ^= 0x01);
    assert_clean_failure(bad.path(), &["--list"], "index byte", "checksum");
    with(&|b| b.truncate(b.len() - 7));
    assert_clean_failure(bad.path(), &["--list"], "truncated", "end magic");
    with(&|b| b.truncate(40));
    assert_clean_failure(bad.path(), &["--list"], "tiny", "shorter than");
    with(&|b| b[8] = 2);
    assert_clean_failure(bad.path(), &["--list"], "major 2", "major version 2");
    assert_clean_failure(
        file.path(),
        &["--dump", "no.such.tensor", "/dev/null"],
        "unknown tensor",
        "no.such.tensor",
    );

    // Spec section 5: any single changed byte is detected. Sample positions over every region:
    // preamble, padding, frames of every stream, the index and the footer.
    let mut positions: Vec<usize> = (0..16).chain([20, 63, index_at - 1]).collect();
    positions.extend((64..good.len()).step_by(good.len() / 30));
    positions.extend((good.len() - 32..good.len()).step_by(3));
    positions.extend([index_at, index_at + 1, (index_at + good.len()) / 2]);
    for &p in &positions {
        with(&|b| b[p] ^= 0x41);
        let out = reader(bad.path(), &["--verify"]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "byte {p} changed went unnoticed: {err}"
        );
        assert!(
            !err.contains("Traceback") && err.starts_with("error: "),
            "byte {p}:\n{err}"
        );
    }
}

/// A zstd frame (RFC 8878 section 3.1.1) made by hand, so that these tests lean on no zstd
/// library: blocks of at most 128 KiB, RLE where a block repeats one byte, raw otherwise. With
/// `declare_size` it is a single-segment frame that states its content size; without, its
/// window is 128 KiB and only the blocks tell how much it inflates to.
fn zstd_frame(content: &[u8], declare_size: bool) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
    if declare_size {
        f.push(0xe0); // 8-byte content size, single segment
        f.extend_from_slice(&(content.len() as u64).to_le_bytes());
    } else {
        f.extend_from_slice(&[0x00, 0x38]); // window descriptor: 2^(10 + 7) bytes
    }
    let blocks: Vec<&[u8]> = content.chunks(128 << 10).collect();
    let blocks = if blocks.is_empty() {
        vec![&content[..0]]
    } else {
        blocks
    };
    for (i, b) in blocks.iter().enumerate() {
        let last = (i + 1 == blocks.len()) as u32;
        let rle = !b.is_empty() && b.iter().all(|&x| x == b[0]);
        let header = last | (rle as u32) << 1 | (b.len() as u32) << 3;
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(if rle { &b[..1] } else { b });
    }
    f
}

/// A container laid out by hand: a config.json and one u8 tensor `t` whose index entry says it
/// is `content` (length and hashes), stored as codec zstd in one frame of `stored` bytes.
fn craft(stored: &[u8], content: &[u8]) -> Vec<u8> {
    use cllm_format::hash::{xxh3_128_hex, xxh3_64_hex};
    use cllm_format::layout::{align_up, footer, preamble};
    let config = b"{}".to_vec();
    let config_frame = zstd_frame(&config, true);
    let mut file = preamble(1, 0).to_vec();
    file.resize(64, 0);
    let mut frame = |b: &[u8], decoded: usize| {
        let offset = file.len();
        file.extend_from_slice(b);
        file.resize(align_up(file.len() as u64).unwrap() as usize, 0);
        json!({"offset": offset, "stored": b.len(), "decoded": decoded, "xxh3": xxh3_64_hex(b)})
    };
    let declared = content.len();
    let f0 = frame(stored, declared);
    let f1 = frame(&config_frame, config.len());
    let hash = xxh3_128_hex(content);
    let index = json!({
        "format": "cllm", "version": [1, 0], "alignment": 64,
        "tensors": [{"name": "t", "dtype": "u8", "shape": [declared], "codec": "zstd",
                     "source_xxh3": hash,
                     "streams": [{"role": "data", "len": declared, "xxh3": hash, "frames": [f0]}]}],
        "files": [{"name": "config.json", "len": config.len(), "xxh3": xxh3_128_hex(&config),
                   "frames": [f1]}],
    });
    let index = serde_json::to_vec(&index).unwrap();
    let at = file.len() as u64;
    file.extend_from_slice(&index);
    file.extend_from_slice(&footer(at, &index, &preamble(1, 0)));
    file
}

#[test]
fn python_reader_bounds_zstd_output() {
    require_python();
    let zstd = |n: usize| zstd_frame(&vec![0u8; n], false);
    let file = tempfile::NamedTempFile::new().unwrap();
    let check = |bytes: Vec<u8>, rust_ok: bool, what: &str, expect: &str| {
        std::fs::write(file.path(), &bytes).unwrap();
        let c = Container::open(&bytes, &Limits::default()).unwrap();
        assert_eq!(
            c.tensor_source_bytes(0).is_ok(),
            rust_ok,
            "{what}: the Rust reader"
        );
        let out = reader(file.path(), &["--list"]);
        assert!(
            out.status.success(),
            "{what}: the layout is valid:\n{}",
            stderr(&out)
        );
        if rust_ok {
            let out = reader(file.path(), &["--json"]);
            assert!(out.status.success(), "{what}:\n{}", stderr(&out));
        } else {
            assert_clean_failure(file.path(), &["--json"], what, expect);
        }
    };
    check(
        craft(&zstd(4096), &[0; 4096]),
        true,
        "a well-formed frame",
        "",
    );
    // A raw block then RLE blocks, 400,000 bytes.
    let mut mixed: Vec<u8> = (0..100_000u32).map(|i| (i % 251 / 50) as u8).collect();
    mixed.resize(400_000, 0);
    check(
        craft(&zstd_frame(&mixed, true), &mixed),
        true,
        "raw and RLE blocks",
        "",
    );
    check(
        craft(&zstd_frame(&[0; 4096], true), &[0; 4096]),
        true,
        "sized",
        "",
    );
    check(
        craft(&zstd_frame(&vec![0; 1 << 20], true), &[0; 4096]),
        false,
        "a zstd bomb that says its size",
        "tensor t stream data frame 0",
    );
    // 1 MiB of zeros compresses to a few dozen bytes: a frame that declares 4 KiB must stop there.
    check(
        craft(&zstd(1 << 20), &[0; 4096]),
        false,
        "a zstd bomb",
        "inflates past its declared 4096 bytes",
    );
    check(
        craft(&zstd(1000), &[0; 4096]),
        false,
        "a short frame",
        "decodes to 1000 bytes",
    );
    let mut cut = zstd(4096);
    cut.truncate(cut.len() - 2);
    check(
        craft(&cut, &[0; 4096]),
        false,
        "a cut frame",
        "tensor t stream data frame 0",
    );

    // Section 4: the stored bytes are exactly one zstd frame. Two frames (or a frame and a
    // skippable frame) that together decode to the declared length are refused by the Python
    // reader; the Rust reader (ZSTD_decompressDCtx) accepts them, so it is not asserted here.
    let mut two = zstd(2048);
    two.extend(zstd(2048));
    let mut skippable = zstd(4096);
    skippable.extend([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
    for (stored, what) in [
        (two, "two zstd frames"),
        (skippable, "a trailing skippable frame"),
    ] {
        std::fs::write(file.path(), craft(&stored, &[0; 4096])).unwrap();
        assert_clean_failure(file.path(), &["--json"], what, "not exactly one zstd frame");
    }
}
