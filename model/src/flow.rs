//! The decoder layer's data flow: the values a forward pass traces, what each projection reads,
//! and how the MLP's activation is formed. Divergence attributes error to a tensor by running it
//! on the reference's own input, so it must know that input: it asks [`Family::input`] here
//! rather than assuming Llama's layer.

use crate::family::Family;
use crate::tensors::Module;

/// An intermediate value of the forward pass, at one layer or outside the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Point {
    /// The token embeddings.
    Embeddings,
    /// A norm's output (`input_layernorm`, `post_attention_layernorm`, `model.norm`).
    Norm(Module),
    /// A projection's output, bias included (before RoPE for q and k).
    Projection(Module),
    /// The attention output, heads concatenated, before the o projection.
    Attention,
    /// The MLP's activation, `act(gate) * up`: the down projection's input. Not traced; formed
    /// from the gate and up projections' outputs with [`crate::Activation`].
    Activation,
    /// The residual stream after a decoder layer.
    LayerOutput,
    /// The logits (the LM head's output).
    Logits,
}

impl Point {
    /// What a trace or a report calls the value: a transformers module name for module outputs
    /// (`model.layers.3.self_attn.q_proj`, `model.norm`, `lm_head`), `model.layers.3` for a
    /// layer's output, `model.layers.3.self_attn.attention` for the attention output and
    /// `model.layers.3.mlp.act` for the activation. `layer` is ignored outside the layers.
    pub fn name(self, layer: usize) -> String {
        let layer_prefix = || {
            Module::InputNorm
                .hf_name(layer)
                .rsplit_once('.')
                .map(|(p, _)| p.to_string())
                .expect("a layer module's name has a layer prefix")
        };
        let block_of = |m: Module| {
            m.hf_name(layer)
                .rsplit_once('.')
                .map(|(p, _)| p.to_string())
                .expect("a projection's name has its block")
        };
        match self {
            Point::Embeddings => Module::Embed.hf_name(layer),
            Point::Norm(m) | Point::Projection(m) => m.hf_name(layer),
            Point::Attention => format!("{}.attention", block_of(Module::OProj)),
            Point::Activation => format!("{}.act", block_of(Module::DownProj)),
            Point::LayerOutput => layer_prefix(),
            Point::Logits => Module::LmHead.hf_name(layer),
        }
    }

    /// The kind of value, as reports name it (`"Projection"`).
    pub fn kind(self) -> &'static str {
        match self {
            Point::Embeddings => "Embeddings",
            Point::Norm(_) => "Norm",
            Point::Projection(_) => "Projection",
            Point::Attention => "Attention",
            Point::Activation => "Activation",
            Point::LayerOutput => "LayerOutput",
            Point::Logits => "Logits",
        }
    }
}

/// Where the MLP's activation takes its gate and up values from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationInputs {
    /// Two projections: `(gate, up)`.
    Separate(Module, Module),
    /// One fused projection whose rows are gate's then up's (`gate_up_proj`): each output row
    /// splits in halves.
    Fused(Module),
}

impl Family {
    /// The value a projection reads in this family's layer; `None` for modules that are not
    /// projections.
    pub fn input(self, module: Module) -> Option<Point> {
        Some(match module {
            Module::QProj | Module::KProj | Module::VProj | Module::QkvProj => {
                Point::Norm(Module::InputNorm)
            }
            Module::OProj => Point::Attention,
            Module::GateProj | Module::UpProj | Module::GateUpProj => Point::Norm(self.mlp_norm()),
            Module::DownProj => Point::Activation,
            Module::LmHead => Point::Norm(Module::FinalNorm),
            Module::Embed
            | Module::InputNorm
            | Module::PostAttnNorm
            | Module::FinalNorm
            | Module::QNorm
            | Module::KNorm
            | Module::PreFfnNorm
            | Module::PostFfnNorm => return None,
        })
    }

    /// The projections whose outputs form [`Point::Activation`].
    pub fn activation_inputs(self) -> ActivationInputs {
        if self.fused_projections() {
            ActivationInputs::Fused(Module::GateUpProj)
        } else {
            ActivationInputs::Separate(Module::GateProj, Module::UpProj)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_inputs_follow_the_layer() {
        let input = |m: Module| Family::Llama.input(m).unwrap().name(3);
        assert_eq!(input(Module::KProj), "model.layers.3.input_layernorm");
        assert_eq!(input(Module::OProj), "model.layers.3.self_attn.attention");
        assert_eq!(
            input(Module::UpProj),
            "model.layers.3.post_attention_layernorm"
        );
        assert_eq!(input(Module::DownProj), "model.layers.3.mlp.act");
        assert_eq!(input(Module::LmHead), "model.norm");
        assert_eq!(Family::Llama.input(Module::FinalNorm), None);
        // Gemma's MLP reads pre_feedforward_layernorm; Phi-3's fused gate_up reads the usual norm.
        assert_eq!(
            Family::Gemma3.input(Module::UpProj).unwrap().name(3),
            "model.layers.3.pre_feedforward_layernorm"
        );
        assert_eq!(
            Family::Phi3.input(Module::GateUpProj).unwrap().name(0),
            "model.layers.0.post_attention_layernorm"
        );
        assert_eq!(
            Family::Phi3.activation_inputs(),
            ActivationInputs::Fused(Module::GateUpProj)
        );
        assert_eq!(Point::LayerOutput.name(7), "model.layers.7");
        assert_eq!(Point::Logits.name(0), "lm_head");
        assert_eq!(Point::Embeddings.name(0), "model.embed_tokens");
    }
}
