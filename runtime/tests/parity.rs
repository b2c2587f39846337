//! Determinism of the forward pass: KV-cache parity and thread-count invariance, bit for bit.

mod common;

use cllm_runtime::cpu::{CpuModel, KvCache};
use cllm_runtime::KvPrecision;
use common::{bits, model, Rng, FORMS};

fn cached(model: &CpuModel, tokens: &[u32], prefix: usize) -> Vec<Vec<f32>> {
    let mut s = model.session(tokens.len()).unwrap();
    let mut out = s.prefill_all(&tokens[..prefix]).unwrap();
    for &t in &tokens[prefix..] {
        out.push(s.decode(t).unwrap());
    }
    assert_eq!(s.position(), tokens.len());
    out
}

#[test]
fn cached_decode_matches_full_forward_bit_for_bit() {
    for (form, kv) in FORMS
        .into_iter()
        .flat_map(|f| KvPrecision::ALL.map(|kv| (f, kv)))
    {
        for tied in [true, false] {
            let mut m = model(tied, form, 11);
            m.set_kv_precision(kv);
            let tokens = Rng(5).tokens(20, 300);
            let full = m.forward_all(&tokens).unwrap();
            assert_eq!(full.len(), 20);
            assert!(
                full.iter().flatten().all(|v| v.is_finite()),
                "{form:?} {kv}"
            );
            for prefix in [7, 1, 20] {
                let inc = cached(&m, &tokens, prefix);
                for (p, (a, b)) in full.iter().zip(&inc).enumerate() {
                    assert_eq!(
                        bits(a),
                        bits(b),
                        "{form:?} {kv} tied={tied} prefix={prefix} position {p}"
                    );
                }
            }
            // `prefill` returns the last position's logits.
            let mut s = m.session(20).unwrap();
            let last = s.prefill(&tokens[..9]).unwrap();
            assert_eq!(bits(&last), bits(&full[8]));
            // Chunked prefill: 9 then 11.
            let rest = s.prefill_all(&tokens[9..]).unwrap();
            for (p, r) in rest.iter().enumerate() {
                assert_eq!(
                    bits(r),
                    bits(&full[9 + p]),
                    "{form:?} {kv} chunked prefill position {}",
                    9 + p
                );
            }
        }
    }
}

#[test]
fn logits_do_not_depend_on_thread_count() {
    for (form, kv) in FORMS
        .into_iter()
        .flat_map(|f| KvPrecision::ALL.map(|kv| (f, kv)))
    {
        let mut m = model(false, form, 12);
        m.set_kv_precision(kv);
        let tokens = Rng(6).tokens(20, 300);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| (m.forward_all(&tokens).unwrap(), cached(&m, &tokens, 7)))
        };
        let (full1, inc1) = run(1);
        for p in 0..tokens.len() {
            assert_eq!(
                bits(&inc1[p]),
                bits(&full1[p]),
                "{form:?} position {p} (cached, 1 thread)"
            );
        }
        for threads in [2, 3] {
            let (full, inc) = run(threads);
            for p in 0..tokens.len() {
                assert_eq!(
                    bits(&full[p]),
                    bits(&full1[p]),
                    "{form:?} threads {threads} position {p}"
                );
                assert_eq!(
                    bits(&inc[p]),
                    bits(&full1[p]),
                    "{form:?} threads {threads} position {p} (cached)"
                );
            }
        }
    }
}

#[test]
fn hidden_states_and_traces_are_consistent() {
    let m = model(true, common::Form::Bf16, 13);
    let tokens = Rng(7).tokens(6, 300);
    let (logits, hidden) = m.forward_all_hidden(&tokens).unwrap();
    assert_eq!(hidden.len(), 2);
    assert_eq!(hidden[1].len(), 6);
    assert_eq!(hidden[1][0].len(), 64);
    assert_eq!(bits(&logits[5]), bits(&m.forward_all(&tokens).unwrap()[5]));
    let mut names = Vec::new();
    m.forward_all_traced(&tokens, &mut |p| {
        assert_eq!(p.rows, 6);
        names.push(p.name.to_string());
    })
    .unwrap();
    for want in [
        "model.embed_tokens",
        "model.layers.0.input_layernorm",
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.0.self_attn.attention",
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.post_attention_layernorm",
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1",
        "model.norm",
        "lm_head",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "trace lacks {want}: {names:?}"
        );
    }
}

/// A rounded cache changes the logits, a little, and only where attention reads rounded keys
/// and values; its storage shrinks as the setting says.
#[test]
fn cache_precision_rounds_keys_and_values() {
    let mut m = model(false, FORMS[0], 13);
    let tokens = Rng(7).tokens(16, 300);
    let exact = m.forward_all(&tokens).unwrap();
    let scale = exact.iter().flatten().fold(0f32, |a, v| a.max(v.abs()));
    let mut bytes = Vec::new();
    for kv in [KvPrecision::Bf16, KvPrecision::Int8] {
        m.set_kv_precision(kv);
        let got = m.forward_all(&tokens).unwrap();
        let max_diff = exact
            .iter()
            .flatten()
            .zip(got.iter().flatten())
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(max_diff > 0.0, "{kv}: the cache's rounding changed nothing");
        assert!(
            max_diff < 0.05 * scale,
            "{kv}: {max_diff} against logits up to {scale}"
        );
        let cache = KvCache::with_precision(m.config(), 64, kv).unwrap();
        assert_eq!(cache.precision(), kv);
        bytes.push(cache.resident_bytes());
    }
    let f32_bytes = KvCache::new(m.config(), 64).unwrap().resident_bytes();
    let hd = m.config().head_dim;
    assert_eq!(bytes[0] * 2, f32_bytes);
    // int8: a byte a value and a bf16 scale per block.
    let block = cllm_runtime::kv::int8_block(hd);
    assert_eq!(bytes[1] * 4 * hd, f32_bytes * (hd + 2 * hd / block));
}
