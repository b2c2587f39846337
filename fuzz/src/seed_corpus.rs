//! Writes the seed corpus of every fuzz target into `corpus/<target>/` (each file under 64 KiB):
//! `cargo run --bin seed_corpus` from the fuzz folder. The seeds are small valid inputs; the
//! fuzzer mutates them. Deterministic: running it again rewrites the same bytes.

use std::path::Path;

use cllm_format::{
    pack, pack_sharded, Codec, Dtype, PackInput, PackOptions, Policy, Preset, Quant, Rule,
    SourceTensor,
};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    assert!(bytes.len() < 64 << 10, "{name}: {} bytes", bytes.len());
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn tensor(rng: &mut Rng, dtype: Dtype, shape: &[u64]) -> Vec<u8> {
    let n: u64 = shape.iter().product();
    let mut out = Vec::new();
    if dtype.is_float() {
        let v: Vec<f32> = (0..n).map(|_| rng.unit() * 0.2).collect();
        cllm_format::quant::from_f32(dtype, &v, &mut out);
    } else {
        out = (0..n * dtype.size() as u64)
            .map(|_| rng.next() as u8)
            .collect();
    }
    out
}

fn container(
    tensors: &[(&str, Dtype, Vec<u64>)],
    policy: Policy,
    frame_size: usize,
    seed: u64,
) -> Vec<u8> {
    let mut rng = Rng(seed);
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, d, s)| tensor(&mut rng, *d, s))
        .collect();
    let input = PackInput {
        tensors: tensors
            .iter()
            .zip(&data)
            .map(|((n, d, s), b)| SourceTensor {
                name: n.to_string(),
                dtype: *d,
                shape: s.clone(),
                bytes: b.into(),
            })
            .collect(),
        files: vec![
            (
                "config.json".into(),
                br#"{"model_type":"llama","hidden_size":64}"#.to_vec(),
            ),
            (
                "tokenizer_config.json".into(),
                br#"{"bos_token":"<s>"}"#.to_vec(),
            ),
        ],
        source_files: vec![],
    };
    let opts = PackOptions {
        policy,
        frame_size,
        ..PackOptions::default()
    };
    let mut out = Vec::new();
    pack(&input, &opts, &mut out, &mut |_| {}).expect("seed packs");
    out
}

/// The shards of a small set (format 1.2): each is a container with a set record.
fn shard_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng(5);
    let shapes: [(&str, Vec<u64>); 3] = [
        ("a.weight", vec![32, 32]),
        ("b.weight", vec![32, 32]),
        ("c.weight", vec![32, 32]),
    ];
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, s)| tensor(&mut rng, Dtype::Bf16, s))
        .collect();
    let input = PackInput {
        tensors: shapes
            .iter()
            .zip(&data)
            .map(|((n, s), b)| SourceTensor {
                name: n.to_string(),
                dtype: Dtype::Bf16,
                shape: s.clone(),
                bytes: b.into(),
            })
            .collect(),
        files: vec![(
            "config.json".into(),
            br#"{"model_type":"llama","hidden_size":32}"#.to_vec(),
        )],
        source_files: vec![],
    };
    let opts = PackOptions {
        frame_size: 1024,
        ..PackOptions::default()
    };
    let mut create = |_: u64| Ok(std::io::Cursor::new(Vec::new()));
    let shards = pack_sharded(&input, &opts, 7000, &mut create, &mut |_| {}).expect("seed packs");
    assert!(shards.len() >= 2, "the seed set has several shards");
    let names = ["shard_1_of_set", "shard_2_of_set", "shard_3_of_set"];
    shards
        .into_iter()
        .zip(names)
        .map(|((c, _), n)| (n, c.into_inner()))
        .collect()
}

