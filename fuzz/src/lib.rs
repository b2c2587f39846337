//! Helpers shared by the fuzz targets: small limits, exercising an opened container, and fixing up
//! the checksums of a mutated container so that mutations reach the checks behind them.

use cllm_format::codec::Encoding;
use cllm_format::hash::Hasher128;
use cllm_format::{layout, verify, Container, Limits};
use serde_json::{json, Value};

/// Limits small enough that no fuzz case can make the reader allocate much: a stream is at most
/// 64 frames of 64 KiB (4 MiB), a file at most 1 MiB.
pub fn small_limits() -> Limits {
    Limits {
        max_index_len: 1 << 20,
        max_tensors: 64,
        max_dims: 8,
        max_name_len: 1024,
        max_frame_decoded: 64 << 10,
        max_frames_per_stream: 64,
        max_files: 8,
        max_file_len: 1 << 20,
    }
}

/// Opens, verifies and decodes everything. Beyond "no panic", checks that a container that
/// verifies clean decodes completely, to the lengths and hashes its index declares.
pub fn exercise(bytes: &[u8], limits: &Limits) {
    let Ok(c) = Container::open(bytes, limits) else {
        return;
    };
    let report = verify(&c, 256 << 10);
    let clean = report.failures.is_empty();
    for (i, t) in c.tensors().iter().enumerate() {
        let decoded = c.decode_tensor(i);
        let source = c.tensor_source_bytes(i);
        if clean {
            let streams = decoded.unwrap_or_else(|e| {
                panic!("verified clean, decode_tensor({}) failed: {e}", t.name)
            });
            for (s, d) in t.streams.iter().zip(&streams) {
                assert_eq!(s.len, d.len() as u64, "{} stream {}", t.name, s.role);
            }
            let src = source.unwrap_or_else(|e| {
                panic!(
                    "verified clean, tensor_source_bytes({}) failed: {e}",
                    t.name
                )
            });
            assert_eq!(src.len() as u64, t.raw_bytes(), "{}: source bytes", t.name);
            if c.codec(i).is_lossless() {
                assert_eq!(
                    cllm_format::hash::xxh3_128_hex(&src),
                    t.source_xxh3,
                    "{}",
                    t.name
                );
            }
        }
    }
    for f in &c.index.files {
        let r = c.read_file(&f.name);
        if clean {
            let b = r
                .unwrap_or_else(|e| panic!("verified clean, read_file({}) failed: {e}", f.name))
                .expect("listed file");
            assert_eq!(b.len() as u64, f.len);
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Where the footer says the index is, if that range lies inside the file before the footer.
fn index_range(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.len() < layout::MIN_FILE_LEN as usize {
        return None;
    }
    let foot = bytes.len() - 32;
    let off = usize::try_from(u64_at(bytes, foot)).ok()?;
    let len = usize::try_from(u64_at(bytes, foot + 8)).ok()?;
    let end = off.checked_add(len)?;
    (off >= 16 && end <= foot).then_some((off, end))
}

/// Rewrites the footer's checksum to match the preamble and index it points at.
pub fn fix_footer_checksum(bytes: &mut [u8]) {
    if let Some((off, end)) = index_range(bytes) {
        let sum = layout::index_checksum(&bytes[..16], &bytes[off..end]);
        let foot = bytes.len() - 32;
        bytes[foot + 16..foot + 24].copy_from_slice(&sum.to_le_bytes());
    }
}

/// The file with its index replaced by `index` (placed where the old one started) and a footer
/// that matches.
fn with_index(bytes: &[u8], off: usize, index: &Value) -> Vec<u8> {
    let json = serde_json::to_vec(index).expect("a Value serializes");
    let mut out = bytes[..off].to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&layout::footer(off as u64, &json, &bytes[..16]));
    out
}

fn frames_mut(index: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    if let Some(Value::Array(ts)) = index.get_mut("tensors") {
        for t in ts {
            if let Some(Value::Array(ss)) = t.get_mut("streams") {
                for s in ss {
                    if let Some(Value::Array(fs)) = s.get_mut("frames") {
                        out.extend(fs.iter_mut());
                    }
                }
            }
        }
    }
    out
}

fn file_frames_mut(index: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    if let Some(Value::Array(fs)) = index.get_mut("files") {
        for f in fs {
            if let Some(Value::Array(frames)) = f.get_mut("frames") {
                out.extend(frames.iter_mut());
            }
        }
    }
    out
}

/// Makes every checksum and hash of a (mutated) container true, so that the fuzzer's mutations
/// of the index and of frame bytes reach the structural checks, the decoders and dequantization
/// instead of stopping at the first checksum. `None` when the index cannot even be found.
pub fn fix_all_hashes(bytes: &[u8]) -> Option<Vec<u8>> {
    let (off, end) = index_range(bytes)?;
    let mut index: Value = serde_json::from_slice(&bytes[off..end]).ok()?;
    // 1. Frame checksums: the XXH3-64 of the bytes each frame entry points at.
    let fix_frame = |f: &mut Value| {
        let (Some(o), Some(s)) = (
            f.get("offset").and_then(Value::as_u64),
            f.get("stored").and_then(Value::as_u64),
        ) else {
            return;
        };
        let (Ok(o), Ok(s)) = (usize::try_from(o), usize::try_from(s)) else {
            return;
        };
        if let Some(stored) = o.checked_add(s).and_then(|e| bytes.get(o..e)) {
            if let Some(obj) = f.as_object_mut() {
                obj.insert("xxh3".into(), json!(format!("{:016x}", xxh3_64(stored))));
            }
        }
    };
    for f in frames_mut(&mut index) {
        fix_frame(f);
    }
    for f in file_frames_mut(&mut index) {
        fix_frame(f);
    }
    let first = with_index(bytes, off, &index);
    // 2. Stream hashes: decode what opens and hash it.
    let c = Container::open(&first, &small_limits()).ok()?;
    let mut index: Value = serde_json::from_slice(&first[off..first.len() - 32]).ok()?;
    let stream_hash =
        |owner: &str, role: &str, frames: &[cllm_format::index::FrameEntry], enc: Encoding| {
            let mut h = Hasher128::default();
            let mut scratch = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                let mut out = vec![0u8; f.decoded as usize];
                c.decode_frame(owner, role, i, f, enc, &mut out, &mut scratch)
                    .ok()?;
                h.update(&out);
            }
            Some(h.hex())
        };
    for (ti, t) in c.tensors().iter().enumerate() {
        let owner = format!("tensor {}", t.name);
        for (si, (s, spec)) in t.streams.iter().zip(c.stream_specs(ti)).enumerate() {
            if let Some(hex) = stream_hash(&owner, &s.role, &s.frames, spec.encoding) {
                index["tensors"][ti]["streams"][si]["xxh3"] = json!(hex);
                if si == 0 && c.codec(ti).is_lossless() {
                    index["tensors"][ti]["source_xxh3"] = json!(hex);
                }
            }
        }
    }
    for (fi, f) in c.index.files.iter().enumerate() {
        if let Some(hex) = stream_hash(
            &format!("file {}", f.name),
            "data",
            &f.frames,
            Encoding::Zstd,
        ) {
            index["files"][fi]["xxh3"] = json!(hex);
        }
    }
    // 3. A shard's set record: its own digest in the manifest, and the id over the manifest.
    if index.get("set").is_some() {
        if let Ok(parsed) = serde_json::from_value::<cllm_format::Index>(index.clone()) {
            let digest = cllm_format::shard::shard_digest(&parsed);
            if let Some(set) = parsed.set {
                let mut shards = set.shards.clone();
                if let Some(own) = shards.get_mut(set.shard.wrapping_sub(1) as usize) {
                    own.digest = digest;
                    own.tensors = parsed.tensors.len() as u64;
                    let id = cllm_format::hash::xxh3_128_hex(
                        cllm_format::shard::manifest_text(&shards).as_bytes(),
                    );
                    index["set"]["shards"] = json!(shards);
                    index["set"]["id"] = json!(id);
                }
            }
        }
    }
    Some(with_index(&first, off, &index))
}

fn xxh3_64(b: &[u8]) -> u64 {
    u64::from_str_radix(&cllm_format::hash::xxh3_64_hex(b), 16).expect("16 hex digits")
}
