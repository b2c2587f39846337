//! Hostile source files: GGUF files (`cllm_gguf::GgufFile::parse`) and Hugging Face safetensors
//! folders (`cllm_loader::hf::HfFolder::open`), crafted to overflow counts, lengths and sizes, to
//! point outside the file, to overlap, and to disagree with themselves. Each must be rejected
//! with a clear error naming what is wrong, without a panic and within bounded memory.
//!
//! The GGUF cases follow the bug classes reported against GGUF readers in 2024-2026: string
//! lengths near `u64::MAX` whose `n + 1` wraps (ggml-org/ggml#709, January 2024), array counts
//! whose `n * size` overflows, more than 4 dimensions written into a fixed `ne[4]`, unchecked type
//! ids indexing a type table, tensor sizes whose sum or padding wraps around 2^64
//! (GHSA-vgg9-87g3-85w8 / CVE-2025-53630, CVE-2026-27940, llama.cpp#26978), tensors declared
//! larger than the data behind them (out-of-bounds reads, CVE-2026-7482), `general.alignment` of
//! the wrong type or zero (llama.cpp#26318), deeply nested arrays (gguf-py recursion), and
//! string/array exhaustion (llama.cpp#19856).
//!
//! Every case runs in a child process (this test binary, re-executed with `CLLM_HOSTILE_CASE`)
//! under a 1 GiB address-space limit, so an unbounded allocation fails the test.

use cllm_tests::Rng;
use std::path::Path;

use cllm_gguf::{GgufError, GgufFile, Limits};
use cllm_loader::hf::HfFolder;

const CASE_ENV: &str = "CLLM_HOSTILE_CASE";
const MEMORY_LIMIT: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------------
// Child processes (cllm_tests::in_child)

fn in_child(case: &str) -> Vec<String> {
    cllm_tests::in_child(CASE_ENV, case, MEMORY_LIMIT)
}

#[test]
fn child() {
    let Ok(case) = std::env::var(CASE_ENV) else {
        return;
    };
    cllm_tests::limit_memory(MEMORY_LIMIT);
    let (kind, name) = case.split_once(':').expect("KIND:NAME");
    let cases = match kind {
        "gguf" => gguf_cases(),
        "hf" => hf_cases(),
        _ => panic!("unknown kind {kind}"),
    };
    let (_, f) = cases
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no case {case}"));
    match f() {
        Ok(msg) => println!("RESULT ok {msg}"),
        Err(problem) => println!("RESULT FAIL {problem}"),
    }
}

type Case = fn() -> Result<String, String>;

fn run_all(kind: &str, cases: Vec<(&'static str, Case)>) {
    let mut problems = Vec::new();
    for (name, _) in &cases {
        let lines = in_child(&format!("{kind}:{name}"));
        match lines.last().map(String::as_str) {
            Some(l) if l.starts_with("ok ") => println!("{kind} {name}: {}", &l[3..]),
            other => problems.push(format!("{name}: {other:?}")),
        }
    }
    println!(
        "SUMMARY {kind}: {} cases, {} handled correctly",
        cases.len(),
        cases.len() - problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} {kind} cases mishandled:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// Value type ids of GGUF metadata.
mod vt {
    pub const U8: u32 = 0;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
}

/// Tensor type ids.
mod tt {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q8_0: u32 = 8;
}

fn gstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// A GGUF writer whose every field can be set to anything, counts included.
#[derive(Clone)]
struct Gguf {
    magic: [u8; 4],
    version: u32,
    /// `None`: the number of tensors added.
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

impl Gguf {
    fn new() -> Gguf {
        Gguf {
            magic: *b"GGUF",
            version: 3,
            tensor_count: None,
            kv_count: None,
            kv: vec![],
            n_kv: 0,
            infos: vec![],
            n_tensors: 0,
            data: vec![],
        }
    }

    /// A key with a raw value (type id and bytes as given).
    fn kv_raw(mut self, key: &[u8], ty: u32, value: &[u8]) -> Self {
        gstr(&mut self.kv, key);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.n_kv += 1;
        self
    }

    fn kv_str(self, key: &str, v: &str) -> Self {
        let mut b = vec![];
        gstr(&mut b, v.as_bytes());
        self.kv_raw(key.as_bytes(), vt::STRING, &b)
    }

    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv_raw(key.as_bytes(), 4, &v.to_le_bytes())
    }

    /// A tensor info with raw dims, type and offset; `data` is appended to the data section at a
    /// 32-byte aligned position (the offset written is `offset` if given, else that position).
    fn tensor_raw(
        mut self,
        name: &str,
        dims: &[u64],
        ty: u32,
        offset: Option<u64>,
        data: &[u8],
    ) -> Self {
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        gstr(&mut self.infos, name.as_bytes());
        self.infos
            .extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend_from_slice(&d.to_le_bytes());
        }
        self.infos.extend_from_slice(&ty.to_le_bytes());
        self.infos
            .extend_from_slice(&offset.unwrap_or(self.data.len() as u64).to_le_bytes());
        self.data.extend_from_slice(data);
        self.n_tensors += 1;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.magic.to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.tensor_count.unwrap_or(self.n_tensors).to_le_bytes());
        out.extend_from_slice(&self.kv_count.unwrap_or(self.n_kv).to_le_bytes());
        out.extend_from_slice(&self.kv);
        out.extend_from_slice(&self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend_from_slice(&self.data);
        out
    }
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
        .collect()
}

/// A small valid llama-like GGUF file.
fn valid_gguf() -> Gguf {
    let mut tokens = 8u32.to_le_bytes().to_vec();
    tokens.extend_from_slice(&4u64.to_le_bytes());
    for t in ["<s>", "</s>", "a", "b"] {
        gstr(&mut tokens, t.as_bytes());
    }
    let mut q8 = 0x2c00u16.to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let mut q4 = 0x2c00u16.to_le_bytes().to_vec();
    q4.extend((0..16).map(|i| (i * 17) as u8));
    Gguf::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("general.alignment", 32)
        .kv_u32("llama.block_count", 1)
        .kv_raw(b"tokenizer.ggml.tokens", vt::ARRAY, &tokens)
        .tensor_raw("token_embd.weight", &[8, 4], tt::F32, None, &f32_bytes(32))
        .tensor_raw(
            "output_norm.weight",
            &[8],
            tt::F16,
            None,
            &[0x00, 0x3c].repeat(8),
        )
        .tensor_raw("blk.0.ffn_down.weight", &[32], tt::Q8_0, None, &q8)
        .tensor_raw("blk.0.ffn_up.weight", &[32], tt::Q4_0, None, &q4)
}

fn parse(bytes: &[u8]) -> Result<GgufFile<'_>, GgufError> {
    GgufFile::parse(bytes, &Limits::default())
}

