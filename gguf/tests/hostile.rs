//! Hand-made GGUF byte strings, valid and hostile. Each hostile one must be
//! refused with its own error, without panicking or allocating for the
//! claimed sizes (the CVE classes reported against GGUF readers: overflowing
//! counts, string lengths, dims, offsets).

use cllm_gguf::{dequant, GgmlType, GgufError, GgufFile, Limits, MetaValue, ValueType};

/// A little GGUF writer for tests.
#[derive(Default, Clone)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        let mut b = B::default();
        b.raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn raw(&mut self, x: &[u8]) -> &mut Self {
        self.0.extend_from_slice(x);
        self
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.raw(&x.to_le_bytes())
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.raw(&x.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.str(key).u32(8).str(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, align: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

fn parse(b: &[u8]) -> Result<GgufFile<'_>, GgufError> {
    GgufFile::parse(b, &Limits::default())
}

/// Limits with every bound lifted: only the checks against the file size
/// stand between a hostile count and an allocation.
fn no_limits() -> Limits {
    Limits {
        max_tensors: u64::MAX,
        max_kv: u64::MAX,
        max_key_len: u64::MAX,
        max_tensor_name_len: u64::MAX,
        max_string_len: u64::MAX,
        max_array_len: u64::MAX,
        max_array_depth: u32::MAX,
        max_total_array_elems: u64::MAX,
        max_dims: u32::MAX,
        max_alignment: u64::MAX,
    }
}

/// A valid file: three metadata entries (one an array of strings), an F32
/// tensor of 4 elements and a Q8_0 tensor of 2 x 32 elements.
fn valid() -> Vec<u8> {
    let mut b = B::header(3, 2, 3);
    b.kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 7);
    b.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(2);
    b.str("a").str("bc");
    b.tensor("norm.weight", &[4], 0, 0)
        .tensor("emb.weight", &[32, 2], 8, 32);
    b.pad(32);
    for x in [1.0f32, -2.0, 0.5, 3.25] {
        b.raw(&x.to_le_bytes());
    }
    b.pad(32);
    for blk in 0..2u8 {
        b.raw(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b.raw(&(0..32).map(|i| i + blk).collect::<Vec<u8>>());
    }
    b.bytes()
}

#[test]
fn valid_file_parses() {
    let bytes = valid();
    let f = parse(&bytes).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.metadata().len(), 3);
    assert_eq!(f.metadata().get_u64("llama.block_count"), Some(7));
    let toks = f.metadata().get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(toks.elem_type(), ValueType::String);
    assert_eq!(toks.as_strs().unwrap(), &["a", "bc"]);
    assert_eq!(toks.get(1), Some(MetaValue::String("bc")));
    assert_eq!(toks.get(2), None);

    let norm = f.tensor("norm.weight").unwrap();
    assert_eq!(norm.n_bytes, 16);
    let v = dequant::dequantize(norm.ggml_type, f.tensor_data(norm), 4).unwrap();
    assert_eq!(v, vec![1.0, -2.0, 0.5, 3.25]);

    let emb = f.tensor("emb.weight").unwrap();
    assert_eq!(emb.ggml_type, GgmlType::Q8_0);
    assert_eq!(emb.shape(), vec![2, 32]);
    assert_eq!(emb.n_bytes, 68);
    let v = dequant::dequantize(emb.ggml_type, f.tensor_data(emb), 64).unwrap();
    assert_eq!(v[0], 0.0);
    assert_eq!(v[31], 15.5);
    assert_eq!(v[32], 0.5);
    assert_eq!(f.data_offset() % 32, 0);
}

#[test]
fn version_2_is_accepted() {
    let mut bytes = valid();
    bytes[4] = 2;
    assert_eq!(parse(&bytes).unwrap().version(), 2);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid();
    for len in 0..bytes.len() {
        let r = parse(&bytes[..len]);
        assert!(r.is_err(), "prefix of {len} bytes parsed");
    }
}

#[test]
fn byte_flips_never_panic() {
    // Deterministic pseudo-random corruption of the valid file.
    let bytes = valid();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        let _ = GgufFile::parse(&b, &Limits::default());
        let _ = GgufFile::parse(&b, &no_limits());
    }
}