fn container_seeds(dir: &Path) {
    let quantized = Policy {
        preset: Preset::MlpOnly,
        quant: Quant::Int8Group,
        rules: vec![
            Rule::parse(r"re:.*down_proj\.weight=int4-g32").unwrap(),
            Rule::parse(r"re:.*gate_proj\.weight=int4m-g32").unwrap(),
        ],
        ..Policy::default()
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "lossless_bf16",
            container(
                &[
                    ("model.embed_tokens.weight", Dtype::Bf16, vec![16, 32]),
                    ("model.norm.weight", Dtype::Bf16, vec![32]),
                ],
                Policy::default(),
                256,
                1,
            ),
        ),
        (
            "int8_int4_f32",
            container(
                &[
                    (
                        "model.layers.0.mlp.down_proj.weight",
                        Dtype::F32,
                        vec![16, 64],
                    ),
                    (
                        "model.layers.0.mlp.up_proj.weight",
                        Dtype::Bf16,
                        vec![32, 16],
                    ),
                    (
                        "model.layers.0.mlp.gate_proj.weight",
                        Dtype::Bf16,
                        vec![4, 64],
                    ),
                    ("model.norm.weight", Dtype::F32, vec![16]),
                ],
                quantized,
                512,
                2,
            ),
        ),
        (
            "raw_zstd_ints_scalars",
            container(
                &[
                    ("a.scalar", Dtype::F32, vec![]),
                    ("b.empty", Dtype::Bf16, vec![0, 4]),
                    ("c.ids", Dtype::I64, vec![12]),
                    ("d.mask", Dtype::Bool, vec![3, 3]),
                    ("e.f16", Dtype::F16, vec![4, 8]),
                ],
                Policy {
                    lossless: Codec::Raw,
                    rules: vec![Rule::parse("c.ids=zstd").unwrap()],
                    ..Policy::default()
                },
                64,
                3,
            ),
        ),
        ("no_tensors", container(&[], Policy::default(), 4096, 4)),
        (
            // Super-blocks of 8 + 2 groups per row, and an odd group count (the last sub-code
            // ends mid-byte).
            "int4s_superblocks",
            container(
                &[
                    ("model.layers.0.mlp.up_proj.weight", Dtype::Bf16, vec![6, 320]),
                    ("model.layers.0.mlp.down_proj.weight", Dtype::F16, vec![5, 96]),
                ],
                Policy {
                    rules: vec![Rule::parse(r"re:.*proj\.weight=int4s-g32").unwrap()],
                    ..Policy::default()
                },
                512,
                5,
            ),
        ),
    ];
    let mut seeds = seeds;
    seeds.extend(shard_seeds());
    for (name, bytes) in seeds {
        for mode in 0..3u8 {
            let mut b = vec![mode];
            b.extend_from_slice(&bytes);
            write(dir, &format!("{name}_mode{mode}"), &b);
        }
    }
}

// ---- GGUF

struct Gguf {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn gstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Gguf {
    fn new() -> Gguf {
        Gguf {
            kv: vec![],
            n_kv: 0,
            infos: vec![],
            n_tensors: 0,
            data: vec![],
        }
    }
    fn kv(&mut self, key: &str, ty: u32, value: &[u8]) {
        gstr(&mut self.kv, key);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.n_kv += 1;
    }
    fn kv_str(&mut self, key: &str, v: &str) {
        let mut b = vec![];
        gstr(&mut b, v);
        self.kv(key, 8, &b);
    }
    fn kv_u32(&mut self, key: &str, v: u32) {
        self.kv(key, 4, &v.to_le_bytes());
    }
    fn kv_str_array(&mut self, key: &str, items: &[&str]) {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            gstr(&mut b, s);
        }
        self.kv(key, 9, &b);
    }
    fn kv_f32_array(&mut self, key: &str, items: &[f32]) {
        let mut b = 6u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for v in items {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.kv(key, 9, &b);
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: &[u8]) {
        while self.data.len() % 32 != 0 {
            self.data.push(0);
        }
        gstr(&mut self.infos, name);
        self.infos
            .extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend_from_slice(&d.to_le_bytes());
        }
        self.infos.extend_from_slice(&ty.to_le_bytes());
        self.infos
            .extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        self.data.extend_from_slice(data);
        self.n_tensors += 1;
    }
    fn bytes(&self, version: u32) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&self.n_tensors.to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kv);
        out.extend_from_slice(&self.infos);
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend_from_slice(&self.data);
        out
    }
}

