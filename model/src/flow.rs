//! The decoder layer's data flow: the values a forward pass traces, what each projection reads,
//! and how the MLP's activation is formed. Divergence attributes error to a tensor by running it
//! on the reference's own input, so it must know that input: it asks [`Module::input`] here
//! rather than assuming a layer's shape.

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

impl Module {
    /// The value a projection reads; `None` for modules that are not projections.
    pub fn input(self) -> Option<Point> {
        Some(match self {
            Module::QProj | Module::KProj | Module::VProj => Point::Norm(Module::InputNorm),
            Module::OProj => Point::Attention,
            Module::GateProj | Module::UpProj => Point::Norm(Module::PostAttnNorm),
            Module::DownProj => Point::Activation,
            Module::LmHead => Point::Norm(Module::FinalNorm),
            Module::Embed | Module::InputNorm | Module::PostAttnNorm | Module::FinalNorm => {
                return None
            }
        })
    }

    /// The projections whose outputs form [`Point::Activation`]: `(gate, up)`.
    pub fn activation_inputs() -> (Module, Module) {
        (Module::GateProj, Module::UpProj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_inputs_follow_the_layer() {
        let input = |m: Module| m.input().unwrap().name(3);
        assert_eq!(input(Module::KProj), "model.layers.3.input_layernorm");
        assert_eq!(input(Module::OProj), "model.layers.3.self_attn.attention");
        assert_eq!(
            input(Module::UpProj),
            "model.layers.3.post_attention_layernorm"
        );
        assert_eq!(input(Module::DownProj), "model.layers.3.mlp.act");
        assert_eq!(input(Module::LmHead), "model.norm");
        assert_eq!(Module::FinalNorm.input(), None);
        assert_eq!(Point::LayerOutput.name(7), "model.layers.7");
        assert_eq!(Point::Logits.name(0), "lm_head");
        assert_eq!(Point::Embeddings.name(0), "model.embed_tokens");
    }
}
