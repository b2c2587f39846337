//! `config.json` parsing: transformers v4 and v5 shapes, defaults, and errors that name the key.

use cllm_kernels::cpu::inv_freq;
use cllm_model::RopeScaling;
use cllm_model::{ConfigError, Family, ModelConfig};

/// SmolLM2-135M's config.json as transformers v4 writes it.
const SMOLLM2_V4: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
  "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
  "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null,
  "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152
}"#;

/// The same model as transformers v5 writes it.
const SMOLLM2_V5: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
  "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
  "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
  "tie_word_embeddings": true, "dtype": "bfloat16", "head_dim": 64, "vocab_size": 49152
}"#;

const LLAMA31_V4: &str = r#"{
  "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-05,
  "max_position_embeddings": 131072, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
  "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}
}"#;

const LLAMA31_V5: &str = r#"{
  "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-05,
  "max_position_embeddings": 131072, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
  "head_dim": 128, "tie_word_embeddings": false,
  "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}
}"#;

#[test]
fn smollm2_v4_and_v5_agree() {
    let a = ModelConfig::from_json(SMOLLM2_V4).unwrap();
    let b = ModelConfig::from_json(SMOLLM2_V5).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.family, Family::Llama);
    assert_eq!(
        (a.hidden_size, a.num_hidden_layers, a.num_attention_heads),
        (576, 30, 9)
    );
    assert_eq!(
        (a.num_key_value_heads, a.head_dim, a.intermediate_size),
        (3, 64, 1536)
    );
    assert_eq!((a.vocab_size, a.max_position_embeddings), (49152, 8192));
    assert_eq!(a.rope_theta, 100000.0);
    assert_eq!(a.rope_scaling, RopeScaling::None);
    assert_eq!(a.rms_norm_eps, 1e-5);
    assert!(a.tie_word_embeddings);
    assert_eq!(a.bos_token_id, Some(1));
    assert_eq!(a.eos_token_ids, vec![2]);
}

#[test]
fn llama31_v4_and_v5_agree_and_scale_frequencies() {
    let a = ModelConfig::from_json(LLAMA31_V4).unwrap();
    let b = ModelConfig::from_json(LLAMA31_V5).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.eos_token_ids, vec![128001, 128008, 128009]);
    assert_eq!(a.head_dim, 128);
    assert!(!a.tie_word_embeddings);
    let f = inv_freq(a.head_dim, a.rope_theta as f32, &a.rope_scaling).unwrap();
    // Hand-computed (see the kernels' RoPE tests): i = 30 lies in the smoothed band.
    assert!(
        (f[30] as f64 - 1.3718936e-3).abs() < 1e-6 * 1.3718936e-3,
        "{}",
        f[30]
    );
    // i = 0 is a short wavelength: unchanged; i = 63 is long: divided by 8.
    assert_eq!(f[0], 1.0);
    let f63 = 1.0 / 500000f64.powf(126.0 / 128.0) / 8.0;
    assert!((f[63] as f64 - f63).abs() < 1e-6 * f63);
}

#[test]
fn legacy_type_key_and_linear_scaling() {
    let json = SMOLLM2_V4.replace(
        r#""rope_scaling": null"#,
        r#""rope_scaling": {"type": "linear", "factor": 2.0}"#,
    );
    let c = ModelConfig::from_json(&json).unwrap();
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
}

#[test]
fn defaults_follow_transformers() {
    let json = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300}"#;
    let c = ModelConfig::from_json(json).unwrap();
    assert_eq!(c.num_key_value_heads, 4);
    assert_eq!(c.head_dim, 16);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.max_position_embeddings, 2048);
    assert!(!c.tie_word_embeddings && !c.attention_bias && !c.mlp_bias);
    assert_eq!(c.bos_token_id, None);
    assert!(c.eos_token_ids.is_empty());
}

fn err(json: &str) -> ConfigError {
    ModelConfig::from_json(json).unwrap_err()
}