fn gguf_seeds(dir: &Path) {
    let mut rng = Rng(7);
    let mut g = Gguf::new();
    g.kv_str("general.architecture", "llama");
    g.kv_str("general.name", "seed");
    g.kv_u32("general.alignment", 32);
    g.kv_u32("llama.block_count", 1);
    g.kv_u32("llama.embedding_length", 32);
    g.kv_u32("llama.attention.head_count", 2);
    g.kv("general.flag", 7, &[1]);
    g.kv("general.big", 10, &u64::MAX.to_le_bytes());
    g.kv("general.pi", 12, &std::f64::consts::PI.to_le_bytes());
    g.kv_str("tokenizer.ggml.model", "gpt2");
    g.kv_str_array(
        "tokenizer.ggml.tokens",
        &["<s>", "</s>", "a", "b", "ab", " "],
    );
    g.kv_f32_array("tokenizer.ggml.scores", &[0.0, 0.0, -1.0, -1.0, -2.0, -3.0]);
    g.kv_str_array("tokenizer.ggml.merges", &["a b"]);
    // An array of arrays of i32: [[1, 2], [3]].
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend_from_slice(&2u64.to_le_bytes());
    for inner in [&[1i32, 2][..], &[3]] {
        nested.extend_from_slice(&5u32.to_le_bytes());
        nested.extend_from_slice(&(inner.len() as u64).to_le_bytes());
        for v in inner {
            nested.extend_from_slice(&v.to_le_bytes());
        }
    }
    g.kv("general.nested", 9, &nested);
    let f32s: Vec<u8> = (0..32).flat_map(|_| rng.unit().to_le_bytes()).collect();
    g.tensor("token_embd.weight", &[8, 4], 0, &f32s);
    let f16s: Vec<u8> = (0..16)
        .flat_map(|i| (0x3c00u16 + i).to_le_bytes())
        .collect();
    g.tensor("output_norm.weight", &[16], 1, &f16s);
    // Q8_0: one block of 32: f16 scale, 32 signed bytes.
    let mut q8 = 0x2c00u16.to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    g.tensor("blk.0.ffn_down.weight", &[32, 1], 8, &q8);
    // Q4_0: one block of 32: f16 scale, 16 bytes of nibbles.
    let mut q4 = 0x2c00u16.to_le_bytes().to_vec();
    q4.extend((0..16).map(|i| (i * 17) as u8));
    g.tensor("blk.0.ffn_up.weight", &[32], 2, &q4);
    // Q4_1: f16 scale, f16 min, 16 bytes.
    let mut q41 = 0x2c00u16.to_le_bytes().to_vec();
    q41.extend_from_slice(&0xbc00u16.to_le_bytes());
    q41.extend((0..16).map(|i| (i * 3) as u8));
    g.tensor("blk.0.attn_q.weight", &[32], 3, &q41);
    let bf16s: Vec<u8> = (0..8).flat_map(|i| (0x3f80u16 + i).to_le_bytes()).collect();
    g.tensor("blk.0.attn_norm.weight", &[8], 30, &bf16s);
    write(dir, "llama_v3", &g.bytes(3));
    write(dir, "llama_v2", &g.bytes(2));
    let empty = Gguf::new();
    write(dir, "empty_v3", &empty.bytes(3));
}

// ---- safetensors folder: [u32 config length][config.json][u32 index length][index json][safetensors]

fn safetensors(tensors: &[(&str, &str, &[u64], Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{}]}}",
            data.len()
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn folder_input(config: &str, index: &str, st: &[u8]) -> Vec<u8> {
    let mut out = (config.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(config.as_bytes());
    out.extend_from_slice(&(index.len() as u32).to_le_bytes());
    out.extend_from_slice(index.as_bytes());
    out.extend_from_slice(st);
    out
}

fn safetensors_seeds(dir: &Path) {
    let mut rng = Rng(11);
    let config = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":8,"intermediate_size":16,"num_attention_heads":2,"num_key_value_heads":1,"num_hidden_layers":1,"vocab_size":4,"rms_norm_eps":1e-5,"torch_dtype":"bfloat16","tie_word_embeddings":true}"#;
    let bf16 = |rng: &mut Rng, n: usize| -> Vec<u8> {
        let v: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let mut out = Vec::new();
        cllm_format::quant::from_f32(Dtype::Bf16, &v, &mut out);
        out
    };
    let st = safetensors(&[
        (
            "model.embed_tokens.weight",
            "BF16",
            &[4, 8],
            bf16(&mut rng, 32),
        ),
        (
            "model.layers.0.input_layernorm.weight",
            "BF16",
            &[8],
            bf16(&mut rng, 8),
        ),
        (
            "model.layers.0.mlp.down_proj.weight",
            "BF16",
            &[8, 16],
            bf16(&mut rng, 128),
        ),
        (
            "model.norm.weight",
            "F32",
            &[8],
            (0..8).flat_map(|_| rng.unit().to_le_bytes()).collect(),
        ),
        ("model.ids", "I64", &[2], (0..16).map(|i| i as u8).collect()),
    ]);
    write(dir, "single_file", &folder_input(config, "", &st));
    let index = r#"{"metadata":{"total_size":420},"weight_map":{"model.embed_tokens.weight":"model-00001-of-00001.safetensors","model.layers.0.input_layernorm.weight":"model-00001-of-00001.safetensors","model.layers.0.mlp.down_proj.weight":"model-00001-of-00001.safetensors","model.norm.weight":"model-00001-of-00001.safetensors","model.ids":"model-00001-of-00001.safetensors"}}"#;
    write(dir, "sharded", &folder_input(config, index, &st));
    write(
        dir,
        "empty_header",
        &folder_input(config, "", &safetensors(&[])),
    );
}

fn roundtrip_seeds(dir: &Path) {
    let mut rng = Rng(13);
    for (i, len) in [64usize, 256, 1024, 4096].into_iter().enumerate() {
        let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        write(dir, &format!("random_{i}"), &b);
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    container_seeds(&root.join("container"));
    gguf_seeds(&root.join("gguf"));
    safetensors_seeds(&root.join("safetensors_folder"));
    roundtrip_seeds(&root.join("roundtrip"));
    println!("seed corpus written to {}", root.display());
}