/// `Ok(message)` when parsing fails with an error matching `ok` whose message contains `needles`.
fn gguf_rejects(
    bytes: &[u8],
    limits: &Limits,
    ok: impl Fn(&GgufError) -> bool,
    needles: &[&str],
) -> Result<String, String> {
    match GgufFile::parse(bytes, limits) {
        Ok(g) => Err(format!(
            "parsed: {} tensors, {} keys",
            g.tensors().len(),
            g.metadata().len()
        )),
        Err(e) => {
            let m = e.to_string();
            if !ok(&e) {
                Err(format!("unexpected error kind: {e:?}"))
            } else if let Some(n) = needles.iter().find(|n| !m.contains(*n)) {
                Err(format!("message does not name {n:?}: {m}"))
            } else {
                Ok(m)
            }
        }
    }
}

fn array_header(elem: u32, len: u64) -> Vec<u8> {
    let mut b = elem.to_le_bytes().to_vec();
    b.extend_from_slice(&len.to_le_bytes());
    b
}

fn gguf_cases() -> Vec<(&'static str, Case)> {
    vec![
        ("valid_file_parses_and_dequantizes", || {
            let bytes = valid_gguf().bytes();
            let g = parse(&bytes).map_err(|e| e.to_string())?;
            if g.tensors().len() != 4 || g.architecture() != Some("llama") {
                return Err("wrong contents".into());
            }
            for t in g.tensors() {
                let v = cllm_gguf::dequant::dequantize(
                    t.ggml_type,
                    g.tensor_data(t),
                    t.n_elements as usize,
                )
                .map_err(|e| format!("{}: {e}", t.name))?;
                if v.len() as u64 != t.n_elements {
                    return Err(format!("{}: {} values", t.name, v.len()));
                }
            }
            Ok("4 tensors".into())
        }),
        ("bad_magic_and_versions", || {
            let mut g = valid_gguf();
            g.magic = *b"GGML";
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::BadMagic { .. }),
                &["magic"],
            )?;
            for v in [0u32, 1, 4, u32::MAX] {
                let mut g = valid_gguf();
                g.version = v;
                gguf_rejects(
                    &g.bytes(),
                    &Limits::default(),
                    |e| matches!(e, GgufError::UnsupportedVersion(_)),
                    &[&v.to_string()],
                )?;
            }
            let mut g = valid_gguf();
            g.version = 3u32.swap_bytes();
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::BigEndian),
                &["big-endian"],
            )
        }),
        ("string_length_u64_max", || {
            // gguf_fread_str: calloc(n + 1) with n = SIZE_MAX wraps to calloc(0).
            let mut v = u64::MAX.to_le_bytes().to_vec();
            v.extend_from_slice(b"abc");
            let g = Gguf::new().kv_raw(b"general.name", vt::STRING, &v);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::StringTooLong { .. }),
                &["general.name"],
            )
        }),
        ("string_length_past_end_of_file", || {
            let mut v = 1000u64.to_le_bytes().to_vec();
            v.extend_from_slice(b"short");
            let g = Gguf::new().kv_raw(b"general.name", vt::STRING, &v);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::Truncated { .. }),
                &["general.name"],
            )
        }),
        ("key_length_u64_max", || {
            let mut b = Gguf::new().bytes();
            b[16..24].copy_from_slice(&1u64.to_le_bytes()); // one key
            b.truncate(24);
            b.extend_from_slice(&u64::MAX.to_le_bytes());
            b.extend_from_slice(b"key");
            gguf_rejects(
                &b,
                &Limits::default(),
                |e| matches!(e, GgufError::StringTooLong { .. }),
                &["key"],
            )
        }),
        ("non_utf8_key_and_value", || {
            let g = Gguf::new().kv_raw(b"general.\xff\xfe", vt::U8, &[1]);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::InvalidUtf8 { .. }),
                &["UTF-8"],
            )?;
            let mut v = vec![];
            gstr(&mut v, b"\xc3\x28");
            let g = Gguf::new().kv_raw(b"general.name", vt::STRING, &v);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::InvalidUtf8 { .. }),
                &["general.name"],
            )
        }),
        ("kv_count_u64_max_and_over_limit", || {
            let mut g = valid_gguf();
            g.kv_count = Some(u64::MAX);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::TooManyKv { .. }),
                &["limit"],
            )?;
            // Under the limit but far more than the file holds: refused, without reserving for it.
            let mut g = valid_gguf();
            g.kv_count = Some(65_000);
            gguf_rejects(&g.bytes(), &Limits::default(), |_| true, &[])
        }),
        ("tensor_count_u64_max_and_over_the_file", || {
            let mut g = valid_gguf();
            g.tensor_count = Some(u64::MAX);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::TooManyTensors { .. }),
                &["limit"],
            )?;
            let mut g = valid_gguf();
            g.tensor_count = Some(65_000);
            gguf_rejects(&g.bytes(), &Limits::default(), |_| true, &[])
        }),
        ("array_length_u64_max", || {
            let g = Gguf::new().kv_raw(
                b"tokenizer.ggml.tokens",
                vt::ARRAY,
                &array_header(vt::STRING, u64::MAX),
            );
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::ArrayTooLong { .. }),
                &["tokenizer.ggml.tokens"],
            )
        }),
        ("array_length_times_element_size_overflows", || {
            // With the count limits lifted, n * 8 bytes wraps around 2^64 to 8: a reader that
            // multiplies unchecked would accept 8 bytes for 2^61 + 1 elements.
            let limits = Limits {
                max_array_len: u64::MAX,
                max_total_array_elems: u64::MAX,
                ..Limits::default()
            };
            let mut v = array_header(vt::U64, (1u64 << 61) + 1);
            v.extend_from_slice(&[0u8; 64]);
            let g = Gguf::new().kv_raw(b"general.big", vt::ARRAY, &v);
            gguf_rejects(
                &g.bytes(),
                &limits,
                |e| matches!(e, GgufError::ArrayExceedsFile { .. }),
                &["general.big"],
            )
        }),
        ("array_under_limit_but_larger_than_file", || {
            // 16M strings of at least 8 bytes each, in a file of a few hundred bytes.
            let g = Gguf::new().kv_raw(
                b"tokenizer.ggml.tokens",
                vt::ARRAY,
                &array_header(vt::STRING, 1 << 24),
            );
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::ArrayExceedsFile { .. }),
                &["tokenizer.ggml.tokens"],
            )
        }),
        ("array_element_string_too_long", || {
            let mut v = array_header(vt::STRING, 2);
            gstr(&mut v, b"ok");
            v.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
            v.extend_from_slice(&[b'x'; 16]);
            let g = Gguf::new().kv_raw(b"tokenizer.ggml.merges", vt::ARRAY, &v);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::StringTooLong { .. }),
                &["tokenizer.ggml.merges"],
            )
        }),
        ("arrays_nested_10000_deep", || {
            let mut v = Vec::new();
            for _ in 0..10_000 {
                v.extend_from_slice(&array_header(vt::ARRAY, 1));
            }
            v.extend_from_slice(&array_header(vt::U8, 0));
            let g = Gguf::new().kv_raw(b"general.nested", vt::ARRAY, &v);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::ArrayTooDeep { .. }),
                &["general.nested"],
            )
        }),
        ("array_elements_exhaustion_across_keys", || {
            let limits = Limits {
                max_total_array_elems: 100,
                ..Limits::default()
            };
            let mut v = array_header(vt::U8, 60);
            v.extend_from_slice(&[0u8; 60]);
            let g = Gguf::new()
                .kv_raw(b"a", vt::ARRAY, &v)
                .kv_raw(b"b", vt::ARRAY, &v);
            gguf_rejects(
                &g.bytes(),
                &limits,
                |e| matches!(e, GgufError::TooManyArrayElements { .. }),
                &["`b`"],
            )
        }),
        ("parse_memory_is_a_small_multiple_of_the_file", || {
            // 64 MiB of the cheapest array elements (12-byte empty arrays, 8-byte empty strings):
            // the parser's peak memory must stay a small multiple of the file (here under the
            // child's 1 GiB address space), whatever it keeps per element.
            let n = (64usize << 20) / 12;
            let mut v = array_header(vt::ARRAY, n as u64);
            for _ in 0..n {
                v.extend_from_slice(&array_header(vt::U8, 0));
            }
            let m = (64usize << 20) / 8;
            let mut w = array_header(vt::STRING, m as u64);
            w.resize(w.len() + 8 * m, 0);
            let g = Gguf::new().kv_raw(b"general.arrays", vt::ARRAY, &v).kv_raw(
                b"general.strings",
                vt::ARRAY,
                &w,
            );
            let bytes = g.bytes();
            drop((v, w, g));
            let r = parse(&bytes)
                .map(|g| g.metadata().len())
                .map_err(|e| e.to_string());
            Ok(format!("{} MiB file: {r:?}", bytes.len() >> 20))
        }),
        ("unknown_value_types", || {
            for ty in [13u32, 255, u32::MAX] {
                let g = Gguf::new().kv_raw(b"general.x", ty, &[0; 16]);
                gguf_rejects(
                    &g.bytes(),
                    &Limits::default(),
                    |e| matches!(e, GgufError::UnknownValueType { .. }),
                    &["general.x"],
                )?;
            }
            let g = Gguf::new().kv_raw(b"general.x", vt::ARRAY, &array_header(77, 1));
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::UnknownValueType { .. }),
                &["general.x"],
            )
        }),
        ("bool_not_0_or_1", || {
            let g = Gguf::new().kv_raw(b"general.flag", vt::BOOL, &[2]);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::InvalidBool { .. }),
                &["general.flag"],
            )?;
            let mut v = array_header(vt::BOOL, 3);
            v.extend_from_slice(&[0, 1, 7]);
            let g = Gguf::new().kv_raw(b"general.flags", vt::ARRAY, &v);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::InvalidBool { .. }),
                &["general.flags"],
            )
        }),
        ("duplicate_keys_and_tensors", || {
            let g = valid_gguf().kv_u32("llama.block_count", 2);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::DuplicateKey { .. }),
                &["llama.block_count"],
            )?;
            let g =
                valid_gguf().tensor_raw("token_embd.weight", &[8], tt::F32, None, &f32_bytes(8));
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::DuplicateTensor { .. }),
                &["token_embd.weight"],
            )
        }),
        ("alignment_zero_odd_huge_or_wrong_type", || {
            for a in [0u32, 3, 48, 1 << 31] {
                let g = Gguf::new().kv_u32("general.alignment", a).tensor_raw(
                    "t",
                    &[8],
                    tt::F32,
                    None,
                    &f32_bytes(8),
                );
                gguf_rejects(
                    &g.bytes(),
                    &Limits::default(),
                    |e| matches!(e, GgufError::BadAlignment { .. }),
                    &["general.alignment"],
                )?;
            }
            // llama.cpp asserted on an alignment stored as a string or a float.
            let g = Gguf::new().kv_str("general.alignment", "32");
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::WrongMetadataType { .. }),
                &["general.alignment"],
            )?;
            let g = Gguf::new().kv_raw(b"general.alignment", vt::F32, &32f32.to_le_bytes());
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::WrongMetadataType { .. }),
                &["general.alignment"],
            )?;
            let g = Gguf::new().kv_raw(b"general.alignment", vt::I32, &(-32i32).to_le_bytes());
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |_| true,
                &["general.alignment"],
            )
        }),
        ("more_than_4_dims", || {
            // ggml's ne[4]: a reader that writes n_dims dims into it overflows at the fifth.
            let g = Gguf::new().tensor_raw("t", &[1, 1, 1, 1, 8], tt::F32, None, &f32_bytes(8));
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::TooManyDims { .. }),
                &["`t`"],
            )?;
            let mut b = Gguf::new()
                .tensor_raw("t", &[8], tt::F32, None, &f32_bytes(8))
                .bytes();
            // n_dims is right after the name (24-byte header, 8-byte length, 1-byte name).
            b[33..37].copy_from_slice(&u32::MAX.to_le_bytes());
            gguf_rejects(
                &b,
                &Limits::default(),
                |e| matches!(e, GgufError::TooManyDims { .. }),
                &["`t`"],
            )
        }),
        ("element_count_overflows", || {
            let g = Gguf::new().tensor_raw("t", &[1 << 32, 1 << 32], tt::F32, None, &[]);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::ElementCountOverflow { .. }),
                &["`t`"],
            )?;
            let g = Gguf::new().tensor_raw("t", &[u64::MAX], tt::F32, None, &[]);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::DimTooLarge { .. }),
                &["`t`"],
            )?;
            // A negative int64 dimension (-1): the same bits.
            let g = Gguf::new().tensor_raw("t", &[(-1i64) as u64, 2], tt::F32, None, &[]);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::DimTooLarge { .. }),
                &["`t`"],
            )
        }),
        ("byte_size_wraps_around_2_64", || {
            // 4 * 4 * (2^30 - 1) * (2^30 + 1) = 2^64 - 16 bytes; padded to 32 it wraps to 0
            // (llama.cpp#26978). Must be refused as out of bounds, not accepted as empty.
            let g = Gguf::new().tensor_raw(
                "b",
                &[4, (1 << 30) - 1, (1 << 30) + 1, 1],
                tt::F32,
                None,
                &f32_bytes(4),
            );
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| {
                    matches!(
                        e,
                        GgufError::TensorOutOfBounds { .. } | GgufError::ByteSizeOverflow { .. }
                    )
                },
                &["`b`"],
            )
        }),
        ("tensor_sizes_sum_past_2_64", || {
            // Two tensors of 2^62 - 4 elements (F32: 2^64 - 16 bytes each): each size fits, their
            // sum does not (GHSA-vgg9-87g3-85w8).
            let n = (1u64 << 62) - 4;
            let g = Gguf::new()
                .tensor_raw("a", &[n], tt::F32, Some(0), &[])
                .tensor_raw("b", &[n], tt::F32, Some(1 << 63), &[]);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| {
                    matches!(
                        e,
                        GgufError::TensorOutOfBounds { .. } | GgufError::ByteSizeOverflow { .. }
                    )
                },
                &[],
            )
        }),
        ("unknown_or_negative_tensor_type", || {
            for ty in [4u32, 5, 31, 1000, u32::MAX, 0x8000_0000] {
                let g = Gguf::new().tensor_raw("t", &[32], ty, None, &[0; 64]);
                gguf_rejects(
                    &g.bytes(),
                    &Limits::default(),
                    |e| matches!(e, GgufError::UnknownTensorType { .. }),
                    &["`t`"],
                )?;
            }
            Ok("refused".into())
        }),
        ("block_misaligned_first_dim", || {
            let g = Gguf::new().tensor_raw("t", &[33], tt::Q4_0, None, &[0; 36]);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::BlockMisaligned { .. }),
                &["`t`"],
            )
        }),
        ("tensor_larger_than_its_data", || {
            // Declares 1M elements but the file holds 32 (CVE-2026-7482: out-of-bounds read).
            let g = Gguf::new().tensor_raw("t", &[1 << 20], tt::F32, None, &f32_bytes(32));
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::TensorOutOfBounds { .. }),
                &["`t`"],
            )
        }),
        ("tensor_offset_past_end", || {
            for off in [1u64 << 20, u64::MAX - 31, (u64::MAX / 32) * 32] {
                let g = Gguf::new().tensor_raw("t", &[8], tt::F32, Some(off), &f32_bytes(8));
                gguf_rejects(
                    &g.bytes(),
                    &Limits::default(),
                    |e| {
                        matches!(
                            e,
                            GgufError::TensorOutOfBounds { .. }
                                | GgufError::MisalignedOffset { .. }
                        )
                    },
                    &["`t`"],
                )?;
            }
            Ok("refused".into())
        }),
        ("misaligned_tensor_offset", || {
            let g = Gguf::new().tensor_raw("t", &[8], tt::F32, Some(4), &f32_bytes(16));
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::MisalignedOffset { .. }),
                &["`t`"],
            )
        }),
        ("overlapping_tensors", || {
            let g = Gguf::new()
                .tensor_raw("a", &[16], tt::F32, Some(0), &f32_bytes(16))
                .tensor_raw("b", &[16], tt::F32, Some(32), &f32_bytes(16));
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::TensorsOverlap { .. }),
                &["`a`", "`b`"],
            )?;
            let g = Gguf::new()
                .tensor_raw("a", &[8], tt::F32, Some(0), &f32_bytes(8))
                .tensor_raw("b", &[8], tt::F32, Some(0), &[]);
            gguf_rejects(
                &g.bytes(),
                &Limits::default(),
                |e| matches!(e, GgufError::TensorsOverlap { .. }),
                &[],
            )
        }),
        ("data_section_past_end", || {
            // Tensor infos end exactly at the end of the file, with an alignment of 65536.
            let g = Gguf::new().kv_u32("general.alignment", 1 << 16).tensor_raw(
                "t",
                &[0],
                tt::F32,
                Some(0),
                &[],
            );
            let mut b = g.bytes();
            while b.last() == Some(&0) && !b.len().is_multiple_of(32) {
                b.pop();
            }
            match parse(&b) {
                Ok(g) => {
                    if g.tensors().iter().all(|t| t.n_bytes == 0) {
                        Ok("an empty tensor needs no data: accepted".into())
                    } else {
                        Err("accepted a tensor with data past the end".into())
                    }
                }
                Err(e) => Ok(e.to_string()),
            }
        }),
        ("dequantize_rejects_length_mismatch", || {
            use cllm_gguf::GgmlType;
            for (ty, bytes, n) in [
                (GgmlType::Q4_0, 17usize, 32usize),
                (GgmlType::Q8_0, 34, 31),
                (GgmlType::F32, 3, 1),
                (GgmlType::Q6_K, 210, 255),
                (GgmlType::Q4_K, 0, 256),
            ] {
                if cllm_gguf::dequant::dequantize(ty, &vec![0u8; bytes], n).is_ok() {
                    return Err(format!("{ty}: {bytes} bytes accepted for {n} elements"));
                }
            }
            Ok("refused".into())
        }),
        ("truncation_at_every_byte", || {
            let full = valid_gguf().bytes();
            let ends: u64 = parse(&full)
                .unwrap()
                .tensors()
                .iter()
                .map(|t| t.file_offset + t.n_bytes)
                .max()
                .unwrap();
            let mut accepted = 0;
            for cut in 0..full.len() {
                match parse(&full[..cut]) {
                    Ok(_) if (cut as u64) < ends => {
                        return Err(format!("cut at {cut} accepted (data ends at {ends})"))
                    }
                    Ok(_) => accepted += 1,
                    Err(_) => {}
                }
            }
            Ok(format!(
                "{} cuts, {accepted} accepted (only after the last tensor's data)",
                full.len()
            ))
        }),
        ("random_bit_flips_and_byte_stores", || {
            // 3000 seeded mutations of the valid file: any result, never a panic; what parses
            // keeps every tensor inside the file.
            let full = valid_gguf().bytes();
            let mut rng = Rng::new(0x9916);
            let mut parsed = 0;
            for i in 0..3000 {
                let mut b = full.clone();
                let at = (rng.next() % b.len() as u64) as usize;
                if i % 2 == 0 {
                    b[at] ^= 1 << (rng.next() % 8);
                } else {
                    b[at] = [0x00, 0xff, 0x7f, 0x80, 0x20][(rng.next() % 5) as usize];
                }
                if let Ok(g) = parse(&b) {
                    parsed += 1;
                    for t in g.tensors() {
                        if t.file_offset + t.n_bytes > b.len() as u64 {
                            return Err(format!(
                                "mutation {i}: tensor {} outside the file",
                                t.name
                            ));
                        }
                        if t.n_elements <= 1 << 20 {
                            let _ = cllm_gguf::dequant::dequantize(
                                t.ggml_type,
                                g.tensor_data(t),
                                t.n_elements as usize,
                            );
                        }
                    }
                }
            }
            Ok(format!("3000 mutations, {parsed} still parse"))
        }),
    ]
}

