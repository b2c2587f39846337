//! The model families, and what sets each apart inside the shared decoder layer.
//!
//! Every family here is a pre-norm decoder of the Llama shape: RMSNorm, q/k/v projections, RoPE,
//! grouped-query attention, o projection and residual; RMSNorm, gate and up projections, an
//! activation, down projection and residual. A family is its names (`model_type`, the
//! transformers class, the GGUF `general.architecture`) plus the variant flags that set it apart
//! inside that layer: which projections carry biases, whether q and k are normalized per head,
//! whether the attention and MLP outputs are normalized before the residual (Gemma's four norms),
//! whether norm weights act as `1 + w`, fused projections, a scaled embedding. The config mapping
//! ([`crate::config`]) adds what the config sets (windows, RoPE, activation). A family that needs
//! a flag the backends do not have yet adds it here first (docs/ADDING_A_MODEL.md).

use crate::tensors::Module;

/// A model family: how transformers and llama.cpp name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Llama 2 and 3 (incl. `rope_scaling` llama3), SmolLM2, TinyLlama.
    Llama,
    /// Llama plus an optional sliding attention window on every layer.
    Mistral,
    /// Llama with biases on the q, k and v projections.
    Qwen2,
    /// Llama with per-head RMSNorm on q and k before RoPE (`q_norm`, `k_norm`).
    Qwen3,
    /// Gemma 3 (text): `1 + w` norms, q/k norms, norms around attention and MLP (four per
    /// layer), a scaled embedding, GeGLU, local and global layers with their own RoPE.
    Gemma3,
    /// Phi-3 / Phi-3.5 / Phi-4-mini: fused `qkv_proj` and `gate_up_proj`, partial rotary,
    /// `longrope`.
    Phi3,
}

struct FamilyNames {
    family: Family,
    /// `model_type` in `config.json`.
    model_type: &'static str,
    /// `architectures[0]` in `config.json`: the transformers class.
    class: &'static str,
    /// `general.architecture` in a GGUF file, and the prefix of its hyper-parameter keys.
    gguf: &'static str,
}

const FAMILIES: [FamilyNames; 6] = [
    FamilyNames {
        family: Family::Llama,
        model_type: "llama",
        class: "LlamaForCausalLM",
        gguf: "llama",
    },
    FamilyNames {
        family: Family::Mistral,
        model_type: "mistral",
        class: "MistralForCausalLM",
        gguf: "mistral",
    },
    FamilyNames {
        family: Family::Qwen2,
        model_type: "qwen2",
        class: "Qwen2ForCausalLM",
        gguf: "qwen2",
    },
    FamilyNames {
        family: Family::Qwen3,
        model_type: "qwen3",
        class: "Qwen3ForCausalLM",
        gguf: "qwen3",
    },
    FamilyNames {
        family: Family::Gemma3,
        model_type: "gemma3_text",
        class: "Gemma3ForCausalLM",
        gguf: "gemma3",
    },
    FamilyNames {
        family: Family::Phi3,
        model_type: "phi3",
        class: "Phi3ForCausalLM",
        gguf: "phi3",
    },
];

impl Family {
    /// Every family, in the order error messages list them.
    pub fn all() -> impl Iterator<Item = Family> {
        FAMILIES.iter().map(|f| f.family)
    }

