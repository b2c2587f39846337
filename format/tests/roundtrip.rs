//! Pack then open, verify and decode, on small tensors made here: every codec, every float dtype.

use cllm_format::{
    pack, tensor, verify, Codec, Container, Dtype, Limits, PackInput, PackOptions, Policy, Preset,
    Quant, SourceTensor,
};

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

fn model(dtype: Dtype) -> Vec<(String, Vec<u64>, Vec<u8>)> {
    vec![
        (
            "model.embed_tokens.weight".into(),
            vec![40, 64],
            encode(dtype, &values(40 * 64, 1)),
        ),
        (
            "model.layers.0.mlp.down_proj.weight".into(),
            vec![64, 128],
            encode(dtype, &values(64 * 128, 2)),
        ),
        (
            "model.layers.0.mlp.up_proj.weight".into(),
            vec![128, 64],
            encode(dtype, &values(128 * 64, 3)),
        ),
        (
            "model.layers.0.self_attn.q_proj.weight".into(),
            vec![64, 64],
            encode(dtype, &values(64 * 64, 4)),
        ),
        (
            "model.norm.weight".into(),
            vec![64],
            encode(dtype, &values(64, 5)),
        ),
    ]
}

fn pack_bytes(dtype: Dtype, policy: Policy, frame_size: usize) -> Vec<u8> {
    let m = model(dtype);
    let input = PackInput {
        tensors: m
            .iter()
            .map(|(n, s, b)| SourceTensor {
                name: n.clone(),
                dtype,
                shape: s.clone(),
                bytes: b.into(),
            })
            .collect(),
        files: vec![("config.json".into(), b"{\"model_type\":\"llama\"}".to_vec())],
        source_files: vec![],
    };
    let opts = PackOptions {
        policy,
        frame_size,
        ..PackOptions::default()
    };
    let mut out = Vec::new();
    pack(&input, &opts, &mut out, &mut |_| {}).unwrap();
    out
}

#[test]
fn lossless_round_trip_every_dtype_and_codec() {
    for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
        for lossless in [Codec::Raw, Codec::Zstd, Codec::ZstdBp] {
            let policy = Policy {
                lossless,
                ..Policy::default()
            };
            // A small frame size forces many frames per tensor.
            let bytes = pack_bytes(dtype, policy, 1024);
            let c = Container::open(&bytes, &Limits::default()).unwrap();
            let r = verify(&c, 4096);
            assert!(r.failures.is_empty(), "{:?}", r.failures);
            for (i, (name, shape, src)) in model(dtype).iter().enumerate() {
                let t = &c.tensors()[i];
                assert_eq!(&t.name, name);
                assert_eq!(&t.shape, shape);
                assert_eq!(
                    c.tensor_source_bytes(i).unwrap(),
                    *src,
                    "{name} {dtype} {lossless}"
                );
            }
            assert_eq!(
                c.read_file("config.json").unwrap().unwrap(),
                b"{\"model_type\":\"llama\"}"
            );
        }
    }
}

#[test]
fn quantized_tensors_requantize_to_the_same_payload() {
    for (quant, gs) in [
        (Quant::Int8Group, 64),
        (Quant::Int4, 32),
        (Quant::Int4, 64),
        (Quant::Int4M, 32),
        (Quant::Int4S, 32),
    ] {
        let policy = Policy {
            preset: Preset::AllLinear,
            quant,
            group_size: gs,
            ..Policy::default()
        };
        let bytes = pack_bytes(Dtype::Bf16, policy, 1000);
        let c = Container::open(&bytes, &Limits::default()).unwrap();
        assert!(verify(&c, 1 << 20).failures.is_empty());
        for (i, (name, shape, src)) in model(Dtype::Bf16).iter().enumerate() {
            let codec = c.codec(i);
            if codec.is_lossless() {
                assert!(!name.contains("proj"), "{name} should be quantized");
                continue;
            }
            let params = tensor::quant_params(name, codec, Dtype::Bf16, shape, None, src).unwrap();
            let stored = c.decode_tensor(i).unwrap();
            for (si, s) in stored.iter().enumerate() {
                let again = tensor::stream_range(Dtype::Bf16, shape, &params, src, si, 0..s.len());
                assert_eq!(&again, s, "{name} stream {si}");
            }
            // Error is bounded: int8 ~ 1/254 of the row max, int4 ~ 1/30 of the group range.
            let deq = tensor::dequantize(codec, shape, &stored);
            let mut orig = Vec::new();
            cllm_format::quant::to_f32(Dtype::Bf16, src, &mut orig);
            let max_err = deq
                .iter()
                .zip(&orig)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let bound = if quant == Quant::Int8Group {
                0.02 / 127.0
            } else {
                0.04 / 15.0
            };
            if !matches!(quant, Quant::Int4M | Quant::Int4S) {
                assert!(max_err <= bound * 0.6, "{name}: {max_err} > {bound}");
                continue;
            }
            // int4m may clip a group's extremes; its squared error is at most int4's, group by
            // group, so also over the tensor. int4s rounds int4m's parameters to 6-bit codes: its
            // error stays near int4m's.
            let sse = |deq: &[f32]| -> f64 {
                deq.iter()
                    .zip(&orig)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum()
            };
            let plain = cllm_format::codec::Codec::int4(gs);
            let p4 = tensor::quant_params(name, plain, Dtype::Bf16, shape, None, src).unwrap();
            let streams: Vec<Vec<u8>> = (0..3)
                .map(|si| {
                    let len = plain.streams(name, Dtype::Bf16, shape).unwrap()[si].len as usize;
                    tensor::stream_range(Dtype::Bf16, shape, &p4, src, si, 0..len)
                })
                .collect();
            let (e_m, e_4) = (sse(&deq), sse(&tensor::dequantize(plain, shape, &streams)));
            match quant {
                Quant::Int4M => assert!(e_m < e_4, "{name}: int4m {e_m} >= int4 {e_4}"),
                _ => assert!(e_m < 1.25 * e_4, "{name}: int4s {e_m} vs int4 {e_4}"),
            }
        }
    }
}