#[test]
fn bad_magic() {
    let mut bytes = valid();
    bytes[0] = b'X';
    assert!(matches!(parse(&bytes), Err(GgufError::BadMagic { .. })));
}

#[test]
fn bad_versions() {
    for v in [0u32, 1, 4, u32::MAX] {
        let b = B::header(v, 0, 0).bytes();
        assert!(
            matches!(parse(&b), Err(GgufError::UnsupportedVersion(x)) if x == v),
            "version {v}"
        );
    }
    let b = B::header(3u32.swap_bytes(), 0, 0).bytes();
    assert!(matches!(parse(&b), Err(GgufError::BigEndian)));
}

#[test]
fn huge_tensor_count() {
    let b = B::header(3, 1 << 60, 0).bytes();
    assert!(matches!(
        parse(&b),
        Err(GgufError::TooManyTensors { count, .. }) if count == 1 << 60
    ));
    // Without the limit: refused by the size of the file, not allocated.
    let r = GgufFile::parse(&b, &no_limits());
    assert!(matches!(r, Err(GgufError::Truncated { .. })), "{r:?}");
}

#[test]
fn huge_kv_count() {
    let b = B::header(3, 0, u64::MAX).bytes();
    assert!(matches!(parse(&b), Err(GgufError::TooManyKv { .. })));
    let r = GgufFile::parse(&b, &no_limits());
    assert!(matches!(r, Err(GgufError::Truncated { .. })), "{r:?}");
}

#[test]
fn huge_key_length() {
    let mut b = B::header(3, 0, 1);
    b.u64(1 << 60).raw(b"abc");
    let bytes = b.bytes();
    assert!(matches!(
        parse(&bytes),
        Err(GgufError::StringTooLong { len, .. }) if len == 1 << 60
    ));
    let r = GgufFile::parse(&bytes, &no_limits());
    assert!(matches!(r, Err(GgufError::Truncated { .. })), "{r:?}");
    // u64::MAX: no overflow when computing the end position.
    let mut b = B::header(3, 0, 1);
    b.u64(u64::MAX).raw(b"abc");
    let bytes = b.bytes();
    let r = GgufFile::parse(&bytes, &no_limits());
    assert!(matches!(r, Err(GgufError::Truncated { .. })), "{r:?}");
}

#[test]
fn huge_string_value() {
    let mut b = B::header(3, 0, 1);
    b.str("general.name").u32(8).u64(u64::MAX - 3).raw(b"x");
    let bytes = b.bytes();
    match parse(&bytes) {
        Err(GgufError::StringTooLong { what, .. }) => assert!(what.contains("general.name")),
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        GgufFile::parse(&bytes, &no_limits()),
        Err(GgufError::Truncated { .. })
    ));
}

#[test]
fn huge_array_count() {
    for elem_ty in [0u32, 4, 8, 9, 12] {
        let mut b = B::header(3, 0, 1);
        b.str("tokenizer.ggml.tokens")
            .u32(9)
            .u32(elem_ty)
            .u64(1 << 60);
        b.raw(&[0; 64]);
        let bytes = b.bytes();
        match parse(&bytes) {
            Err(GgufError::ArrayTooLong { key, len, .. }) => {
                assert_eq!(key, "tokenizer.ggml.tokens");
                assert_eq!(len, 1 << 60);
            }
            r => panic!("elem type {elem_ty}: {r:?}"),
        }
        // With no limits, still no allocation: the file cannot hold it.
        let r = GgufFile::parse(&bytes, &no_limits());
        assert!(
            matches!(r, Err(GgufError::ArrayExceedsFile { .. })),
            "elem type {elem_ty}: {r:?}"
        );
    }
    // A count whose byte size overflows u64 (2^62 x 8-byte elements).
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(10).u64(1 << 62).raw(&[0; 16]);
    let bytes = b.bytes();
    let r = GgufFile::parse(&bytes, &no_limits());
    assert!(
        matches!(r, Err(GgufError::ArrayExceedsFile { .. })),
        "{r:?}"
    );
}

