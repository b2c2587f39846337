//! Building models from named tensors: errors name the tensor; sizes and cache limits.

mod common;

use cllm_kernels::{Weight, WeightData};
use cllm_model::ModelConfig;
use cllm_runtime::cpu::CpuModel;
use cllm_runtime::ModelError;
use common::{config_json, weights, Form, Rng};

fn cfg(tied: bool) -> ModelConfig {
    ModelConfig::from_json(&config_json(tied)).unwrap()
}

#[test]
fn missing_tensor_is_named() {
    for name in [
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        let mut w = weights(&cfg(false), Form::Bf16, 1);
        w.remove(name);
        let e = CpuModel::new(cfg(false), w).unwrap_err();
        assert!(
            matches!(&e, ModelError::MissingTensor(n) if n == name),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(name));
    }
}

#[test]
fn wrong_shape_and_bad_payload_are_named() {
    let mut w = weights(&cfg(false), Form::Bf16, 1);
    w.insert(
        "model.layers.0.self_attn.v_proj.weight".into(),
        Weight {
            rows: 64,
            cols: 64,
            data: WeightData::F32(vec![0.0; 64 * 64]),
        },
    );
    let e = CpuModel::new(cfg(false), w).unwrap_err();
    assert!(
        matches!(&e, ModelError::Shape { name, expected_rows: 32, expected_cols: 64, rows: 64, cols: 64 }
            if name == "model.layers.0.self_attn.v_proj.weight"),
        "{e}"
    );
    let mut w = weights(&cfg(false), Form::Int8, 1);
    if let Some(Weight {
        data: WeightData::Int8Row { scales, .. },
        ..
    }) = w.get_mut("model.layers.1.mlp.up_proj.weight")
    {
        scales.pop();
    }
    let e = CpuModel::new(cfg(false), w).unwrap_err();
    assert!(
        matches!(&e, ModelError::InvalidWeight { name, .. } if name == "model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
    let mut w = weights(&cfg(false), Form::Bf16, 1);
    w.insert(
        "model.norm.weight".into(),
        Weight {
            rows: 2,
            cols: 32,
            data: WeightData::F32(vec![1.0; 64]),
        },
    );
    assert!(matches!(
        CpuModel::new(cfg(false), w).unwrap_err(),
        ModelError::Shape { .. }
    ));
}

#[test]
fn required_biases_are_checked() {
    let json =
        config_json(false).replace(r#""hidden_act""#, r#""attention_bias": true, "hidden_act""#);
    let c = ModelConfig::from_json(&json).unwrap();
    let w = weights(&c, Form::Bf16, 1);
    let e = CpuModel::new(c, w).unwrap_err();
    assert!(
        matches!(&e, ModelError::MissingTensor(n) if n == "model.layers.0.self_attn.q_proj.bias"),
        "{e}"
    );
}

#[test]
fn tied_models_ignore_a_spare_lm_head_and_report_sizes() {
    let mut w = weights(&cfg(true), Form::Bf16, 1);
    let extra = common::matrix(&mut Rng(1), 300, 64, 0.1, Form::Bf16);
    w.insert("lm_head.weight".into(), extra);
    let expected: usize = w
        .iter()
        .filter(|(k, _)| *k != "lm_head.weight")
        .map(|(_, v)| v.resident_bytes())
        .sum();
    let m = CpuModel::new(cfg(true), w).unwrap();
    assert_eq!(m.unused_tensors(), ["lm_head.weight".to_string()]);
    assert_eq!(m.resident_bytes(), expected);
}

#[test]
fn bad_tokens_and_full_cache_are_errors() {
    let m = common::model(true, Form::Bf16, 2);
    assert!(matches!(
        m.forward_all(&[1, 300]).unwrap_err(),
        ModelError::TokenOutOfRange {
            token: 300,
            vocab_size: 300
        }
    ));
    assert!(matches!(
        m.forward_all(&[]).unwrap_err(),
        ModelError::EmptyInput
    ));
    let mut s = m.session(3).unwrap();
    s.prefill(&[1, 2]).unwrap();
    s.decode(3).unwrap();
    assert!(matches!(
        s.decode(4).unwrap_err(),
        ModelError::CacheFull {
            capacity: 3,
            position: 3,
            requested: 1
        }
    ));
    assert_eq!(s.position(), 3);
    // A failed call leaves the session usable.
    let mut s = m.session(3).unwrap();
    assert!(s.prefill(&[1, 2, 3, 4]).is_err());
    assert_eq!(s.position(), 0);
    assert!(matches!(
        m.session(129).unwrap_err(),
        ModelError::CapacityTooLarge { .. }
    ));
}
