//! Corrupted and hostile `.cllm` files (spec/FORMAT.md sections 1, 2, 5).
//!
//! A small container is packed in memory (bf16 and f32 tensors; lossless, int8 and int4 codecs;
//! several 4 KiB frames per tensor; embedded `config.json` and `tokenizer.json`), then:
//!
//! - truncated at every section boundary and at 200 seeded random points;
//! - given a single flipped bit in every region: every preamble and footer bit, every padding
//!   byte, the first, middle and last byte of every frame, every index byte;
//! - given hostile indexes, written by hand with a correct footer (offset, length, checksum) so
//!   that only the reader's semantic checks can catch them.
//!
//! Every case must be *detected*: `Container::open` fails, or `verify` reports a failure, and the
//! message names the region (preamble, footer, index, padding, tensor NAME / file NAME and frame N).
//! No case may panic.
//!
//! Every case runs in a child process (this test binary, re-executed with `CLLM_CORRUPTION_CASE`
//! naming the case) under a 1 GiB address-space limit (`RLIMIT_AS`), so an unbounded allocation
//! aborts the child and fails the test instead of going unnoticed on a large machine.

use cllm_tests::Rng;

use cllm_format::codec::Encoding;
use cllm_format::layout;
use cllm_format::{
    pack, verify, Container, Dtype, Limits, PackInput, PackOptions, Policy, Preset, Quant, Rule,
    SourceTensor,
};
use serde_json::{json, Value};

const CASE_ENV: &str = "CLLM_CORRUPTION_CASE";
/// Address space of a child process running one case (or one group of cases).
const MEMORY_LIMIT: u64 = 1 << 30;
/// Decoded bytes verify may hold in flight.
const WINDOW: usize = 1 << 20;
const FRAME_SIZE: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Child processes

fn in_child(case: &str) -> Vec<String> {
    cllm_tests::in_child(CASE_ENV, case, MEMORY_LIMIT)
}