#[test]
fn hostile_gguf_files_are_rejected() {
    run_all("gguf", gguf_cases());
}

// ---------------------------------------------------------------------------------------------
// Hugging Face safetensors folders

const CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":8,"num_hidden_layers":1,"torch_dtype":"bfloat16"}"#;

/// A safetensors file from a raw header (as given, padded with spaces to 8 bytes) and data.
fn safetensors_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A valid safetensors file: `a` bf16 [2, 3] (12 bytes), `b` f32 [4] (16 bytes).
fn valid_safetensors() -> Vec<u8> {
    safetensors_raw(
        r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}}"#,
        &(0..28u8).collect::<Vec<_>>(),
    )
}

/// Writes a folder with `files` (name, bytes) and opens it; exercises what opened.
fn open_folder(files: &[(&str, &[u8])]) -> Result<usize, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).map_err(|e| e.to_string())?;
    }
    open_dir(dir.path())
}

fn open_dir(dir: &Path) -> Result<usize, String> {
    let f = HfFolder::open(dir).map_err(|e| e.to_string())?;
    for t in f.tensors() {
        let n = t
            .numel()
            .ok_or_else(|| format!("accepted {}: numel overflows", t.name))?;
        if n.checked_mul(t.dtype.size() as u64) != Some(t.bytes.len() as u64) {
            return Err(format!(
                "accepted {}: shape {:?} disagrees with {} bytes",
                t.name,
                t.shape,
                t.bytes.len()
            ));
        }
        let _ = cllm_loader::hf::to_weight(&t);
    }
    let _ = f.source_files();
    Ok(f.len())
}

