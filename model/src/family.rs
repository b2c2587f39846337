//! The model families, and what sets each apart inside the shared decoder layer.
//!
//! Every family here is a pre-norm decoder of the Llama shape: RMSNorm, q/k/v projections, RoPE,
//! grouped-query attention, o projection and residual; RMSNorm, gate and up projections, an
//! activation, down projection and residual. A family is its names (`model_type`, the
//! transformers class, the GGUF `general.architecture`) plus the variant flags the config mapping
//! ([`crate::config`]) sets from them: which projections carry biases, the attention window of
//! each layer, the activation. A family that needs a flag the backends do not have yet adds it here
//! first (docs/ADDING_A_MODEL.md).

/// A model family: how transformers and llama.cpp name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Llama 2 and 3 (incl. `rope_scaling` llama3), SmolLM2, TinyLlama.
    Llama,
    /// Llama plus an optional sliding attention window on every layer.
    Mistral,
    /// Llama with biases on the q, k and v projections.
    Qwen2,
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

const FAMILIES: [FamilyNames; 3] = [
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
}

/// The MLP's gated activation: `act(gate) * up` is the down projection's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `hidden_act` "silu": SwiGLU, `silu(gate) * up`.
    Silu,
}

impl Activation {
    /// The activation of a `hidden_act` value.
    pub fn from_hidden_act(name: &str) -> Option<Activation> {
        match name {
            "silu" => Some(Activation::Silu),
            _ => None,
        }
    }

    pub fn hidden_act(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
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
        assert_eq!(Family::from_model_type("gemma3"), None);
        assert_eq!(Family::supported_model_types(), "llama, mistral, qwen2");
    }
}
