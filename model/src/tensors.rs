//! Every tensor of a model: what it is ([`TensorId`]), its Hugging Face and GGUF names, its shape,
//! and its [`Role`]. This table is the one place tensor names are written outside tests; loaders,
//! models, reports, the GGUF importer, the packing presets and the fixtures all ask it.

use crate::config::ModelConfig;
use crate::family::Family;

/// A module of the model: a weight and, where the family has one, a bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    Embed,
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
    InputNorm,
    PostAttnNorm,
    FinalNorm,
    LmHead,
    /// Per-head RMSNorm of the queries (Qwen3, Gemma 3).
    QNorm,
    /// Per-head RMSNorm of the keys.
    KNorm,
    /// The MLP's input norm where `post_attention_layernorm` normalizes the attention output
    /// (Gemma 3).
    PreFfnNorm,
    /// The norm of the MLP's output before the residual (Gemma 3).
    PostFfnNorm,
    /// q, k and v as one projection, rows in that order (Phi-3).
    QkvProj,
    /// gate and up as one projection, gate's rows first (Phi-3).
    GateUpProj,
}

/// A module's weight or its bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Weight,
    Bias,
}

impl Part {
    fn suffix(self) -> &'static str {
        match self {
            Part::Weight => "weight",
            Part::Bias => "bias",
        }
    }

    fn parse(s: &str) -> Option<Part> {
        match s {
            "weight" => Some(Part::Weight),
            "bias" => Some(Part::Bias),
            _ => None,
        }
    }
}

/// What a module does, for the packing presets and the reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The token embeddings.
    Embedding,
    /// An RMSNorm's weight.
    Norm,
    /// A projection of the attention block (q, k, v, o).
    Attention,
    /// A projection of the MLP block (gate, up, down).
    Mlp,
    /// The LM head (logits from the last hidden state).
    Head,
}

/// llama.cpp stores the q and k rows of each head interleaved for its RoPE; the GGUF importer
/// undoes it with the query's or the key's head count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeRows {
    Query,
    Key,
}

/// A dimension of the config.
#[derive(Clone, Copy, Debug)]
enum Dim {
    Hidden,
    Intermediate,
    /// Query heads times head_dim.
    Q,
    /// Key (or value) heads times head_dim.
    Kv,
    /// One head.
    Head,
    /// q, k and v together.
    Qkv,
    /// Gate and up together.
    Intermediate2,
    Vocab,
}

impl Dim {
    fn of(self, cfg: &ModelConfig) -> usize {
        match self {
            Dim::Hidden => cfg.hidden_size,
            Dim::Intermediate => cfg.intermediate_size,
            Dim::Q => cfg.q_dim(),
            Dim::Kv => cfg.kv_dim(),
            Dim::Head => cfg.head_dim,
            Dim::Qkv => cfg.q_dim() + 2 * cfg.kv_dim(),
            Dim::Intermediate2 => 2 * cfg.intermediate_size,
            Dim::Vocab => cfg.vocab_size,
        }
    }
}

/// A weight's shape: `[out, in]` for a matrix, `[len]` for a vector.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Matrix(Dim, Dim),
    Vector(Dim),
}

struct Def {
    module: Module,
    /// The transformers name: relative to `model.layers.{l}` for a layer's modules, whole
    /// otherwise.
    hf: &'static str,
    /// The llama.cpp name: relative to `blk.{l}` for a layer's modules, whole otherwise.
    gguf: &'static str,
    in_layer: bool,
    role: Role,
    shape: Shape,
    gguf_rows: Option<RopeRows>,
}