/// `Ok(message)` when the folder is refused with a message containing every needle.
fn folder_rejects(files: &[(&str, &[u8])], needles: &[&str]) -> Result<String, String> {
    match open_folder(files) {
        Ok(n) => Err(format!("opened with {n} tensors")),
        Err(m) if m.starts_with("accepted ") => Err(m),
        Err(m) => match needles.iter().find(|n| !m.contains(*n)) {
            Some(n) => Err(format!("message does not name {n:?}: {m}")),
            None => Ok(m),
        },
    }
}

fn st_rejects(st: &[u8], needles: &[&str]) -> Result<String, String> {
    let mut n = vec!["model.safetensors"];
    n.extend_from_slice(needles);
    folder_rejects(
        &[
            ("config.json", CONFIG.as_bytes()),
            ("model.safetensors", st),
        ],
        &n,
    )
}

fn hf_cases() -> Vec<(&'static str, Case)> {
    vec![
        ("valid_folder_opens", || {
            let n = open_folder(&[
                ("config.json", CONFIG.as_bytes()),
                ("model.safetensors", &valid_safetensors()),
            ])?;
            if n == 2 {
                Ok("2 tensors".into())
            } else {
                Err(format!("{n} tensors"))
            }
        }),
        ("header_length_larger_than_file", || {
            let mut st = valid_safetensors();
            st[..8].copy_from_slice(&10_000u64.to_le_bytes());
            st_rejects(&st, &[])?;
            let mut st = valid_safetensors();
            st[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            st_rejects(&st, &[])?;
            let mut st = valid_safetensors();
            let over = (st.len() - 8) as u64 + 1;
            st[..8].copy_from_slice(&over.to_le_bytes());
            st_rejects(&st, &[])
        }),
        ("header_length_over_100_mib_in_a_small_file", || {
            let mut st = valid_safetensors();
            st[..8].copy_from_slice(&(200u64 << 20).to_le_bytes());
            st_rejects(&st, &[])
        }),
        ("file_shorter_than_the_length_field", || {
            st_rejects(&[], &[])?;
            st_rejects(&[1, 2, 3], &[])
        }),
        ("header_not_json_or_not_utf8_or_not_an_object", || {
            st_rejects(&safetensors_raw("this is not json", &[]), &[])?;
            let mut st = safetensors_raw(
                r#"{"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}"#,
                &[0, 0],
            );
            st[12] = 0xff;
            st_rejects(&st, &[])?;
            st_rejects(&safetensors_raw("[1, 2, 3]", &[]), &[])?;
            st_rejects(&safetensors_raw("", &[]), &[])?;
            let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
            st_rejects(&safetensors_raw(&deep, &[]), &[])
        }),
        ("offsets_past_end_of_data", || {
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}"#,
                    &[0; 8],
                ),
                &[],
            )?;
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[18446744073709551608,18446744073709551615]}}"#,
                    &[0; 8],
                ),
                &[],
            )
        }),
        ("reversed_offsets", || {
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}}"#,
                    &[0; 8],
                ),
                &[],
            )
        }),
        ("overlapping_data_offsets", || {
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                    &[0; 12],
                ),
                &[],
            )?;
            // Two tensors on the very same bytes.
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                    &[0; 8],
                ),
                &[],
            )
        }),
        ("gap_or_trailing_bytes_in_data", || {
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
                    &[0; 12],
                ),
                &[],
            )?;
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                    &[0; 12],
                ),
                &[],
            )
        }),
        ("dtype_shape_length_mismatch", || {
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}}"#,
                    &[0; 10],
                ),
                &[],
            )?;
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                    &[0; 8],
                ),
                &[],
            )
        }),
        ("shape_element_count_overflows", || {
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}}"#,
                    &[],
                ),
                &[],
            )?;
            // numel * 4 wraps to 0: 2^62 elements of F32.
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}"#,
                    &[],
                ),
                &[],
            )?;
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
                    &[0; 4],
                ),
                &[],
            )
        }),
        ("unknown_or_uncarried_dtype", || {
            st_rejects(
                &safetensors_raw(
                    r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}}"#,
                    &[0],
                ),
                &[],
            )?;
            // A dtype safetensors knows but cllm does not carry: refused naming the tensor.
            st_rejects(
                &safetensors_raw(
                    r#"{"a.fp8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#,
                    &[0; 2],
                ),
                &["a.fp8"],
            )
        }),
        ("duplicate_tensor_names_in_header", || {
            // JSON objects may repeat a key; a reader must not end up with a tensor whose bytes
            // disagree with its shape, or two views of one tensor.
            let st = safetensors_raw(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            );
            match open_folder(&[
                ("config.json", CONFIG.as_bytes()),
                ("model.safetensors", &st),
            ]) {
                Ok(n) => Ok(format!("opened with {n} consistent tensors")),
                Err(m) if m.starts_with("accepted ") => Err(m),
                Err(m) => Ok(m),
            }
        }),
        ("config_missing_or_not_an_object", || {
            let st = valid_safetensors();
            folder_rejects(&[("model.safetensors", &st)], &["config.json"])?;
            folder_rejects(
                &[("config.json", b"{not json"), ("model.safetensors", &st)],
                &["config.json"],
            )?;
            folder_rejects(
                &[("config.json", b"[1,2]"), ("model.safetensors", &st)],
                &["config.json"],
            )?;
            folder_rejects(
                &[("config.json", b"\xff\xfe"), ("model.safetensors", &st)],
                &["config.json"],
            )
        }),
        ("no_weights", || {
            folder_rejects(&[("config.json", CONFIG.as_bytes())], &["safetensors"])
        }),
        ("index_shard_path_traversal", || {
            let st = valid_safetensors();
            for bad in [
                "../model.safetensors",
                "/etc/passwd",
                "sub/model.safetensors",
                "..",
                "",
            ] {
                let index = format!(r#"{{"weight_map":{{"a":"{bad}","b":"{bad}"}}}}"#);
                folder_rejects(
                    &[
                        ("config.json", CONFIG.as_bytes()),
                        ("model.safetensors.index.json", index.as_bytes()),
                        ("shard.safetensors", &st),
                    ],
                    &["model.safetensors.index.json"],
                )?;
            }
            Ok("refused".into())
        }),
        ("index_inconsistent_with_shards", || {
            let st = valid_safetensors();
            let files = |index: &'static str| -> Vec<(&'static str, Vec<u8>)> {
                vec![
                    ("config.json", CONFIG.as_bytes().to_vec()),
                    ("model.safetensors.index.json", index.as_bytes().to_vec()),
                    ("model-00001-of-00001.safetensors", valid_safetensors()),
                ]
            };
            let _ = st;
            let check = |index: &'static str, needles: &[&str]| -> Result<String, String> {
                let f = files(index);
                let refs: Vec<(&str, &[u8])> = f.iter().map(|(n, b)| (*n, b.as_slice())).collect();
                folder_rejects(&refs, needles)
            };
            // A listed shard that does not exist.
            check(
                r#"{"weight_map":{"a":"model-00001-of-00002.safetensors"}}"#,
                &["model-00001-of-00002.safetensors"],
            )?;
            // A listed tensor the shard does not hold.
            check(
                r#"{"weight_map":{"a":"model-00001-of-00001.safetensors","b":"model-00001-of-00001.safetensors","c":"model-00001-of-00001.safetensors"}}"#,
                &["c"],
            )?;
            // A tensor in the shard the index does not list.
            check(
                r#"{"weight_map":{"a":"model-00001-of-00001.safetensors"}}"#,
                &["b"],
            )?;
            // Empty or malformed maps.
            check(r#"{"weight_map":{}}"#, &["weight_map"])?;
            check(r#"{"metadata":{}}"#, &["weight_map"])?;
            check(r#"{"weight_map":{"a":17}}"#, &["a"])?;
            check(r#"{"weight_map":[]}"#, &["weight_map"])?;
            check("not json", &["model.safetensors.index.json"])
        }),
        ("tensor_in_two_shards", || {
            let st = valid_safetensors();
            let index = r#"{"weight_map":{"a":"one.safetensors","b":"two.safetensors"}}"#;
            folder_rejects(
                &[
                    ("config.json", CONFIG.as_bytes()),
                    ("model.safetensors.index.json", index.as_bytes()),
                    ("one.safetensors", &st),
                    ("two.safetensors", &st),
                ],
                &["one.safetensors", "two.safetensors"],
            )
        }),
        ("truncation_at_every_byte", || {
            let full = valid_safetensors();
            for cut in 0..full.len() {
                if let Ok(n) = open_folder(&[
                    ("config.json", CONFIG.as_bytes()),
                    ("model.safetensors", &full[..cut]),
                ]) {
                    return Err(format!(
                        "cut at {cut} of {} opened with {n} tensors",
                        full.len()
                    ));
                }
            }
            Ok(format!("{} cuts refused", full.len()))
        }),
        ("random_mutations", || {
            let full = valid_safetensors();
            let mut rng = Rng::new(0x5afe);
            let mut opened = 0;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
            for i in 0..1500 {
                let mut b = full.clone();
                let at = (rng.next() % b.len() as u64) as usize;
                if i % 2 == 0 {
                    b[at] ^= 1 << (rng.next() % 8);
                } else {
                    b[at] = b"0123456789,[]{}\"-"[(rng.next() % 17) as usize];
                }
                std::fs::write(dir.path().join("model.safetensors"), &b).unwrap();
                match open_dir(dir.path()) {
                    Ok(_) => opened += 1,
                    Err(m) if m.starts_with("accepted ") => {
                        return Err(format!("mutation {i}: {m}"))
                    }
                    Err(_) => {}
                }
            }
            Ok(format!("1500 mutations, {opened} still open consistently"))
        }),
    ]
}

#[test]
fn hostile_safetensors_folders_are_rejected() {
    run_all("hf", hf_cases());
}