#[test]
fn output_is_identical_across_thread_counts() {
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                pack_bytes(
                    Dtype::Bf16,
                    Policy {
                        preset: Preset::MlpOnly,
                        ..Policy::default()
                    },
                    512,
                )
            })
    };
    let a = run(1);
    assert_eq!(a, run(2));
    assert_eq!(a, run(4));
}

/// Packing computes each frame's quantization parameters from only the groups it touches (and
/// keeps them for the scale frames within a budget); every window of every stream must equal the
/// whole-tensor computation, for windows that start and end inside rows and groups.
#[test]
fn windowed_parameters_reproduce_the_whole_tensor() {
    use cllm_format::codec::Codec;
    use cllm_format::SourceBytes;
    // 7 x 96 (int8-row rows straddle windows; int8g and int4 groups of 32 tile rows), 5 x 100
    // (rows of a width no window size divides) and 3 x 128 (groups of 64).
    let mut seed = 7u64;
    let mut value = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        half::bf16::from_f32(((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5)
    };
    for (shape, codecs) in [
        (
            vec![7u64, 96],
            vec![
                Codec::Int8Row,
                Codec::Int8Group { group_size: 32 },
                Codec::int4(32),
                Codec::Int4 {
                    group_size: 32,
                    fit: cllm_format::Int4Fit::MinError,
                },
            ],
        ),
        (vec![5u64, 100], vec![Codec::Int8Row]),
        (
            vec![3u64, 128],
            vec![Codec::Int8Group { group_size: 64 }, Codec::int4(64)],
        ),
        // int4s: one short super-block per row, an odd number of groups (the last sub-code
        // ends mid-byte), and rows of 8 + 8 + 4 and 8 + 2 groups.
        (vec![5u64, 96], vec![Codec::Int4S { group_size: 32 }]),
        (
            vec![3u64, 640],
            vec![
                Codec::Int4S { group_size: 32 },
                Codec::Int4S { group_size: 64 },
            ],
        ),
    ] {
        let n = (shape[0] * shape[1]) as usize;
        let src: Vec<u8> = (0..n)
            .flat_map(|_| value().to_bits().to_le_bytes())
            .collect();
        // Searched fits also run weighted by an importance vector (spec section 4.7).
        let weights: Vec<f32> = (0..shape[1]).map(|j| (j % 7) as f32 * 0.5).collect();
        let runs = codecs.iter().flat_map(|&c| {
            let weighted = c.is_searched().then_some((c, Some(weights.as_slice())));
            [(c, None)].into_iter().chain(weighted)
        });
        for (codec, importance) in runs {
            let whole =
                tensor::quant_params("t", codec, Dtype::Bf16, &shape, importance, &src).unwrap();
            let specs = codec.streams("t", Dtype::Bf16, &shape).unwrap();
            let memo = tensor::ParamsMemo::new(codec, &shape, 1 << 20);
            let no_memo = tensor::ParamsMemo::new(codec, &shape, 0);
            for (si, spec) in specs.iter().enumerate() {
                let len = spec.len as usize;
                let expect = tensor::stream_range(Dtype::Bf16, &shape, &whole, &src, si, 0..len);
                for window in [1usize, 3, 10, 50, 64, len.max(1)] {
                    let mut got = Vec::new();
                    let mut at = 0;
                    while at < len {
                        let range = at..(at + window).min(len);
                        let groups = tensor::param_groups(codec, &shape, si, &range);
                        let sb = SourceBytes::Slice(&src);
                        let params = if si == 0 {
                            let p = tensor::quant_params_for(
                                "t",
                                codec,
                                Dtype::Bf16,
                                &shape,
                                importance,
                                &sb,
                                groups.clone(),
                            )
                            .unwrap();
                            memo.record(&p);
                            p
                        } else {
                            assert!(no_memo.get(&groups).is_none());
                            memo.get(&groups).expect("kept by the data frames")
                        };
                        let from = tensor::source_range(codec, Dtype::Bf16, si, &range);
                        let part = from.map_or(&[][..], |r| &src[r]);
                        got.extend(tensor::stream_range_from(
                            Dtype::Bf16,
                            &shape,
                            &params,
                            part,
                            si,
                            range.clone(),
                        ));
                        at = range.end;
                    }
                    assert_eq!(
                        got,
                        expect,
                        "{codec} {shape:?} weighted {} stream {si} window {window}",
                        importance.is_some()
                    );
                }
            }
        }
    }
}