/// The table, in `state_dict` order (the order fixtures write a model in).
const DEFS: [Def; 18] = [
    Def {
        module: Module::Embed,
        hf: "model.embed_tokens",
        gguf: "token_embd",
        in_layer: false,
        role: Role::Embedding,
        shape: Shape::Matrix(Dim::Vocab, Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::QProj,
        hf: "self_attn.q_proj",
        gguf: "attn_q",
        in_layer: true,
        role: Role::Attention,
        shape: Shape::Matrix(Dim::Q, Dim::Hidden),
        gguf_rows: Some(RopeRows::Query),
    },
    Def {
        module: Module::KProj,
        hf: "self_attn.k_proj",
        gguf: "attn_k",
        in_layer: true,
        role: Role::Attention,
        shape: Shape::Matrix(Dim::Kv, Dim::Hidden),
        gguf_rows: Some(RopeRows::Key),
    },
    Def {
        module: Module::VProj,
        hf: "self_attn.v_proj",
        gguf: "attn_v",
        in_layer: true,
        role: Role::Attention,
        shape: Shape::Matrix(Dim::Kv, Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::OProj,
        hf: "self_attn.o_proj",
        gguf: "attn_output",
        in_layer: true,
        role: Role::Attention,
        shape: Shape::Matrix(Dim::Hidden, Dim::Q),
        gguf_rows: None,
    },
    Def {
        module: Module::GateProj,
        hf: "mlp.gate_proj",
        gguf: "ffn_gate",
        in_layer: true,
        role: Role::Mlp,
        shape: Shape::Matrix(Dim::Intermediate, Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::UpProj,
        hf: "mlp.up_proj",
        gguf: "ffn_up",
        in_layer: true,
        role: Role::Mlp,
        shape: Shape::Matrix(Dim::Intermediate, Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::DownProj,
        hf: "mlp.down_proj",
        gguf: "ffn_down",
        in_layer: true,
        role: Role::Mlp,
        shape: Shape::Matrix(Dim::Hidden, Dim::Intermediate),
        gguf_rows: None,
    },
    Def {
        module: Module::InputNorm,
        hf: "input_layernorm",
        gguf: "attn_norm",
        in_layer: true,
        role: Role::Norm,
        shape: Shape::Vector(Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::PostAttnNorm,
        hf: "post_attention_layernorm",
        gguf: "ffn_norm",
        in_layer: true,
        role: Role::Norm,
        shape: Shape::Vector(Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::FinalNorm,
        hf: "model.norm",
        gguf: "output_norm",
        in_layer: false,
        role: Role::Norm,
        shape: Shape::Vector(Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::LmHead,
        hf: "lm_head",
        gguf: "output",
        in_layer: false,
        role: Role::Head,
        shape: Shape::Matrix(Dim::Vocab, Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::QNorm,
        hf: "self_attn.q_norm",
        gguf: "attn_q_norm",
        in_layer: true,
        role: Role::Norm,
        shape: Shape::Vector(Dim::Head),
        gguf_rows: None,
    },
    Def {
        module: Module::KNorm,
        hf: "self_attn.k_norm",
        gguf: "attn_k_norm",
        in_layer: true,
        role: Role::Norm,
        shape: Shape::Vector(Dim::Head),
        gguf_rows: None,
    },
    Def {
        module: Module::PreFfnNorm,
        hf: "pre_feedforward_layernorm",
        gguf: "ffn_norm",
        in_layer: true,
        role: Role::Norm,
        shape: Shape::Vector(Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::PostFfnNorm,
        hf: "post_feedforward_layernorm",
        gguf: "post_ffw_norm",
        in_layer: true,
        role: Role::Norm,
        shape: Shape::Vector(Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::QkvProj,
        hf: "self_attn.qkv_proj",
        gguf: "attn_qkv",
        in_layer: true,
        role: Role::Attention,
        shape: Shape::Matrix(Dim::Qkv, Dim::Hidden),
        gguf_rows: None,
    },
    Def {
        module: Module::GateUpProj,
        hf: "mlp.gate_up_proj",
        gguf: "ffn_up",
        in_layer: true,
        role: Role::Mlp,
        shape: Shape::Matrix(Dim::Intermediate2, Dim::Hidden),
        gguf_rows: None,
    },
];

/// llama.cpp names that depend on the family: where the attention output has its own norm
/// (Gemma), `post_attention_layernorm` is `post_attention_norm` and `ffn_norm` is the MLP's
/// input norm.
fn gguf_rel(def: &Def, family: Family) -> &'static str {
    if family.sandwich_norms() && def.module == Module::PostAttnNorm {
        "post_attention_norm"
    } else {
        def.gguf
    }
}

/// The modules `family` has: its layer's and the model's own.
fn family_has(family: Family, module: Module) -> bool {
    !module.in_layer() || family.layer_modules().contains(&module)
}

/// The prefix of a decoder layer's modules in transformers' names.
const HF_LAYERS: &str = "model.layers.";
/// The same in llama.cpp's names.
const GGUF_LAYERS: &str = "blk.";

impl Module {
    fn def(self) -> &'static Def {
        DEFS.iter()
            .find(|d| d.module == self)
            .expect("every module is in the table")
    }

    pub fn role(self) -> Role {
        self.def().role
    }

    /// Whether the module belongs to each decoder layer.
    pub fn in_layer(self) -> bool {
        self.def().in_layer
    }

    /// A projection: a matrix applied to an input that [`Module::input`] names (the LM head too).
    pub fn is_projection(self) -> bool {
        matches!(self.role(), Role::Attention | Role::Mlp | Role::Head)
    }

    /// How llama.cpp permuted this weight's rows, if it did.
    pub fn gguf_rows(self) -> Option<RopeRows> {
        self.def().gguf_rows
    }

    /// The module's transformers name (`model.layers.3.self_attn.q_proj`, `model.norm`): what
    /// traces and reports call its output. `layer` is ignored for a module outside the layers.
    pub fn hf_name(self, layer: usize) -> String {
        let d = self.def();
        if d.in_layer {
            format!("{HF_LAYERS}{layer}.{}", d.hf)
        } else {
            d.hf.to_string()
        }
    }

    /// The weight's `rows x cols` in the runtime's row-major view (a vector is one row).
    pub fn rows_cols(self, cfg: &ModelConfig) -> (usize, usize) {
        match self.def().shape {
            Shape::Matrix(out, inp) => (out.of(cfg), inp.of(cfg)),
            Shape::Vector(len) => (1, len.of(cfg)),
        }
    }

    /// The shape of the module's weight or bias as a checkpoint stores it.
    pub fn shape(self, cfg: &ModelConfig, part: Part) -> Vec<u64> {
        match (self.def().shape, part) {
            (Shape::Matrix(out, inp), Part::Weight) => vec![out.of(cfg) as u64, inp.of(cfg) as u64],
            (Shape::Matrix(out, _), Part::Bias) | (Shape::Vector(out), _) => {
                vec![out.of(cfg) as u64]
            }
        }
    }

    /// Whether the module can have a bias at all (the projections of a layer).
    fn may_have_bias(self) -> bool {
        matches!(self.role(), Role::Attention | Role::Mlp)
    }
}

/// One tensor: a module's weight or bias, of a decoder layer or of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId {
    pub module: Module,
    /// The decoder layer; `None` for the embeddings, the final norm and the LM head.
    pub layer: Option<usize>,
    pub part: Part,
}

impl TensorId {
    /// The weight of `module` (of layer `layer` for a layer's module).
    pub fn weight(module: Module, layer: Option<usize>) -> TensorId {
        TensorId {
            module,
            layer: layer.filter(|_| module.in_layer()),
            part: Part::Weight,
        }
    }

    pub fn bias(module: Module, layer: Option<usize>) -> TensorId {
        TensorId {
            part: Part::Bias,
            ..TensorId::weight(module, layer)
        }
    }

    /// `model.layers.3.self_attn.q_proj.weight`.
    pub fn hf_name(&self) -> String {
        format!(
            "{}.{}",
            self.module.hf_name(self.layer.unwrap_or(0)),
            self.part.suffix()
        )
    }

    /// `blk.3.attn_q.weight` (llama.cpp's names depend on the family: see `gguf_rel`).
    pub fn gguf_name(&self, family: Family) -> String {
        let d = self.module.def();
        let rel = gguf_rel(d, family);
        match self.layer {
            Some(l) if d.in_layer => format!("{GGUF_LAYERS}{l}.{rel}.{}", self.part.suffix()),
            _ => format!("{rel}.{}", self.part.suffix()),
        }
    }

    /// The tensor a transformers name denotes, if it is one of the table's (transformers'
    /// names are the same in every family).
    pub fn parse_hf(name: &str) -> Option<TensorId> {
        TensorId::parse(name, HF_LAYERS, |d| Some(d.hf))
    }

    /// The tensor a llama.cpp name denotes in a model of `family`, if it is one of the table's.
    pub fn parse_gguf(name: &str, family: Family) -> Option<TensorId> {
        TensorId::parse(name, GGUF_LAYERS, |d| {
            family_has(family, d.module).then(|| gguf_rel(d, family))
        })
    }

    /// `name` in one naming convention: layer modules under `layers` (`model.layers.`), each
    /// module's name as `name_of` gives it (`None`: not a module of this convention).
    fn parse(
        name: &str,
        layers: &str,
        name_of: impl Fn(&Def) -> Option<&'static str>,
    ) -> Option<TensorId> {
        let (module, part) = name.rsplit_once('.')?;
        let part = Part::parse(part)?;
        let (layer, rel) = match module.strip_prefix(layers) {
            Some(rest) => {
                let (layer, rel) = rest.split_once('.')?;
                (Some(canonical_index(layer)?), rel)
            }
            None => (None, module),
        };
        let def = DEFS
            .iter()
            .find(|d| d.in_layer == layer.is_some() && name_of(d) == Some(rel))?;
        let id = TensorId {
            module: def.module,
            layer,
            part,
        };
        (part == Part::Weight || id.module.may_have_bias()).then_some(id)
    }

    /// The module a tensor name belongs to, for names of the table's form and for any other
    /// checkpoint whose projections end in the same module names (`...mlp.up_proj.weight`): what
    /// the packing presets select by.
    pub fn classify(name: &str) -> Option<TensorId> {
        if let Some(id) = TensorId::parse_hf(name) {
            return Some(id);
        }
        let (module, part) = name.rsplit_once('.')?;
        let part = Part::parse(part)?;
        let leaf = module.rsplit('.').next()?;
        let def = DEFS.iter().find(|d| {
            d.in_layer && d.module.may_have_bias() && d.hf.rsplit('.').next() == Some(leaf)
        })?;
        Some(TensorId {
            module: def.module,
            layer: None,
            part,
        })
    }
}

/// A layer index as written in names: digits without a leading zero ("01" and "+1" are not).
fn canonical_index(s: &str) -> Option<usize> {
    let n: usize = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

/// A tensor of a model: what it is, its transformers name and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub id: TensorId,
    pub name: String,
    pub shape: Vec<u64>,
}

impl ModelConfig {
    /// Whether the config gives `module` a bias.
    pub fn has_bias(&self, module: Module) -> bool {
        match module.role() {
            Role::Attention => self.attention_bias || (self.qkv_bias && module != Module::OProj),
            Role::Mlp => self.mlp_bias,
            _ => false,
        }
    }

    /// Every tensor the model has, in `state_dict` order (each bias after its weight); without
    /// `lm_head.weight` when the embeddings are tied.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let spec = |id: TensorId| TensorSpec {
            id,
            name: id.hf_name(),
            shape: id.module.shape(self, id.part),
        };
        let module = |m: Module, layer: Option<usize>, out: &mut Vec<TensorSpec>| {
            out.push(spec(TensorId::weight(m, layer)));
            if self.has_bias(m) {
                out.push(spec(TensorId::bias(m, layer)));
            }
        };
        let mut out = Vec::new();
        module(Module::Embed, None, &mut out);
        let layer_modules = self.family.layer_modules();
        for l in 0..self.num_hidden_layers {
            for &m in &layer_modules {
                module(m, Some(l), &mut out);
            }
        }
        module(Module::FinalNorm, None, &mut out);
        if !self.tie_word_embeddings {
            module(Module::LmHead, None, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_both_conventions() {
        for family in Family::all() {
            for def in DEFS.iter().filter(|d| family_has(family, d.module)) {
                for part in [Part::Weight, Part::Bias] {
                    let layer = def.in_layer.then_some(12);
                    let id = TensorId {
                        module: def.module,
                        layer,
                        part,
                    };
                    let (hf, gguf) = (id.hf_name(), id.gguf_name(family));
                    if part == Part::Bias && !def.module.may_have_bias() {
                        assert_eq!(TensorId::parse_hf(&hf), None);
                        assert_eq!(TensorId::parse_gguf(&gguf, family), None);
                        continue;
                    }
                    assert_eq!(TensorId::parse_hf(&hf), Some(id), "{hf}");
                    assert_eq!(TensorId::parse_gguf(&gguf, family), Some(id), "{gguf}");
                }
            }
        }
        let q = TensorId::weight(Module::QProj, Some(3));
        assert_eq!(q.hf_name(), "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(q.gguf_name(Family::Llama), "blk.3.attn_q.weight");
        let post = TensorId::weight(Module::PostAttnNorm, Some(0));
        assert_eq!(post.gguf_name(Family::Llama), "blk.0.ffn_norm.weight");
        // Gemma: ffn_norm is the MLP's input norm; the attention output's is its own.
        assert_eq!(
            post.gguf_name(Family::Gemma3),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(
            TensorId::parse_gguf("blk.0.ffn_norm.weight", Family::Gemma3),
            Some(TensorId::weight(Module::PreFfnNorm, Some(0)))
        );
        // Phi-3: ffn_up is the fused gate_up.
        assert_eq!(
            TensorId::parse_gguf("blk.1.ffn_up.weight", Family::Phi3),
            Some(TensorId::weight(Module::GateUpProj, Some(1)))
        );
        assert_eq!(
            TensorId::parse_gguf("blk.1.attn_q.weight", Family::Phi3),
            None
        );
        assert_eq!(
            TensorId::weight(Module::Embed, None).gguf_name(Family::Qwen2),
            "token_embd.weight"
        );
        for bad in [
            "blk.01.attn_q.weight",
            "blk.x.attn_q.weight",
            "blk.1.attn_q.scale",
            "blk.1.attn_qkv.weight",
            "blk.1.attn_q_norm.weight",
            "blk.+1.attn_q.weight",
            "output_norm.bias",
        ] {
            assert_eq!(TensorId::parse_gguf(bad, Family::Llama), None, "{bad}");
        }
    }

    #[test]
    fn classify_takes_projections_of_other_checkpoints_by_their_module_name() {
        let up = TensorId::classify("transformer.h.0.mlp.up_proj.weight").unwrap();
        assert_eq!((up.module, up.part), (Module::UpProj, Part::Weight));
        assert_eq!(TensorId::classify("transformer.h.0.ln_1.weight"), None);
        let e = TensorId::classify("model.embed_tokens.weight").unwrap();
        assert_eq!(e.module.role(), Role::Embedding);
        // The presets select by role: fused q/k/v is attention, fused gate/up is MLP, the
        // per-head and sandwich norms are norms (never quantized).
        let role = |n: &str| TensorId::classify(n).map(|t| t.module.role());
        assert_eq!(
            role("model.layers.2.self_attn.qkv_proj.weight"),
            Some(Role::Attention)
        );
        assert_eq!(
            role("model.layers.2.mlp.gate_up_proj.weight"),
            Some(Role::Mlp)
        );
        assert_eq!(
            role("model.layers.2.self_attn.q_norm.weight"),
            Some(Role::Norm)
        );
        assert_eq!(
            role("model.layers.2.post_feedforward_layernorm.weight"),
            Some(Role::Norm)
        );
    }
}
