//! Structured random small tensors (dtype, shape, values) and a random policy: pack, then open,
//! verify and decode. Packing may refuse (bad policy, NaN under quantization, ...) but must not
//! panic; what it packs must open and verify clean, lossless tensors must come back bit-exact,
//! embedded files byte-exact, and packing twice must give the same bytes.
#![no_main]

use arbitrary::Arbitrary;
use cllm_format::{
    pack, verify, Codec, Container, Dtype, Limits, PackInput, PackOptions, Policy, Preset, Quant,
    Rule, SourceTensor,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct TensorIn {
    name: u8,
    dtype: u8,
    dims: Vec<u8>,
    /// Values from small integers (always finite) rather than raw bytes (any bit pattern).
    finite: bool,
    values: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    tensors: Vec<TensorIn>,
    preset: u8,
    int4: bool,
    group_size: u8,
    lossless: u8,
    rules: Vec<(u8, u8)>,
    allow_unmatched: bool,
    frame_size: u8,
    zstd_level: i8,
    config: Vec<u8>,
}

const NAMES: [&str; 12] = [
    "mlp.down_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "input_layernorm.weight",
    "self_attn.q_proj.bias",
    "model.embed_tokens.weight",
    "lm_head.weight",
    "model.norm.weight",
];

const DTYPES: [Dtype; 16] = [
    Dtype::Bf16,
    Dtype::F16,
    Dtype::F32,
    Dtype::Bf16,
    Dtype::F16,
    Dtype::F32,
    Dtype::Bool,
    Dtype::U8,
    Dtype::I8,
    Dtype::U16,
    Dtype::I16,
    Dtype::U32,
    Dtype::I32,
    Dtype::U64,
    Dtype::I64,
    Dtype::F64,
];

const PATTERNS: [&str; 8] = [
    "*",
    "*.weight",
    "re:.*proj\\.weight",
    "re:model\\.layers\\.0\\..*",
    "lm_head.weight",
    "*norm*",
    "re:.*(gate|up)_proj.*",
    "no.such.tensor",
];

const RULE_CODECS: [&str; 13] = [
    "lossless",
    "raw",
    "zstd",
    "zstd-bp",
    "int8",
    "int4",
    "int4-g32",
    "int4-g64",
    "int4-g128",
    "int4m",
    "int4m-g32",
    "int4s",
    "int4s-g32",
];

fn name(k: u8) -> String {
    let base = NAMES[k as usize % NAMES.len()];
    if base.starts_with("model.") || base.starts_with("lm_head") {
        base.to_string()
    } else {
        format!("model.layers.{}.{base}", k as usize / NAMES.len())
    }
}

fn dim(d: u8) -> u64 {
    // Mostly small; sometimes a multiple of 32 so that int4's group sizes fit.
    if d >= 200 {
        (d - 200) as u64 * 32
    } else {
        d as u64 % 80
    }
}

fn source_bytes(t: &TensorIn, dtype: Dtype, numel: usize) -> Vec<u8> {
    let size = dtype.size();
    if t.finite && dtype.is_float() {
        let vals: Vec<f32> = (0..numel)
            .map(|i| {
                let b = t
                    .values
                    .get(i % t.values.len().max(1))
                    .copied()
                    .unwrap_or(0);
                (b as i8) as f32 / 8.0 * (1 + i % 3) as f32
            })
            .collect();
        let mut out = Vec::new();
        cllm_format::quant::from_f32(dtype, &vals, &mut out);
        out
    } else {
        (0..numel * size)
            .map(|i| {
                t.values
                    .get(i % t.values.len().max(1))
                    .copied()
                    .unwrap_or(0)
                    .wrapping_add((i / 7) as u8)
            })
            .collect()
    }
}

fuzz_target!(|input: Input| {
    let mut specs = Vec::new();
    for t in input.tensors.iter().take(6) {
        let dtype = DTYPES[t.dtype as usize % DTYPES.len()];
        let shape: Vec<u64> = t.dims.iter().take(3).map(|&d| dim(d)).collect();
        let numel: u64 = shape.iter().product();
        if numel > 1 << 13 || (frame_size_small(&input) && numel > 512) {
            continue;
        }
        let bytes = source_bytes(t, dtype, numel as usize);
        specs.push((name(t.name), dtype, shape, bytes));
    }
    let rules: Vec<Rule> = input
        .rules
        .iter()
        .take(4)
        .filter_map(|&(p, c)| {
            Rule::new(
                PATTERNS[p as usize % PATTERNS.len()],
                RULE_CODECS[c as usize % RULE_CODECS.len()],
            )
            .ok()
        })
        .collect();
    let policy = Policy {
        preset: [
            Preset::Lossless,
            Preset::MlpOnly,
            Preset::AttnOnly,
            Preset::AllLinear,
        ][input.preset as usize % 4],
        quant: if input.int4 { Quant::Int4 } else { Quant::Int8Group },
        group_size: [32, 64, 128, input.group_size as u32][input.group_size as usize % 4],
        lossless: [Codec::ZstdBp, Codec::Zstd, Codec::Raw, Codec::Int8Row]
            [input.lossless as usize % 4],
        rules,
        allow_unmatched: input.allow_unmatched,
    };
    let frame_size = [8, 256, 1000, 4096, 2 << 20, 24][input.frame_size as usize % 6];
    let mut files = vec![("config.json".to_string(), input.config.clone())];
    if input.config.len() % 2 == 1 {
        files.push(("tokenizer.json".to_string(), input.config.repeat(3)));
    }
    let pack_input = PackInput {
        tensors: specs
            .iter()
            .map(|(n, d, s, b)| SourceTensor {
                name: n.clone(),
                dtype: *d,
                shape: s.clone(),
                bytes: b.into(),
            })
            .collect(),
        files: files.clone(),
        source_files: vec![],
    };
    let opts = PackOptions {
        policy,
        frame_size,
        zstd_level: (input.zstd_level % 6) as i32,
        window_bytes: 1 << 16,
        ..PackOptions::default()
    };
    let mut out = Vec::new();
    let packed = pack(&pack_input, &opts, &mut out, &mut |_| {});
    if std::env::var_os("CLLM_FUZZ_DEBUG").is_some() {
        eprintln!(
            "pack: {}",
            match &packed {
                Ok(s) => format!("ok, {} tensors", s.index.tensors.len()),
                Err(e) => format!("refused: {e}"),
            }
        );
    }
    let Ok(summary) = packed else {
        return;
    };
    assert_eq!(summary.file_len, out.len() as u64);
    let c = Container::open(&out, &Limits::default()).expect("a packed container opens");
    let r = verify(&c, 1 << 16);
    assert!(
        r.failures.is_empty(),
        "a packed container verifies: {:?}",
        r.failures
    );
    for (i, t) in c.tensors().iter().enumerate() {
        let (_, dtype, shape, src) = specs
            .iter()
            .find(|s| s.0 == t.name)
            .expect("every tensor packed");
        assert_eq!((t.dtype, &t.shape), (*dtype, shape));
        let back = c.tensor_source_bytes(i).expect("a verified tensor decodes");
        assert_eq!(back.len(), src.len(), "{}", t.name);
        if c.codec(i).is_lossless() {
            assert!(back == *src, "{}: lossless tensor not bit-exact", t.name);
        } else {
            // Finite inputs dequantize to finite values.
            let mut orig = Vec::new();
            cllm_format::quant::to_f32(*dtype, src, &mut orig);
            let mut deq = Vec::new();
            cllm_format::quant::to_f32(*dtype, &back, &mut deq);
            let amax = orig.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (j, v) in deq.iter().enumerate() {
                assert!(
                    v.is_finite() && v.abs() <= amax * 1.01 + 1e-3,
                    "{}[{j}]: {v} from {} (max |x| {amax})",
                    t.name,
                    orig[j]
                );
            }
        }
    }
    assert_eq!(c.tensors().len(), specs.len());
    for (n, b) in &files {
        assert_eq!(
            c.read_file(n).expect("a verified file reads").as_deref(),
            Some(b.as_slice())
        );
    }
    let mut again = Vec::new();
    pack(&pack_input, &opts, &mut again, &mut |_| {}).expect("packs twice");
    assert!(again == out, "packing is not deterministic");
});

/// Frames of 8 bytes make one zstd frame per few elements: keep those tensors small.
fn frame_size_small(input: &Input) -> bool {
    input.frame_size % 6 == 0
}