#[test]
fn array_of_strings_lying_about_count() {
    // Claims 1000 strings but only 2 follow: refused before reserving.
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(8).u64(1000).str("a").str("b");
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::ArrayExceedsFile { len: 1000, .. })
    ));
    // Claims 3 strings, 2 follow, but room for 3 headers: truncated element.
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(8).u64(3).str("a").str("b").u64(5);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::Truncated { .. })
    ));
}

#[test]
fn deeply_nested_arrays() {
    let depth = 100;
    let mut b = B::header(3, 0, 1);
    b.str("nested").u32(9);
    for _ in 0..depth {
        b.u32(9).u64(1); // array of 1 array of ...
    }
    b.u32(4).u64(0);
    let bytes = b.bytes();
    assert!(matches!(
        parse(&bytes),
        Err(GgufError::ArrayTooDeep { max: 8, .. })
    ));
    // Nesting within the limit is fine and readable.
    let mut b = B::header(3, 0, 1);
    b.str("nested").u32(9).u32(9).u64(2);
    b.u32(4).u64(2).u32(1).u32(2);
    b.u32(4).u64(1).u32(3);
    let bytes = b.bytes();
    let f = parse(&bytes).unwrap();
    let a = f.metadata().get_array("nested").unwrap();
    let inner = a.as_arrays().unwrap();
    assert_eq!(inner.len(), 2);
    assert_eq!(inner[0].to_i64_vec(), Some(vec![1, 2]));
    assert_eq!(inner[1].to_i64_vec(), Some(vec![3]));
}

#[test]
fn total_array_element_budget() {
    let mut b = B::header(3, 0, 2);
    b.str("a").u32(9).u32(0).u64(6).raw(&[0; 6]);
    b.str("b").u32(9).u32(0).u64(6).raw(&[0; 6]);
    let bytes = b.bytes();
    let limits = Limits {
        max_total_array_elems: 10,
        ..Limits::default()
    };
    match GgufFile::parse(&bytes, &limits) {
        Err(GgufError::TooManyArrayElements { key, .. }) => assert_eq!(key, "b"),
        r => panic!("{r:?}"),
    }
    assert!(parse(&bytes).is_ok());
}

#[test]
fn invalid_utf8_key_and_value() {
    let mut b = B::header(3, 0, 1);
    b.u64(2).raw(&[0xC3, 0x28]).u32(4).u32(0);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::InvalidUtf8 { .. })
    ));
    let mut b = B::header(3, 0, 1);
    b.str("general.name").u32(8).u64(1).raw(&[0xFF]);
    match parse(&b.bytes()) {
        Err(GgufError::InvalidUtf8 { what }) => assert!(what.contains("general.name")),
        r => panic!("{r:?}"),
    }
}

#[test]
fn unknown_value_types() {
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(13).u32(0);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::UnknownValueType { ty: 13, .. })
    ));
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(u32::MAX).u64(0);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::UnknownValueType { ty: u32::MAX, .. })
    ));
}

#[test]
fn invalid_bools() {
    let mut b = B::header(3, 0, 1);
    b.str("flag").u32(7).raw(&[2]);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::InvalidBool { value: 2, .. })
    ));
    let mut b = B::header(3, 0, 1);
    b.str("flags").u32(9).u32(7).u64(3).raw(&[0, 1, 7]);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::InvalidBool { value: 7, .. })
    ));
}

#[test]
fn duplicate_key() {
    let mut b = B::header(3, 0, 2);
    b.kv_u32("x", 1).kv_u32("x", 2);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::DuplicateKey { key }) if key == "x"
    ));
}

/// A file with one tensor info followed by `data_len` bytes of data.
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = B::header(3, 1, 0);
    b.tensor("t.weight", dims, ty, offset).pad(32);
    b.raw(&vec![0; data_len]);
    b.bytes()
}

#[test]
fn too_many_dims() {
    for n in [5u32, u32::MAX] {
        let mut b = B::header(3, 1, 0);
        b.str("t.weight").u32(n).raw(&[1; 64]);
        match parse(&b.bytes()) {
            Err(GgufError::TooManyDims { tensor, n_dims, .. }) => {
                assert_eq!(tensor, "t.weight");
                assert_eq!(n_dims, n);
            }
            r => panic!("{r:?}"),
        }
    }
    // With no limit on dims, u32::MAX dims are refused by the file size.
    let mut b = B::header(3, 1, 0);
    b.str("t.weight").u32(u32::MAX).raw(&[1; 64]);
    assert!(matches!(
        GgufFile::parse(&b.bytes(), &no_limits()),
        Err(GgufError::Truncated { .. })
    ));
}