/// The child's side: does nothing in a normal test run; in a child, runs the case it was given.
#[test]
fn child() {
    let Ok(case) = std::env::var(CASE_ENV) else {
        return;
    };
    cllm_tests::limit_memory(MEMORY_LIMIT);
    let base = Base::new();
    let report = |line: String| println!("RESULT {line}");
    match case.split_once(':') {
        Some(("group", g)) => run_group(&base, g, report),
        Some(("hostile", name)) => {
            let (_, f) = hostile_cases()
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no hostile case {name}"));
            match f(&base) {
                Ok(msg) => report(format!("ok {msg}")),
                Err(problem) => report(format!("FAIL {problem}")),
            }
        }
        Some(("finding", name)) => {
            let (_, f) = findings()
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no finding case {name}"));
            match f(&base) {
                Ok(msg) => report(format!("ok {msg}")),
                Err(problem) => report(format!("FAIL {problem}")),
            }
        }
        _ => panic!("unknown case {case}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The base container

/// The tensors of the base container: (name, dtype, shape). Codecs come from the policy below.
fn base_tensors() -> Vec<(&'static str, Dtype, Vec<u64>)> {
    vec![
        // zstd (rule), bf16: 6144 bytes, 2 frames.
        ("lm_head.weight", Dtype::Bf16, vec![32, 96]),
        // zstd-bp (lossless default), bf16: 12288 bytes, 3 frames.
        ("model.embed_tokens.weight", Dtype::Bf16, vec![64, 96]),
        // int4 g32 (rule), bf16: data 6144 bytes (2 frames), scales and mins 768 bytes each.
        (
            "model.layers.0.mlp.down_proj.weight",
            Dtype::Bf16,
            vec![96, 128],
        ),
        // int8 per row (mlp-only preset), f32: data 12288 bytes (3 frames), scales 512 bytes.
        (
            "model.layers.0.mlp.up_proj.weight",
            Dtype::F32,
            vec![128, 96],
        ),
        // zstd-bp, f32: 16384 bytes, 4 frames.
        (
            "model.layers.0.self_attn.q_proj.weight",
            Dtype::F32,
            vec![64, 64],
        ),
        // raw (rule), f32: 384 bytes, 1 frame.
        ("model.norm.weight", Dtype::F32, vec![96]),
    ]
}

fn base_policy() -> Policy {
    Policy {
        preset: Preset::MlpOnly,
        quant: Quant::Int8Row,
        rules: vec![
            Rule::parse(r"re:.*down_proj\.weight=int4-g32").unwrap(),
            Rule::parse("lm_head.weight=zstd").unwrap(),
            Rule::parse("model.norm.weight=raw").unwrap(),
        ],
        ..Policy::default()
    }
}

fn base_files() -> Vec<(String, Vec<u8>)> {
    let mut tok = String::from("{\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for i in 0..700 {
        tok.push_str(&format!("\"t{i:04}\":{i},"));
    }
    tok.push_str("\"end\":700}}}");
    vec![
        (
            "config.json".into(),
            br#"{"model_type":"llama","hidden_size":96,"num_hidden_layers":1}"#.to_vec(),
        ),
        ("tokenizer.json".into(), tok.into_bytes()),
    ]
}

/// The packed base container with its index as JSON.
struct Base {
    bytes: Vec<u8>,
    index: Value,
    index_offset: u64,
    /// Each tensor's source bytes, in index (name) order.
    sources: Vec<Vec<u8>>,
}

impl Base {
    fn new() -> Base {
        let mut rng = Rng::new(0x5eed_c11a);
        let specs = base_tensors();
        let sources: Vec<Vec<u8>> = specs
            .iter()
            .map(|(_, dtype, shape)| {
                let n: u64 = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.unit() * 0.1).collect();
                let mut out = Vec::new();
                cllm_format::quant::from_f32(*dtype, &v, &mut out);
                out
            })
            .collect();
        let input = PackInput {
            tensors: specs
                .iter()
                .zip(&sources)
                .map(|((name, dtype, shape), bytes)| SourceTensor {
                    name: name.to_string(),
                    dtype: *dtype,
                    shape: shape.clone(),
                    bytes: bytes.into(),
                })
                .collect(),
            files: base_files(),
            source_files: vec![],
        };
        let opts = PackOptions {
            policy: base_policy(),
            frame_size: FRAME_SIZE,
            ..PackOptions::default()
        };
        let mut bytes = Vec::new();
        pack(&input, &opts, &mut bytes, &mut |_| {}).expect("packing the base container");
        let c = Container::open(&bytes, &Limits::default()).expect("the base container opens");
        let r = verify(&c, WINDOW);
        assert!(r.failures.is_empty(), "base container: {:?}", r.failures);
        let index_offset = c.framing.index_offset;
        let index: Value = serde_json::from_slice(
            &bytes[index_offset as usize..index_offset as usize + c.framing.index_length as usize],
        )
        .unwrap();
        // The names in base_tensors() are already sorted, so sources line up with the index.
        for (t, (name, _, _)) in c.tensors().iter().zip(&specs) {
            assert_eq!(t.name, *name);
        }
        Base {
            bytes,
            index,
            index_offset,
            sources,
        }
    }

    fn open(&self) -> Container<'_> {
        Container::open(&self.bytes, &Limits::default()).unwrap()
    }

    /// The file with its index replaced by `json` (frames untouched) and a correct footer.
    fn with_index_bytes(&self, json: &[u8], preamble: [u8; 16]) -> Vec<u8> {
        let mut out = self.bytes[..self.index_offset as usize].to_vec();
        out[..16].copy_from_slice(&preamble);
        out.extend_from_slice(json);
        out.extend_from_slice(&layout::footer(self.index_offset, json, &preamble));
        out
    }

    fn with_index(&self, index: &Value) -> Vec<u8> {
        self.with_index_bytes(&serde_json::to_vec(index).unwrap(), layout::preamble(1, 0))
    }

    /// Every frame's stored bytes, in file order.
    fn payloads(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_frame(&mut self.index.clone(), |f| {
            let (o, s) = (f["offset"].as_u64().unwrap(), f["stored"].as_u64().unwrap());
            out.push(self.bytes[o as usize..(o + s) as usize].to_vec());
        });
        out
    }
}

/// Calls `f` on every frame entry of the index, in file order (spec section 3.4).
fn for_each_frame(index: &mut Value, mut f: impl FnMut(&mut Value)) {
    for t in index["tensors"].as_array_mut().unwrap() {
        for s in t["streams"].as_array_mut().unwrap() {
            for fr in s["frames"].as_array_mut().unwrap() {
                f(fr);
            }
        }
    }
    for file in index["files"].as_array_mut().unwrap() {
        for fr in file["frames"].as_array_mut().unwrap() {
            f(fr);
        }
    }
}

fn xxh3_64(bytes: &[u8]) -> String {
    cllm_format::hash::xxh3_64_hex(bytes)
}

/// Writes a whole file from an index and the stored bytes of each of its frames (in file order):
/// frame offsets, stored lengths and checksums are set as a correct writer would; `decoded`,
/// lengths and stream hashes are left as the index says.
fn relayout(index: &mut Value, payloads: &[Vec<u8>], preamble: [u8; 16]) -> Vec<u8> {
    let mut out = preamble.to_vec();
    out.resize(layout::DATA_START as usize, 0);
    let mut next = payloads.iter();
    for_each_frame(index, |f| {
        let p = next.next().expect("a payload for every frame");
        f["offset"] = json!(out.len());
        f["stored"] = json!(p.len());
        f["xxh3"] = json!(xxh3_64(p));
        out.extend_from_slice(p);
        out.resize(layout::align_up(out.len() as u64).unwrap() as usize, 0);
    });
    assert!(next.next().is_none(), "more payloads than frames");
    let index_offset = out.len() as u64;
    let json = serde_json::to_vec(index).unwrap();
    out.extend_from_slice(&json);
    out.extend_from_slice(&layout::footer(index_offset, &json, &preamble));
    out
}

/// A zstd frame (RFC 8878) of `total` zero bytes made of RLE blocks: 4 bytes per 128 KiB, so
/// 1 GiB of zeros takes 32 KiB. With `content_size`, the frame header declares `total`.
fn zstd_zeros(total: u64, content_size: bool) -> Vec<u8> {
    let mut z = vec![0x28, 0xb5, 0x2f, 0xfd];
    if content_size {
        // Frame header descriptor: 8-byte content size, not single-segment; window 128 KiB.
        z.push(0xc0);
        z.push(7 << 3);
        z.extend_from_slice(&total.to_le_bytes());
    } else {
        z.push(0x00);
        z.push(7 << 3);
    }
    let block = 128 * 1024u64;
    let mut left = total;
    loop {
        let n = left.min(block);
        left -= n;
        let last = (left == 0) as u32;
        let header = last | (1 << 1) | ((n as u32) << 3);
        z.extend_from_slice(&header.to_le_bytes()[..3]);
        z.push(0);
        if left == 0 {
            break;
        }
    }
    z
}

// ---------------------------------------------------------------------------------------------
// Regions and detection

#[derive(Clone, Debug)]
enum Region {
    Preamble,
    Padding,
    /// A frame of "tensor NAME" or "file NAME".
    Frame {
        owner: String,
        frame: usize,
    },
    Index,
    Footer,
}

impl Region {
    /// Words the error message must contain for this region.
    fn needles(&self) -> Vec<String> {
        match self {
            Region::Preamble => vec!["preamble".into()],
            Region::Padding => vec!["padding".into()],
            Region::Frame { owner, frame } => vec![owner.clone(), format!("frame {frame}")],
            Region::Index => vec!["index".into()],
            Region::Footer => vec!["footer".into()],
        }
    }
}

struct Span {
    start: u64,
    end: u64,
    region: Region,
}

fn regions(c: &Container<'_>) -> Vec<Span> {
    let mut spans = vec![Span {
        start: 0,
        end: 16,
        region: Region::Preamble,
    }];
    for (start, end) in c.padding_ranges() {
        spans.push(Span {
            start,
            end,
            region: Region::Padding,
        });
    }
    for t in c.tensors() {
        for s in &t.streams {
            for (i, f) in s.frames.iter().enumerate() {
                spans.push(Span {
                    start: f.offset,
                    end: f.offset + f.stored,
                    region: Region::Frame {
                        owner: format!("tensor {}", t.name),
                        frame: i,
                    },
                });
            }
        }
    }
    for file in &c.index.files {
        for (i, f) in file.frames.iter().enumerate() {
            spans.push(Span {
                start: f.offset,
                end: f.offset + f.stored,
                region: Region::Frame {
                    owner: format!("file {}", file.name),
                    frame: i,
                },
            });
        }
    }
    let io = c.framing.index_offset;
    spans.push(Span {
        start: io,
        end: io + c.framing.index_length,
        region: Region::Index,
    });
    let len = c.bytes().len() as u64;
    spans.push(Span {
        start: len - 32,
        end: len,
        region: Region::Footer,
    });
    spans.sort_by_key(|s| s.start);
    // The regions tile the file exactly.
    let mut at = 0;
    for s in &spans {
        assert_eq!(s.start, at, "regions must tile the file");
        at = s.end;
    }
    assert_eq!(at, len);
    spans
}

/// What a reader makes of a file: the failure messages (open's error, or verify's failures).
/// Empty when the damage went unnoticed. Every tensor and file is also decoded (results ignored)
/// to exercise the decoding paths on damaged input.
fn check(bytes: &[u8], limits: &Limits) -> Vec<String> {
    match Container::open(bytes, limits) {
        Err(e) => vec![e.to_string()],
        Ok(c) => {
            let r = verify(&c, WINDOW);
            for i in 0..c.tensors().len() {
                let _ = c.tensor_source_bytes(i);
            }
            for f in &c.index.files {
                let _ = c.read_file(&f.name);
            }
            r.failures
        }
    }
}

/// `Ok(message)` when the damage is detected by a message containing every needle.
fn detected(bytes: &[u8], needles: &[String]) -> Result<String, String> {
    let failures = check(bytes, &Limits::default());
    if failures.is_empty() {
        return Err("NOT DETECTED: opens and verifies clean".into());
    }
    match failures
        .iter()
        .find(|m| needles.iter().all(|n| m.contains(n.as_str())))
    {
        Some(m) => Ok(m.clone()),
        None => Err(format!(
            "detected, but no message names {needles:?}: {failures:?}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Groups of damaged files: truncations and bit flips

fn run_group(base: &Base, group: &str, report: impl Fn(String)) {
    let c = base.open();
    let spans = regions(&c);
    let len = base.bytes.len() as u64;
    // (description, damaged file, needles: any one of these lists must be matched)
    let mut cases: Vec<(String, Vec<u8>, Vec<Vec<String>>)> = Vec::new();
    let flip = |at: u64, bit: u32| {
        let mut b = base.bytes.clone();
        b[at as usize] ^= 1 << bit;
        b
    };
    match group {
        "truncate" => {
            let mut points: Vec<(u64, String)> = vec![
                (0, "empty file".into()),
                (1, "inside the preamble".into()),
                (8, "after the magic".into()),
                (16, "after the preamble".into()),
                (17, "inside the first padding".into()),
                (40, "inside the first padding".into()),
                (63, "end of the first padding".into()),
            ];
            for s in &spans {
                let what = match &s.region {
                    Region::Frame { owner, frame } => format!("{owner} frame {frame}"),
                    r => format!("{r:?}").to_lowercase(),
                };
                points.push((s.start, format!("start of {what}")));
                points.push((s.start + 1, format!("first byte of {what}")));
                points.push(((s.start + s.end) / 2, format!("middle of {what}")));
                points.push((s.end - 1, format!("last byte of {what}")));
                if s.end < len {
                    points.push((s.end, format!("end of {what}")));
                }
            }
            for k in [8, 16, 24] {
                points.push((len - 32 + k, format!("footer + {k}")));
            }
            let mut rng = Rng::new(0x7a0c_a7e5);
            for i in 0..200 {
                points.push((rng.below(len), format!("random point {i}")));
            }
            for (cut, what) in points {
                assert!(cut < len);
                cases.push((
                    format!("truncated to {cut} bytes ({what})"),
                    base.bytes[..cut as usize].to_vec(),
                    vec![vec!["footer".into()], vec!["too short".into()]],
                ));
            }
            // Bytes after the footer are damage too.
            let mut longer = base.bytes.clone();
            longer.extend_from_slice(&[0u8; 64]);
            cases.push((
                "64 zero bytes appended".into(),
                longer,
                vec![vec!["footer".into()]],
            ));
        }
        "flip-preamble" => {
            for at in 0..16 {
                for bit in 0..8 {
                    cases.push((
                        format!("preamble byte {at} bit {bit}"),
                        flip(at, bit),
                        vec![Region::Preamble.needles()],
                    ));
                }
            }
        }
        "flip-footer" => {
            for at in 0..32u64 {
                for bit in 0..8 {
                    // The checksum field (bytes 16..24) cannot tell a damaged checksum from a
                    // damaged index: "checksum" is accepted here; the test
                    // `footer_checksum_damage_names_the_footer` asks for more.
                    let mut needles = vec![Region::Footer.needles()];
                    if (16..24).contains(&at) {
                        needles.push(vec!["checksum".into()]);
                    }
                    cases.push((
                        format!("footer byte {at} bit {bit}"),
                        flip(len - 32 + at, bit),
                        needles,
                    ));
                }
            }
        }
        "flip-padding" => {
            for s in spans.iter().filter(|s| matches!(s.region, Region::Padding)) {
                for at in s.start..s.end {
                    cases.push((
                        format!("padding byte {at} ({}..{})", s.start, s.end),
                        flip(at, (at % 8) as u32),
                        vec![Region::Padding.needles()],
                    ));
                }
            }
        }
        "flip-frames" => {
            for s in spans
                .iter()
                .filter(|s| matches!(s.region, Region::Frame { .. }))
            {
                let Region::Frame { owner, frame } = &s.region else {
                    unreachable!()
                };
                for (what, at, bit) in [
                    ("first", s.start, 0),
                    ("middle", (s.start + s.end) / 2, 4),
                    ("last", s.end - 1, 7),
                ] {
                    cases.push((
                        format!("{owner} frame {frame}, {what} byte ({at}) bit {bit}"),
                        flip(at, bit),
                        vec![s.region.needles()],
                    ));
                }
            }
        }
        "flip-index" => {
            let s = spans
                .iter()
                .find(|s| matches!(s.region, Region::Index))
                .unwrap();
            for at in s.start..s.end {
                cases.push((
                    format!("index byte {}", at - s.start),
                    flip(at, (at % 8) as u32),
                    vec![Region::Index.needles()],
                ));
            }
        }
        _ => panic!("unknown group {group}"),
    }
    let total = cases.len();
    let mut failed = 0;
    for (what, bytes, alternatives) in cases {
        let failures = check(&bytes, &Limits::default());
        let named = failures.iter().any(|m| {
            alternatives
                .iter()
                .any(|needles| needles.iter().all(|n| m.contains(n.as_str())))
        });
        if failures.is_empty() {
            failed += 1;
            report(format!("FAIL {what}: NOT DETECTED"));
        } else if !named {
            failed += 1;
            report(format!(
                "FAIL {what}: no message names the region {alternatives:?}: {failures:?}"
            ));
        }
    }
    report(format!(
        "SUMMARY {group}: {total} cases, {} detected and named",
        total - failed
    ));
}

fn run_group_in_child(group: &str) {
    let lines = in_child(&format!("group:{group}"));
    let fails: Vec<&String> = lines.iter().filter(|l| l.starts_with("FAIL")).collect();
    for l in lines.iter().filter(|l| l.starts_with("SUMMARY")) {
        println!("{l}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("SUMMARY")),
        "child reported no summary: {lines:?}"
    );
    assert!(
        fails.is_empty(),
        "{} cases failed:\n{}",
        fails.len(),
        fails
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn truncation_at_every_boundary_and_200_random_points() {
    run_group_in_child("truncate");
}

#[test]
fn bit_flip_in_every_preamble_bit() {
    run_group_in_child("flip-preamble");
}

#[test]
fn bit_flip_in_every_footer_bit() {
    run_group_in_child("flip-footer");
}

#[test]
fn bit_flip_in_every_padding_byte() {
    run_group_in_child("flip-padding");
}

#[test]
fn bit_flip_in_first_middle_last_byte_of_every_frame() {
    run_group_in_child("flip-frames");
}

#[test]
fn bit_flip_in_every_index_byte() {
    run_group_in_child("flip-index");
}

// ---------------------------------------------------------------------------------------------
// Hostile indexes

type Case = fn(&Base) -> Result<String, String>;

/// `Ok(message)` when opening fails with a message containing every needle.
fn open_fails(bytes: &[u8], limits: &Limits, needles: &[&str]) -> Result<String, String> {
    match Container::open(bytes, limits) {
        Ok(c) => Err(format!(
            "opened (verify failures: {:?})",
            verify(&c, WINDOW).failures
        )),
        Err(e) => {
            let m = e.to_string();
            if needles.iter().all(|n| m.contains(n)) {
                Ok(m)
            } else {
                Err(format!("error does not name {needles:?}: {m}"))
            }
        }
    }
}

fn tensor_pos(index: &Value, name: &str) -> usize {
    index["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t["name"] == name)
        .unwrap()
}

const ZSTD_T: &str = "lm_head.weight";
const BP_T: &str = "model.embed_tokens.weight";
const INT4_T: &str = "model.layers.0.mlp.down_proj.weight";
const INT8_T: &str = "model.layers.0.mlp.up_proj.weight";
const RAW_T: &str = "model.norm.weight";

/// Replaces tensor `name` by a lossless `codec` tensor of `shape` whose data stream is one frame of
/// `payload` declaring `decoded` bytes; the rest of the file is laid out again around it.
fn with_single_frame_tensor(
    base: &Base,
    name: &str,
    codec: &str,
    shape: Value,
    decoded: u64,
    payload: Vec<u8>,
) -> Vec<u8> {
    let mut index = base.index.clone();
    let ti = tensor_pos(&index, name);
    let mut payloads = base.payloads();
    // Payloads of tensors before `ti` come first; replace this tensor's frames by `payload`.
    let before: usize = index["tensors"].as_array().unwrap()[..ti]
        .iter()
        .flat_map(|t| t["streams"].as_array().unwrap())
        .map(|s| s["frames"].as_array().unwrap().len())
        .sum();
    let own: usize = index["tensors"][ti]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frames"].as_array().unwrap().len())
        .sum();
    payloads.splice(before..before + own, [payload]);
    let t = &mut index["tensors"][ti];
    t["codec"] = json!(codec);
    t.as_object_mut().unwrap().remove("group_size");
    t["shape"] = shape;
    t["streams"] = json!([{
        "role": "data", "len": decoded, "xxh3": "0".repeat(32),
        "frames": [{"offset": 0, "stored": 0, "decoded": decoded, "xxh3": "0".repeat(16)}],
    }]);
    relayout(&mut index, &payloads, layout::preamble(1, 0))
}

fn hostile_cases() -> Vec<(&'static str, Case)> {
    vec![
        ("frame_offset_past_end", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            ix["tensors"][ti]["streams"][0]["frames"][1]["offset"] =
                json!(b.bytes.len() as u64 + 4096);
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T, "frame 1"])
        }),
        ("frame_offset_near_u64_max", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            ix["tensors"][ti]["streams"][0]["frames"][0]["offset"] = json!(u64::MAX - 63);
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T, "frame 0"])
        }),
        ("frame_stored_past_end_of_file", |b| {
            // The very last frame (of the last embedded file) claims to run past the index.
            let mut ix = b.index.clone();
            let last = ix["files"].as_array().unwrap().len() - 1;
            let name = ix["files"][last]["name"].as_str().unwrap().to_string();
            let fr = ix["files"][last]["frames"]
                .as_array_mut()
                .unwrap()
                .last_mut()
                .unwrap();
            fr["stored"] = json!(fr["stored"].as_u64().unwrap() + 1_000_000);
            let m = open_fails(&b.with_index(&ix), &Limits::default(), &[])?;
            if m.contains(&name) || m.contains("index") {
                Ok(m)
            } else {
                Err(format!("does not name the file: {m}"))
            }
        }),
        ("overlapping_frames", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            let f0 = ix["tensors"][ti]["streams"][0]["frames"][0]["offset"]
                .as_u64()
                .unwrap();
            ix["tensors"][ti]["streams"][0]["frames"][1]["offset"] = json!(f0 + 64);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[BP_T, "frame 1", "overlap"],
            )
        }),
        ("out_of_order_frames", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            let frames = ix["tensors"][ti]["streams"][0]["frames"]
                .as_array_mut()
                .unwrap();
            frames.swap(0, 1);
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T, "frame 0"])
        }),
        ("out_of_order_offsets_only", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT8_T);
            let fr = &mut ix["tensors"][ti]["streams"][0]["frames"];
            let (o0, o1) = (fr[0]["offset"].clone(), fr[1]["offset"].clone());
            fr[0]["offset"] = o1;
            fr[1]["offset"] = o0;
            open_fails(&b.with_index(&ix), &Limits::default(), &[INT8_T, "frame 0"])
        }),
        ("gap_between_frames", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            let fr = &mut ix["tensors"][ti]["streams"][0]["frames"][2];
            fr["offset"] = json!(fr["offset"].as_u64().unwrap() + 64);
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T, "frame 2"])
        }),
        ("frame_stored_zero", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            ix["tensors"][ti]["streams"][0]["frames"][0]["stored"] = json!(0);
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T, "frame 0"])
        }),
        ("frame_decoded_over_limit", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, ZSTD_T);
            ix["tensors"][ti]["streams"][0]["frames"][0]["decoded"] = json!(1u64 << 40);
            open_fails(&b.with_index(&ix), &Limits::default(), &[ZSTD_T, "frame 0"])
        }),
        ("frame_decoded_not_whole_elements", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, ZSTD_T);
            let fr = &mut ix["tensors"][ti]["streams"][0]["frames"];
            fr[0]["decoded"] = json!(4095);
            fr[1]["decoded"] = json!(fr[1]["decoded"].as_u64().unwrap() + 1);
            open_fails(&b.with_index(&ix), &Limits::default(), &[ZSTD_T, "frame 0"])
        }),
        ("raw_frame_stored_differs_from_decoded", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, RAW_T);
            // Declares fewer decoded bytes than stored (and a stream length to match).
            ix["tensors"][ti]["streams"][0]["frames"][0]["decoded"] = json!(380);
            ix["tensors"][ti]["streams"][0]["len"] = json!(380);
            ix["tensors"][ti]["shape"] = json!([95]);
            open_fails(&b.with_index(&ix), &Limits::default(), &[RAW_T, "frame 0"])
        }),
        ("shape_numel_overflows_u64", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, ZSTD_T);
            ix["tensors"][ti]["shape"] = json!([1u64 << 32, 1u64 << 32, 2]);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[ZSTD_T, "overflow"],
            )
        }),
        ("shape_bytes_overflow_u64", |b| {
            // numel fits, numel * 2 bytes does not.
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, ZSTD_T);
            ix["tensors"][ti]["shape"] = json!([1u64 << 63]);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[ZSTD_T, "overflow"],
            )
        }),
        ("shape_u64_max_by_zero_int8_scales_overflow", |b| {
            // numel is 0, but int8's scales stream is rows * 4 bytes.
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT8_T);
            ix["tensors"][ti]["shape"] = json!([u64::MAX, 0]);
            open_fails(&b.with_index(&ix), &Limits::default(), &[INT8_T])
        }),
        ("shape_with_negative_or_fractional_dims", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, ZSTD_T);
            ix["tensors"][ti]["shape"] = json!([-32, 96]);
            open_fails(&b.with_index(&ix), &Limits::default(), &["index"])?;
            ix["tensors"][ti]["shape"] = json!([32.5, 96]);
            open_fails(&b.with_index(&ix), &Limits::default(), &["index"])?;
            ix["tensors"][ti]["shape"] = json!([1e30, 96]);
            open_fails(&b.with_index(&ix), &Limits::default(), &["index"])
        }),
        ("too_many_dims", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, ZSTD_T);
            ix["tensors"][ti]["shape"] = json!([32, 96, 1, 1, 1, 1, 1, 1, 1]);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[ZSTD_T, "dimensions"],
            )
        }),
        ("a_million_dims", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, ZSTD_T);
            ix["tensors"][ti]["shape"] = Value::Array(vec![json!(1); 1_000_000]);
            // Refused while the index is parsed (so memory stays bounded), before the tensor's
            // name is known: the error gives the index position instead.
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &["dimensions", "column"],
            )
        }),
        ("zstd_bomb_1gib_declared_1mib", |b| {
            // A real zstd frame of 1 GiB of zeros (32 KiB stored), declared as 1 MiB decoded.
            let bomb = zstd_zeros(1 << 30, false);
            assert!(bomb.len() < 40_000);
            let bytes =
                with_single_frame_tensor(b, ZSTD_T, "zstd", json!([512, 1024]), 1 << 20, bomb);
            let needles = [ZSTD_T.to_string(), "frame 0".to_string()];
            let m = detected(&bytes, &needles)?;
            let c = Container::open(&bytes, &Limits::default()).map_err(|e| e.to_string())?;
            match c.tensor_source_bytes(tensor_pos(&b.index, ZSTD_T)) {
                Ok(_) => Err("the bomb decoded".into()),
                Err(_) => Ok(m),
            }
        }),
        ("zstd_bomb_with_content_size_1gib", |b| {
            let bomb = zstd_zeros(1 << 30, true);
            let bytes =
                with_single_frame_tensor(b, ZSTD_T, "zstd", json!([512, 1024]), 1 << 20, bomb);
            detected(&bytes, &[ZSTD_T.to_string(), "frame 0".to_string()])
        }),
        ("zstd_bomb_in_byte_planes", |b| {
            // The same through the bp2 decoder, whose scratch buffer is sized by `decoded`.
            let bomb = zstd_zeros(1 << 30, false);
            let bytes =
                with_single_frame_tensor(b, BP_T, "zstd-bp", json!([512, 1024]), 1 << 20, bomb);
            detected(&bytes, &[BP_T.to_string(), "frame 0".to_string()])
        }),
        ("zstd_frame_inflates_short", |b| {
            let bytes = with_single_frame_tensor(
                b,
                ZSTD_T,
                "zstd",
                json!([512, 1024]),
                1 << 20,
                zstd_zeros(1000, false),
            );
            detected(&bytes, &[ZSTD_T.to_string(), "frame 0".to_string()])
        }),
        ("zstd_frame_not_zstd", |b| {
            let bytes = with_single_frame_tensor(
                b,
                ZSTD_T,
                "zstd",
                json!([8]),
                16,
                b"definitely not zstd".to_vec(),
            );
            detected(&bytes, &[ZSTD_T.to_string(), "frame 0".to_string()])
        }),
        ("valid_frames_wrong_stream_hash", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT8_T);
            ix["tensors"][ti]["streams"][1]["xxh3"] = json!("0123456789abcdef0123456789abcdef");
            detected(
                &b.with_index(&ix),
                &[INT8_T.to_string(), "scales".to_string()],
            )
        }),
        ("lossless_source_hash_differs", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, RAW_T);
            ix["tensors"][ti]["source_xxh3"] = json!("0123456789abcdef0123456789abcdef");
            detected(&b.with_index(&ix), &[format!("tensor {RAW_T}")])
        }),
        ("unknown_codec", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, ZSTD_T);
            ix["tensors"][ti]["codec"] = json!("zstd-ng");
            open_fails(&b.with_index(&ix), &Limits::default(), &[ZSTD_T, "zstd-ng"])
        }),
        ("codec_not_for_dtype", |b| {
            // zstd-bp on a u8 tensor of the same byte length.
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            ix["tensors"][ti]["dtype"] = json!("u8");
            ix["tensors"][ti]["shape"] = json!([64, 192]);
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T, "zstd-bp"])
        }),
        ("unknown_dtype", |b| {
            let mut ix = b.index.clone();
            ix["tensors"][0]["dtype"] = json!("f8e4m3");
            open_fails(&b.with_index(&ix), &Limits::default(), &["index"])
        }),
        ("int4_without_group_size", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT4_T);
            ix["tensors"][ti]
                .as_object_mut()
                .unwrap()
                .remove("group_size");
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[INT4_T, "group_size"],
            )
        }),
        ("int4_bad_group_size", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT4_T);
            ix["tensors"][ti]["group_size"] = json!(48);
            open_fails(&b.with_index(&ix), &Limits::default(), &[INT4_T, "48"])?;
            ix["tensors"][ti]["group_size"] = json!(0);
            open_fails(&b.with_index(&ix), &Limits::default(), &[INT4_T])?;
            ix["tensors"][ti]["group_size"] = json!(1u64 << 40);
            open_fails(&b.with_index(&ix), &Limits::default(), &["index"])
        }),
        ("int4_cols_not_multiple_of_group", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT4_T);
            ix["tensors"][ti]["shape"] = json!([128, 96]); // 96 % 64 != 0
            ix["tensors"][ti]["group_size"] = json!(64);
            open_fails(&b.with_index(&ix), &Limits::default(), &[INT4_T])
        }),
        ("group_size_on_int8", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT8_T);
            ix["tensors"][ti]["group_size"] = json!(64);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[INT8_T, "group_size"],
            )
        }),
        ("int8g_in_a_1_0_file", |b| {
            // The base file uses only 1.0 codecs, so it says 1.0; int8g needs 1.1.
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT8_T);
            ix["tensors"][ti]["codec"] = json!("int8g");
            ix["tensors"][ti]["group_size"] = json!(32);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[INT8_T, "needs format 1.1"],
            )
        }),
        ("int8g_without_group_size", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT8_T);
            ix["tensors"][ti]["codec"] = json!("int8g");
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[INT8_T, "int8g without group_size"],
            )
        }),
        ("int8_on_1d_tensor", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT8_T);
            ix["tensors"][ti]["shape"] = json!([12288]);
            open_fails(&b.with_index(&ix), &Limits::default(), &[INT8_T, "2-D"])
        }),
        ("stream_len_inconsistent_with_shape", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            ix["tensors"][ti]["shape"] = json!([64, 97]);
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T, "data"])?;
            let mut ix = b.index.clone();
            ix["tensors"][ti]["streams"][0]["len"] = json!(12290);
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T, "data"])
        }),
        ("frames_do_not_sum_to_stream_len", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, BP_T);
            let fr = ix["tensors"][ti]["streams"][0]["frames"]
                .as_array_mut()
                .unwrap();
            fr.pop();
            // The remaining frames no longer reach the index: either error will do, as long as
            // it names the tensor.
            open_fails(&b.with_index(&ix), &Limits::default(), &[BP_T])
        }),
        ("missing_stream", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT4_T);
            ix["tensors"][ti]["streams"].as_array_mut().unwrap().pop();
            open_fails(&b.with_index(&ix), &Limits::default(), &[INT4_T, "streams"])
        }),
        ("wrong_stream_role", |b| {
            let mut ix = b.index.clone();
            let ti = tensor_pos(&ix, INT4_T);
            ix["tensors"][ti]["streams"][1]["role"] = json!("mins");
            open_fails(&b.with_index(&ix), &Limits::default(), &[INT4_T, "mins"])
        }),
        ("bad_hash_spelling", |b| {
            let mut ix = b.index.clone();
            ix["tensors"][0]["source_xxh3"] = json!("ABCDEF0123456789ABCDEF0123456789");
            open_fails(&b.with_index(&ix), &Limits::default(), &[ZSTD_T, "hex"])?;
            let mut ix = b.index.clone();
            ix["tensors"][0]["streams"][0]["frames"][0]["xxh3"] = json!("xyz");
            open_fails(&b.with_index(&ix), &Limits::default(), &["index", "hex"])
        }),
        ("duplicate_tensor_names", |b| {
            let mut ix = b.index.clone();
            let t0 = ix["tensors"][0].clone();
            ix["tensors"].as_array_mut().unwrap().insert(1, t0);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &[ZSTD_T, "duplicate"],
            )
        }),
        ("tensors_not_sorted", |b| {
            let mut ix = b.index.clone();
            // The first tensor renamed so that it sorts after the second (its frames stay valid).
            ix["tensors"][0]["name"] = json!("zzz.weight");
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &["zzz.weight", "sorted"],
            )
        }),
        ("empty_and_overlong_names", |b| {
            let mut ix = b.index.clone();
            ix["tensors"][0]["name"] = json!("");
            open_fails(&b.with_index(&ix), &Limits::default(), &["index", "name"])?;
            ix["tensors"][0]["name"] = json!("a".repeat(5000));
            open_fails(&b.with_index(&ix), &Limits::default(), &["index", "name"])
        }),
        ("non_utf8_tensor_name", |b| {
            let mut json = serde_json::to_vec(&b.index).unwrap();
            let needle = format!("\"{RAW_T}\"");
            let at = json
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap();
            json[at + 7] = 0xff; // inside "model.norm.weight": 'n' of "norm" becomes 0xFF
            json[at + 8] = 0xfe;
            open_fails(
                &b.with_index_bytes(&json, layout::preamble(1, 0)),
                &Limits::default(),
                &["index"],
            )
        }),
        ("lone_surrogate_in_name", |b| {
            let json = serde_json::to_string(&b.index)
                .unwrap()
                .replace(RAW_T, r"model.\ud800.weight");
            open_fails(
                &b.with_index_bytes(json.as_bytes(), layout::preamble(1, 0)),
                &Limits::default(),
                &["index"],
            )
        }),
        ("duplicate_embedded_files", |b| {
            let mut ix = b.index.clone();
            let f0 = ix["files"][0].clone();
            ix["files"].as_array_mut().unwrap().insert(1, f0);
            open_fails(&b.with_index(&ix), &Limits::default(), &["config.json"])
        }),
        ("embedded_file_path_traversal", |b| {
            let mut ix = b.index.clone();
            ix["files"][1]["name"] = json!("../../etc/passwd");
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &["../../etc/passwd"],
            )
        }),
        ("embedded_file_over_limit", |b| {
            let mut ix = b.index.clone();
            ix["files"][1]["len"] = json!(1u64 << 40);
            open_fails(&b.with_index(&ix), &Limits::default(), &["tokenizer.json"])
        }),
        ("missing_config_json", |b| {
            let mut ix = b.index.clone();
            let f = ix["files"].as_array_mut().unwrap();
            f.retain(|f| f["name"] != "config.json");
            // Lay the frames out again without config.json's frame.
            let mut payloads = b.payloads();
            let c = b.open();
            let cfg = &c.file("config.json").unwrap().frames;
            let first =
                payloads.len() - c.index.files.iter().map(|f| f.frames.len()).sum::<usize>();
            payloads.drain(first..first + cfg.len());
            let bytes = relayout(&mut ix, &payloads, layout::preamble(1, 0));
            open_fails(&bytes, &Limits::default(), &["config.json"])
        }),
        ("wrong_format_alignment_version_fields", |b| {
            let mut ix = b.index.clone();
            ix["format"] = json!("gguf");
            open_fails(&b.with_index(&ix), &Limits::default(), &["index", "format"])?;
            let mut ix = b.index.clone();
            ix["alignment"] = json!(32);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &["index", "alignment"],
            )?;
            let mut ix = b.index.clone();
            ix["version"] = json!([1, 1]);
            open_fails(
                &b.with_index(&ix),
                &Limits::default(),
                &["index", "version"],
            )
        }),
        ("index_not_json", |b| {
            open_fails(
                &b.with_index_bytes(b"\x00\x01 not json", layout::preamble(1, 0)),
                &Limits::default(),
                &["index"],
            )?;
            open_fails(
                &b.with_index_bytes(b"[]", layout::preamble(1, 0)),
                &Limits::default(),
                &["index"],
            )?;
            open_fails(
                &b.with_index_bytes(b"{}", layout::preamble(1, 0)),
                &Limits::default(),
                &["index"],
            )
        }),
        ("index_deeply_nested_json", |b| {
            // 100,000 nested arrays: a recursive parser without a depth limit overflows its stack.
            let mut json = b"{\"format\":\"cllm\",\"x\":".to_vec();
            json.extend(std::iter::repeat_n(b'[', 100_000));
            json.extend(std::iter::repeat_n(b']', 100_000));
            json.push(b'}');
            open_fails(
                &b.with_index_bytes(&json, layout::preamble(1, 0)),
                &Limits::default(),
                &["index"],
            )
        }),
        ("index_with_trailing_garbage", |b| {
            let mut json = serde_json::to_vec(&b.index).unwrap();
            json.extend_from_slice(b" {}");
            open_fails(
                &b.with_index_bytes(&json, layout::preamble(1, 0)),
                &Limits::default(),
                &["index"],
            )
        }),
        ("newer_major_version", |b| {
            let mut ix = b.index.clone();
            ix["version"] = json!([2, 0]);
            let json = serde_json::to_vec(&ix).unwrap();
            let m = open_fails(
                &b.with_index_bytes(&json, layout::preamble(2, 0)),
                &Limits::default(),
                &["preamble", "2.0"],
            )?;
            // A major of 0 is refused the same way.
            open_fails(
                &b.with_index_bytes(&json, layout::preamble(0, 9)),
                &Limits::default(),
                &["preamble", "0.9"],
            )?;
            Ok(m)
        }),
        ("newer_minor_version_is_accepted", |b| {
            // A newer minor may add index members: they are ignored; everything else still reads.
            let mut ix = b.index.clone();
            ix["version"] = json!([1, 7]);
            ix["added_in_1_7"] = json!({"anything": [1, 2, 3]});
            ix["tensors"][0]["extra"] = json!("ignored");
            ix["tensors"][0]["streams"][0]["extra"] = json!(1);
            ix["tensors"][0]["streams"][0]["frames"][0]["extra"] = json!(null);
            ix["files"][0]["extra"] = json!(true);
            let bytes =
                b.with_index_bytes(&serde_json::to_vec(&ix).unwrap(), layout::preamble(1, 7));
            let c = Container::open(&bytes, &Limits::default())
                .map_err(|e| format!("refused a newer minor: {e}"))?;
            let r = verify(&c, WINDOW);
            if !r.failures.is_empty() {
                return Err(format!("verify: {:?}", r.failures));
            }
            let orig = b.open();
            for i in 0..c.tensors().len() {
                let got = c.tensor_source_bytes(i).map_err(|e| e.to_string())?;
                if got != orig.tensor_source_bytes(i).unwrap() {
                    return Err(format!("tensor {i} decodes differently"));
                }
                if orig.codec(i).is_lossless() && got != b.sources[i] {
                    return Err(format!("lossless tensor {i} is not bit-exact"));
                }
            }
            Ok(format!(
                "version 1.7 opened, {} tensors verified",
                c.tensors().len()
            ))
        }),
        ("huge_index_length_in_footer", |b| {
            let len = b.bytes.len();
            let mut bytes = b.bytes.clone();
            bytes[len - 24..len - 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
            open_fails(&bytes, &Limits::default(), &["footer"])?;
            // Offset + length wrap around 2^64 to exactly the file length minus the footer.
            let mut bytes = b.bytes.clone();
            let off = 1u64 << 63;
            let length = (len as u64 - 32).wrapping_sub(off);
            bytes[len - 32..len - 24].copy_from_slice(&off.to_le_bytes());
            bytes[len - 24..len - 16].copy_from_slice(&length.to_le_bytes());
            open_fails(&bytes, &Limits::default(), &["footer"])?;
            let mut bytes = b.bytes.clone();
            bytes[len - 24..len - 16].copy_from_slice(&u64::MAX.to_le_bytes());
            open_fails(&bytes, &Limits::default(), &["footer"])
        }),
        ("index_length_over_the_limit", |b| {
            let limits = Limits {
                max_index_len: 1024,
                ..Limits::default()
            };
            open_fails(&b.bytes, &limits, &["index", "limit"])
        }),
        ("index_offset_misaligned_or_in_preamble", |b| {
            // A consistent footer (offset + length + 32 == file length) that points into the
            // preamble or off the 64-byte grid.
            for off in [0u64, 16, 65] {
                let len = b.bytes.len() as u64;
                let mut bytes = b.bytes.clone();
                let l = len - 32 - off;
                let n = bytes.len();
                bytes[n - 32..n - 24].copy_from_slice(&off.to_le_bytes());
                bytes[n - 24..n - 16].copy_from_slice(&l.to_le_bytes());
                open_fails(&bytes, &Limits::default(), &["footer"])?;
            }
            Ok("refused".into())
        }),
        ("too_many_tensors_files_frames_for_limits", |b| {
            let l = Limits {
                max_tensors: 2,
                ..Limits::default()
            };
            open_fails(&b.bytes, &l, &["tensors", "limit"])?;
            let l = Limits {
                max_files: 1,
                ..Limits::default()
            };
            open_fails(&b.bytes, &l, &["files", "limit"])?;
            let l = Limits {
                max_frames_per_stream: 2,
                ..Limits::default()
            };
            open_fails(&b.bytes, &l, &["frames", "limit"])?;
            let l = Limits {
                max_frame_decoded: 1024,
                ..Limits::default()
            };
            open_fails(&b.bytes, &l, &["frame 0"])?;
            let l = Limits {
                max_dims: 1,
                ..Limits::default()
            };
            open_fails(&b.bytes, &l, &["dimensions"])?;
            let l = Limits {
                max_name_len: 10,
                ..Limits::default()
            };
            open_fails(&b.bytes, &l, &["name"])
        }),
    ]
}

