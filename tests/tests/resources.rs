//! Opening a container touches only its preamble, index and footer: a 100 GiB container (a sparse
//! file) opens and inspects with a few MiB of memory.

use std::io::{Seek, SeekFrom, Write};

use cllm_format::index::{FileEntry, FrameEntry, Index, StreamEntry, TensorEntry};
use cllm_format::{layout, Container, Dtype, Limits};
use cllm_tests::{cllm_ok, s};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Writes a sparse container of `frames` raw 64 MiB frames of zeros (one u8 tensor), returning
/// the file size. Only the preamble, the config frame, the index and the footer hold data.
fn sparse_container(path: &std::path::Path, frames: u64) -> u64 {
    const FRAME: u64 = 64 << 20;
    let zero_frame_hash = {
        let zeros = vec![0u8; FRAME as usize];
        xxhash_rust::xxh3::xxh3_64(&zeros)
    };
    let mut offset = layout::DATA_START;
    let frame_entries: Vec<FrameEntry> = (0..frames)
        .map(|_| {
            let f = FrameEntry {
                offset,
                stored: FRAME,
                decoded: FRAME,
                xxh3: zero_frame_hash,
            };
            offset += FRAME;
            f
        })
        .collect();
    let config = zstd::bulk::compress(b"{}", 3).unwrap();
    let config_frame = FrameEntry {
        offset,
        stored: config.len() as u64,
        decoded: 2,
        xxh3: xxhash_rust::xxh3::xxh3_64(&config),
    };
    let index_offset = layout::align_up(offset + config.len() as u64).unwrap();
    let index = Index {
        format: "cllm".into(),
        version: [layout::MAJOR, layout::MINOR],
        alignment: layout::ALIGNMENT,
        tensors: vec![TensorEntry {
            name: "huge.weight".into(),
            dtype: Dtype::U8,
            shape: vec![frames * FRAME],
            codec: "raw".into(),
            group_size: None,
            // Not the real hash of 100 GiB of zeros: opening and inspecting never decode it.
            source_xxh3: "0".repeat(32),
            streams: vec![StreamEntry {
                role: "data".into(),
                len: frames * FRAME,
                xxh3: "0".repeat(32),
                frames: frame_entries,
            }],
        }],
        files: vec![FileEntry {
            name: "config.json".into(),
            len: 2,
            xxh3: cllm_format::hash::xxh3_128_hex(b"{}"),
            frames: vec![config_frame],
        }],
        policy: Default::default(),
        provenance: Default::default(),
        set: None,
    };
    let json = serde_json::to_vec(&index).unwrap();
    let preamble = layout::preamble(layout::MAJOR, layout::MINOR);
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&preamble).unwrap();
    f.seek(SeekFrom::Start(config_frame.offset)).unwrap();
    f.write_all(&config).unwrap();
    f.seek(SeekFrom::Start(index_offset)).unwrap();
    f.write_all(&json).unwrap();
    f.write_all(&layout::footer(index_offset, &json, &preamble))
        .unwrap();
    index_offset + json.len() as u64 + layout::FOOTER_LEN
}

#[test]
fn a_100_gib_container_opens_with_little_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.cllm");
    let len = sparse_container(&path, 1600);
    assert!(len > 100 << 30);
    let file = std::fs::File::open(&path).unwrap();
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let before = rss_bytes();
    let c = Container::open(&map, &Limits::default()).unwrap();
    assert_eq!(c.tensors()[0].raw_bytes(), 1600 * (64 << 20));
    assert_eq!(c.read_file("config.json").unwrap().unwrap(), b"{}");
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "opening grew the resident set by {grown} bytes"
    );

    // The CLI too: inspect reads the index alone.
    let v: serde_json::Value =
        serde_json::from_str(&cllm_ok(&["inspect", s(&path), "--json"])).unwrap();
    assert_eq!(v["file_bytes"].as_u64().unwrap(), len);
    assert_eq!(v["tensors"][0]["frames"], 1600);
}