#[test]
fn element_count_overflow() {
    let b = one_tensor(&[1 << 32, 1 << 32], 0, 0, 0);
    assert!(matches!(
        parse(&b),
        Err(GgufError::ElementCountOverflow { tensor, .. }) if tensor == "t.weight"
    ));
    // Product above i64::MAX (ggml counts are int64).
    let b = one_tensor(&[1 << 62, 2], 0, 0, 0);
    assert!(matches!(
        parse(&b),
        Err(GgufError::ElementCountOverflow { .. })
    ));
    let b = one_tensor(&[u64::MAX], 0, 0, 0);
    assert!(matches!(
        parse(&b),
        Err(GgufError::DimTooLarge { index: 0, .. })
    ));
}

#[test]
fn byte_size_overflow() {
    // 2^62 f32 elements: 2^64 bytes.
    let b = one_tensor(&[1 << 62], 0, 0, 0);
    assert!(matches!(parse(&b), Err(GgufError::ByteSizeOverflow { .. })));
}

#[test]
fn unknown_tensor_types() {
    for ty in [4u32, 5, 31, 40, 1000, u32::MAX] {
        let b = one_tensor(&[32], ty, 0, 128);
        assert!(
            matches!(parse(&b), Err(GgufError::UnknownTensorType { ty: t, .. }) if t == ty),
            "type {ty}"
        );
    }
}

#[test]
fn block_misaligned_dims() {
    // Q4_1 rows must be multiples of 32; Q6_K of 256.
    let b = one_tensor(&[33, 2], 3, 0, 1024);
    match parse(&b) {
        Err(GgufError::BlockMisaligned {
            tensor,
            dim0,
            block,
            ty,
        }) => {
            assert_eq!((tensor.as_str(), dim0, block), ("t.weight", 33, 32));
            assert_eq!(ty, GgmlType::Q4_1);
        }
        r => panic!("{r:?}"),
    }
    let b = one_tensor(&[128, 2], 14, 0, 1024);
    assert!(matches!(
        parse(&b),
        Err(GgufError::BlockMisaligned { block: 256, .. })
    ));
    // dims[1] need not be a multiple.
    assert!(parse(&one_tensor(&[32, 3], 3, 0, 60)).is_ok());
}

#[test]
fn tensor_outside_file() {
    // Data runs one byte past the end.
    let b = one_tensor(&[4], 0, 0, 15);
    assert!(matches!(
        parse(&b),
        Err(GgufError::TensorOutOfBounds { tensor, .. }) if tensor == "t.weight"
    ));
    // Offset so large that start + size overflows.
    let b = one_tensor(&[4], 0, u64::MAX - 31, 16);
    assert!(matches!(
        parse(&b),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    // Exactly fitting is fine.
    assert!(parse(&one_tensor(&[4], 0, 0, 16)).is_ok());
}

#[test]
fn misaligned_offset() {
    let b = one_tensor(&[4], 0, 4, 64);
    assert!(matches!(
        parse(&b),
        Err(GgufError::MisalignedOffset {
            offset: 4,
            alignment: 32,
            ..
        })
    ));
}

#[test]
fn overlapping_tensors() {
    // "a" takes 64 bytes from 0, "b" starts at 32.
    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[16], 0, 0).tensor("b", &[16], 0, 32).pad(32);
    b.raw(&[0; 96]);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::TensorsOverlap { first, second }) if first == "a" && second == "b"
    ));
    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[8], 0, 0).tensor("b", &[4], 0, 32).pad(32);
    b.raw(&[0; 96]);
    assert!(parse(&b.bytes()).is_ok(), "adjacent, not overlapping");
    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[16], 0, 32).tensor("b", &[32], 0, 0).pad(32);
    b.raw(&[0; 128]);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::TensorsOverlap { first, second }) if first == "b" && second == "a"
    ));
}