#[test]
fn hostile_indexes_are_rejected_with_clear_errors() {
    let cases = hostile_cases();
    let mut problems = Vec::new();
    for (name, _) in &cases {
        let lines = in_child(&format!("hostile:{name}"));
        match lines.first().map(String::as_str) {
            Some(l) if l.starts_with("ok ") => println!("{name}: {}", &l[3..]),
            other => problems.push(format!("{name}: {other:?}")),
        }
    }
    println!(
        "SUMMARY hostile: {} cases, {} rejected correctly",
        cases.len(),
        cases.len() - problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} hostile cases mishandled:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_handmade_zstd_frames_are_valid_zstd() {
    // The bombs above are only meaningful if the handmade frames are real zstd.
    for (total, fcs) in [
        (1u64, false),
        (4096, false),
        (300_000, true),
        (131_072, false),
    ] {
        let z = zstd_zeros(total, fcs);
        let mut out = vec![1u8; total as usize];
        cllm_format::encoding::decode_frame_into(Encoding::Zstd, &z, &mut out, &mut Vec::new())
            .unwrap_or_else(|e| panic!("{total} zeros: {e}"));
        assert!(out.iter().all(|&b| b == 0));
    }
}

// ---------------------------------------------------------------------------------------------
// Findings: bugs in cllm-format found by this file, each a failing test until it is fixed.

fn findings() -> Vec<(&'static str, Case)> {
    vec![
        (
            "decode_allocates_declared_stream_before_checking_frames",
            |b| {
                // A tensor declaring 16 GiB (256 frames of 64 MiB, each stored as a valid 13-byte
                // zstd frame of 1 KiB): the file is ~16 KiB plus its index, and structurally valid,
                // so it opens. Decoding must fail on frame 0 (it inflates to 1 KiB, not 64 MiB)
                // without first allocating the whole declared stream.
                let mut ix = b.index.clone();
                let ti = tensor_pos(&ix, ZSTD_T);
                let frame_decoded = 64u64 << 20;
                let n = 256u64;
                let mut payloads = b.payloads();
                let before: usize = ix["tensors"].as_array().unwrap()[..ti]
                    .iter()
                    .flat_map(|t| t["streams"].as_array().unwrap())
                    .map(|s| s["frames"].as_array().unwrap().len())
                    .sum();
                let own = ix["tensors"][ti]["streams"][0]["frames"]
                    .as_array()
                    .unwrap()
                    .len();
                let small = zstd_zeros(1024, false);
                payloads.splice(before..before + own, (0..n).map(|_| small.clone()));
                let t = &mut ix["tensors"][ti];
                t["shape"] = json!([n * frame_decoded / 2]);
                t["streams"][0]["len"] = json!(n * frame_decoded);
                t["streams"][0]["frames"] = Value::Array(
                (0..n)
                    .map(|_| json!({"offset": 0, "stored": 0, "decoded": frame_decoded, "xxh3": "0".repeat(16)}))
                    .collect(),
            );
                let bytes = relayout(&mut ix, &payloads, layout::preamble(1, 0));
                let c = Container::open(&bytes, &Limits::default())
                    .map_err(|e| format!("open: {e}"))?;
                let r = verify(&c, WINDOW);
                if r.failures.is_empty() {
                    return Err("verify found nothing".into());
                }
                println!("RESULT note: verify: {}", r.failures[0]);
                match c.decode_tensor(ti) {
                    Ok(_) => Err("decoded".into()),
                    Err(e) => Ok(format!("decode_tensor: {e}")),
                }
            },
        ),
        (
            "index_parse_memory_is_bounded_by_a_small_multiple_of_its_length",
            |b| {
                // A 128 MiB index (half the default limit) whose policy lists 44 million empty rules:
                // 3 bytes of JSON each, 24 bytes each as a `String`. Opening must refuse it or parse
                // it in bounded memory, not allocate ~1 GiB (8x the index) before any count check.
                let mut ix = b.index.clone();
                ix["policy"]["rules"] = json!(["@@RULES@@"]);
                let text = serde_json::to_string(&ix).unwrap();
                let (head, tail) = text.split_once("\"@@RULES@@\"").unwrap();
                let n = (128usize << 20) / 3;
                let mut json = Vec::with_capacity(head.len() + 3 * n + tail.len());
                json.extend_from_slice(head.as_bytes());
                for i in 0..n {
                    json.extend_from_slice(if i == 0 { b"\"\"" } else { b",\"\"" });
                }
                json.extend_from_slice(tail.as_bytes());
                let bytes = b.with_index_bytes(&json, layout::preamble(1, 0));
                drop(json);
                match Container::open(&bytes, &Limits::default()) {
                    Ok(c) => Ok(format!("opened with {} rules", c.index.policy.rules.len())),
                    Err(e) => Ok(format!("refused: {e}")),
                }
            },
        ),
    ]
}

fn run_finding(name: &str) {
    let lines = in_child(&format!("finding:{name}"));
    let last = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("ok ") || l.starts_with("FAIL"));
    match last {
        Some(l) if l.starts_with("ok ") => println!("{name}: {l}"),
        other => panic!("{name}: {other:?} ({lines:?})"),
    }
}

#[test]
fn decode_allocates_declared_stream_before_checking_frames() {
    run_finding("decode_allocates_declared_stream_before_checking_frames");
}

#[test]
fn footer_checksum_damage_names_the_footer() {
    // A flipped bit in the footer's checksum field is reported as "index: checksum mismatch ...:
    // preamble or index corrupted", which sends the reader to look at the wrong region: the
    // preamble and the index are intact. The message should name the footer's checksum too.
    let base = Base::new();
    let len = base.bytes.len();
    let mut bytes = base.bytes.clone();
    bytes[len - 16] ^= 1;
    let m = open_fails(&bytes, &Limits::default(), &[]).unwrap();
    assert!(
        m.contains("footer"),
        "footer checksum damage: message does not name the footer: {m}"
    );
}

#[test]
fn index_parse_memory_is_bounded_by_a_small_multiple_of_its_length() {
    run_finding("index_parse_memory_is_bounded_by_a_small_multiple_of_its_length");
}