#[test]
fn errors_name_the_key() {
    for key in [
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "intermediate_size",
        "num_attention_heads",
        "model_type",
    ] {
        let json = SMOLLM2_V4.replace(&format!("\"{key}\""), "\"renamed\"");
        let e = err(&json);
        assert!(
            matches!(&e, ConfigError::MissingKey(k) if k == key),
            "{key}: {e}"
        );
        assert!(e.to_string().contains(key));
    }
    let e = err(&SMOLLM2_V4.replace(r#""hidden_size": 576"#, r#""hidden_size": "576""#));
    assert!(
        matches!(&e, ConfigError::WrongType { key, .. } if key == "hidden_size"),
        "{e}"
    );
    let e = err(&LLAMA31_V4.replace(r#""low_freq_factor": 1.0,"#, ""));
    assert!(
        matches!(&e, ConfigError::MissingKey(k) if k == "rope_scaling.low_freq_factor"),
        "{e}"
    );
    let e = err(&LLAMA31_V5.replace(r#""rope_type": "llama3""#, r#""rope_type": "yarn""#));
    assert!(
        matches!(&e, ConfigError::Unsupported { key, .. } if key == "rope_parameters.rope_type"),
        "{e}"
    );
    let e = err(&SMOLLM2_V4.replace(r#""num_key_value_heads": 3"#, r#""num_key_value_heads": 4"#));
    assert!(
        matches!(&e, ConfigError::Invalid { key, .. } if key == "num_key_value_heads"),
        "{e}"
    );
    let e = err(&SMOLLM2_V4.replace(r#""model_type": "llama""#, r#""model_type": "gpt2""#));
    assert!(
        matches!(&e, ConfigError::Unsupported { key, .. } if key == "model_type"),
        "{e}"
    );
    let e = err(&SMOLLM2_V4.replace(
        r#""rope_interleaved": false"#,
        r#""rope_interleaved": true"#,
    ));
    assert!(
        matches!(&e, ConfigError::Unsupported { key, .. } if key == "rope_interleaved"),
        "{e}"
    );
    let e = err(&SMOLLM2_V4.replace(r#""eos_token_id": 2"#, r#""eos_token_id": [2, -1]"#));
    assert!(
        matches!(&e, ConfigError::WrongType { key, .. } if key == "eos_token_id"),
        "{e}"
    );
    assert!(matches!(err("[1]"), ConfigError::NotAnObject));
    assert!(matches!(err("{"), ConfigError::Json(_)));
}

/// Gemma 3 270M's config.json (transformers 4 layout), layer_types left to the pattern rule.
const GEMMA3_270M_V4: &str = r#"{
  "architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": 1,
  "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 640, "intermediate_size": 2048, "max_position_embeddings": 32768,
  "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 18,
  "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": null,
  "rope_theta": 1000000.0, "sliding_window": 512, "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16", "use_bidirectional_attention": false, "vocab_size": 262144
}"#;

#[test]
fn gemma3_local_and_global_layers_each_take_their_window_and_rope() {
    let c = ModelConfig::from_json(GEMMA3_270M_V4).unwrap();
    assert_eq!(c.family, cllm_model::Family::Gemma3);
    assert_eq!(c.activation, cllm_model::Activation::GeluTanh);
    assert!(c.tie_word_embeddings, "Gemma ties by default");
    // Every sixth layer global: 5, 11, 17.
    for l in 0..18 {
        let global = (l + 1) % 6 == 0;
        assert_eq!(c.window(l), (!global).then_some(512), "layer {l}");
        let rope = &c.ropes()[c.rope_index(l)];
        assert_eq!(rope.theta, if global { 1e6 } else { 1e4 }, "layer {l}");
    }
    assert_eq!(c.attention_scale(), (256f64).powf(-0.5) as f32);
    assert_eq!(c.embedding_scale(), Some((640f64).sqrt() as f32));
    assert_eq!(c.q_dim(), 1024);

    // The v5 layout: per-type rope_parameters and explicit layer_types give the same model.
    let mut v5: serde_json::Value = serde_json::from_str(GEMMA3_270M_V4).unwrap();
    let m = v5.as_object_mut().unwrap();
    for k in [
        "rope_theta",
        "rope_local_base_freq",
        "rope_scaling",
        "sliding_window_pattern",
    ] {
        m.remove(k);
    }
    m.insert(
        "rope_parameters".into(),
        serde_json::json!({
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
        }),
    );
    let types: Vec<&str> = (0..18)
        .map(|l| {
            if (l + 1) % 6 == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    m.insert("layer_types".into(), serde_json::json!(types));
    assert_eq!(ModelConfig::from_json(&v5.to_string()).unwrap(), c);

    // What the runtime cannot honour is refused by name.
    let e = err(&GEMMA3_270M_V4.replace(
        r#""final_logit_softcapping": null"#,
        r#""final_logit_softcapping": 30.0"#,
    ));
    assert!(e.to_string().contains("final_logit_softcapping"), "{e}");
    let e = err(&GEMMA3_270M_V4.replace(r#""gelu_pytorch_tanh""#, r#""relu""#));
    assert!(e.to_string().contains("hidden_activation"), "{e}");
}

#[test]
fn phi4_mini_partial_rotary_and_longrope() {
    let short: Vec<f64> = (0..48).map(|i| 1.0 + i as f64 * 0.01).collect();
    let long: Vec<f64> = (0..48).map(|i| 1.0 + i as f64 * 0.5).collect();
    let json = serde_json::json!({
        "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 32, "num_attention_heads": 24, "num_key_value_heads": 8,
        "vocab_size": 200064, "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096, "partial_rotary_factor": 0.75,
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": true,
        "rope_scaling": {"type": "longrope", "short_factor": short, "long_factor": long}
    });
    let c = ModelConfig::from_json(&json.to_string()).unwrap();
    assert_eq!((c.head_dim, c.rotary_dim), (128, 96));
    let cllm_model::RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings,
        attention_factor,
    } = &c.rope_scaling
    else {
        panic!("{:?}", c.rope_scaling)
    };
    assert_eq!((short_factor.len(), long_factor.len()), (48, 48));
    assert_eq!(long_factor[2], 2.0);
    assert_eq!(*original_max_position_embeddings, 4096);
    // transformers: sqrt(1 + ln(131072 / 4096) / ln(4096)).
    let want = (1.0 + (32f64).ln() / (4096f64).ln()).sqrt() as f32;
    assert_eq!(*attention_factor, want);
    // A factor list of the wrong length is named.
    let mut bad = json.clone();
    bad["rope_scaling"]["short_factor"] = serde_json::json!([1.0, 2.0]);
    let e = err(&bad.to_string());
    assert!(e.to_string().contains("rope_scaling.short_factor"), "{e}");
    // Partial rotary is refused for a family transformers does not apply it to here.
    let mut llama = json.clone();
    llama["model_type"] = "llama".into();
    llama["rope_scaling"] = serde_json::Value::Null;
    assert!(err(&llama.to_string())
        .to_string()
        .contains("partial_rotary_factor"));
}