    fn names(self) -> &'static FamilyNames {
        FAMILIES
            .iter()
            .find(|f| f.family == self)
            .expect("every family has names")
    }

    /// The family of a `config.json` `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|f| f.model_type == model_type)
            .map(|f| f.family)
    }

    /// The family of a GGUF `general.architecture`.
    pub fn from_gguf(arch: &str) -> Option<Family> {
        FAMILIES.iter().find(|f| f.gguf == arch).map(|f| f.family)
    }

    pub fn model_type(self) -> &'static str {
        self.names().model_type
    }

    /// The transformers class (`architectures` in `config.json`).
    pub fn class(self) -> &'static str {
        self.names().class
    }

    /// The GGUF `general.architecture`.
    pub fn gguf(self) -> &'static str {
        self.names().gguf
    }

    /// The `model_type`s cllm runs, for error messages: "llama, mistral, qwen2".
    pub fn supported_model_types() -> String {
        FAMILIES
            .iter()
            .map(|f| f.model_type)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The GGUF architectures the importer takes, for error messages.
    pub fn supported_gguf() -> String {
        FAMILIES
            .iter()
            .map(|f| f.gguf)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether llama.cpp stores this family's q and k rows permuted for its interleaved RoPE
    /// (its converter does so for the families it runs with `LLAMA_ROPE_TYPE_NORM`); the GGUF
    /// importer undoes it.
    pub fn gguf_permutes_qk(self) -> bool {
        matches!(self, Family::Llama | Family::Mistral)
    }

    /// Whether q, k and v carry biases whatever `attention_bias` says.
    pub(crate) fn qkv_bias(self) -> bool {
        self == Family::Qwen2
    }

    /// Whether q and k are RMS-normalized per head (`q_norm`, `k_norm`) before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Gemma3)
    }

    /// Whether the attention and MLP outputs are normalized before they join the residual
    /// (`post_attention_layernorm` on the attention output, `pre_feedforward_layernorm` as the
    /// MLP's input norm, `post_feedforward_layernorm` on its output).
    pub fn sandwich_norms(self) -> bool {
        self == Family::Gemma3
    }

    /// Whether RMSNorm weights act as `1 + w` (transformers adds one in float32 before the
    /// product); llama.cpp's converter stores them with the one already added.
    pub fn norm_weight_offset(self) -> bool {
        self == Family::Gemma3
    }

    /// Whether the embeddings are multiplied by `sqrt(hidden_size)` (rounded to float32, as
    /// transformers' `torch.tensor(hidden_size ** 0.5)` is).
    pub fn scaled_embedding(self) -> bool {
        self == Family::Gemma3
    }

    /// Whether q, k and v are one fused projection (`qkv_proj`), and gate and up another
    /// (`gate_up_proj`).
    pub fn fused_projections(self) -> bool {
        self == Family::Phi3
    }

    /// A decoder layer's modules, in `state_dict` order.
    pub fn layer_modules(self) -> Vec<Module> {
        let mut m = Vec::with_capacity(13);
        if self.fused_projections() {
            m.extend([Module::QkvProj, Module::OProj]);
        } else {
            m.extend([Module::QProj, Module::KProj, Module::VProj, Module::OProj]);
        }
        if self.qk_norm() {
            m.extend([Module::QNorm, Module::KNorm]);
        }
        if self.fused_projections() {
            m.extend([Module::GateUpProj, Module::DownProj]);
        } else {
            m.extend([Module::GateProj, Module::UpProj, Module::DownProj]);
        }
        m.extend([Module::InputNorm, Module::PostAttnNorm]);
        if self.sandwich_norms() {
            m.extend([Module::PreFfnNorm, Module::PostFfnNorm]);
        }
        m
    }

    /// The module whose output is the MLP's input norm: `post_attention_layernorm` in Llama's
    /// layer, `pre_feedforward_layernorm` where the attention output has its own norm.
    pub fn mlp_norm(self) -> Module {
        if self.sandwich_norms() {
            Module::PreFfnNorm
        } else {
            Module::PostAttnNorm
        }
    }
}

/// The MLP's gated activation: `act(gate) * up` is the down projection's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `hidden_act` "silu": SwiGLU, `silu(gate) * up`.
    Silu,
    /// `gelu_pytorch_tanh` (Gemma's GeGLU): the tanh approximation of GELU, `gelu(gate) * up`.
    GeluTanh,
}

impl Activation {
    /// The activation of a `hidden_act` value.
    pub fn from_hidden_act(name: &str) -> Option<Activation> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            // transformers' NewGELUActivation is the same tanh formula.
            "gelu_pytorch_tanh" | "gelu_new" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    pub fn hidden_act(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Family::all() {
            assert_eq!(Family::from_model_type(f.model_type()), Some(f));
            assert_eq!(Family::from_gguf(f.gguf()), Some(f));
            assert!(f.class().ends_with("ForCausalLM"));
        }
        assert_eq!(Family::from_model_type("gemma2"), None);
        assert_eq!(
            Family::supported_model_types(),
            "llama, mistral, qwen2, qwen3, gemma3_text, phi3"
        );
        // Every family's layer has its attention, its MLP and the input norm.
        for f in Family::all() {
            let m = f.layer_modules();
            assert!(m.contains(&Module::OProj) && m.contains(&Module::DownProj));
            assert!(m.contains(&Module::InputNorm) && m.contains(&f.mlp_norm()));
        }
    }
}