#[test]
fn duplicate_tensor() {
    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[8], 0, 0).tensor("a", &[8], 0, 32).pad(32);
    b.raw(&[0; 64]);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::DuplicateTensor { name }) if name == "a"
    ));
}

#[test]
fn tensor_name_too_long() {
    let mut b = B::header(3, 1, 0);
    b.u64(1 << 40).raw(&[b'a'; 64]);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::StringTooLong { what, .. }) if what.contains("tensor #0")
    ));
}

#[test]
fn alignment_values() {
    for bad in [0u32, 3, 48, 1 << 20] {
        let mut b = B::header(3, 0, 1);
        b.kv_u32("general.alignment", bad);
        assert!(
            matches!(parse(&b.bytes()), Err(GgufError::BadAlignment { .. })),
            "alignment {bad}"
        );
    }
    let mut b = B::header(3, 0, 1);
    b.kv_str("general.alignment", "32");
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::WrongMetadataType { .. })
    ));
    // Alignment 64 moves the data section and constrains offsets.
    let mut b = B::header(3, 1, 1);
    b.kv_u32("general.alignment", 64)
        .tensor("t", &[4], 0, 0)
        .pad(64);
    let start = b.0.len();
    b.raw(&[0; 16]);
    let bytes = b.bytes();
    let f = parse(&bytes).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() as usize, start);
    let mut b = B::header(3, 1, 1);
    b.kv_u32("general.alignment", 64)
        .tensor("t", &[4], 0, 32)
        .pad(64);
    b.raw(&[0; 64]);
    assert!(matches!(
        parse(&b.bytes()),
        Err(GgufError::MisalignedOffset { alignment: 64, .. })
    ));
}

#[test]
fn data_section_beyond_file() {
    // Tensor infos end unaligned and the file stops there.
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[0], 0, 0);
    let bytes = b.bytes();
    assert!(!bytes.len().is_multiple_of(32));
    assert!(matches!(
        parse(&bytes),
        Err(GgufError::DataSectionOutOfBounds { .. })
    ));
}

#[test]
fn empty_file_with_no_tensors() {
    let b = B::header(3, 0, 0).bytes();
    let f = parse(&b).unwrap();
    assert!(f.tensors().is_empty());
    assert!(f.metadata().is_empty());
}

#[test]
fn import_refuses_bad_inputs_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // Not a GGUF file.
    let junk = write("junk.gguf", b"definitely not gguf");
    let out = tmp.path().join("out");
    assert!(matches!(
        cllm_gguf::import(&junk, &out),
        Err(GgufError::BadMagic { .. })
    ));

    // A valid GGUF of an unsupported architecture.
    let mut b = B::header(3, 0, 1);
    b.kv_str("general.architecture", "gpt2");
    let gpt2 = write("gpt2.gguf", &b.bytes());
    assert!(matches!(
        cllm_gguf::import(&gpt2, &out),
        Err(GgufError::UnsupportedArchitecture(a)) if a == "gpt2"
    ));

    // A llama GGUF whose tensors are missing.
    let mut b = B::header(3, 0, 9);
    b.kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.embedding_length", 4)
        .kv_u32("llama.feed_forward_length", 8)
        .kv_u32("llama.attention.head_count", 2)
        .kv_str("tokenizer.ggml.model", "gpt2");
    b.str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(3)
        .str("a")
        .str("b")
        .str("ab");
    b.str("tokenizer.ggml.merges")
        .u32(9)
        .u32(8)
        .u64(1)
        .str("a b");
    b.str("tokenizer.ggml.token_type")
        .u32(9)
        .u32(5)
        .u64(3)
        .u32(1)
        .u32(1)
        .u32(1);
    b.kv_u32("llama.vocab_size", 3);
    let llama = write("llama.gguf", &b.bytes());
    assert!(matches!(
        cllm_gguf::import(&llama, &out),
        Err(GgufError::MissingTensor(t)) if t == "token_embd.weight (model.embed_tokens.weight)"
    ));

    // Nothing was written next to the inputs.
    assert_eq!(listing(), ["gpt2.gguf", "junk.gguf", "llama.gguf"]);
}
