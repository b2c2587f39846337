//! The packing policy: presets, overrides and their resolution into a per-tensor plan.
//!
//! A preset only ever quantizes 2-D float projection weights, as the model description
//! (`cllm-model`) classifies them; embeddings, lm_head, norms, biases and 1-D tensors stay
//! lossless unless a rule names them explicitly.

use cllm_model::{Part, Role, TensorId};
use serde::Deserialize;

use crate::codec::{Codec, Int4Fit};
use crate::error::{FormatError, Result};
use crate::index::PolicyRecord;
use crate::Dtype;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Lossless,
    MlpOnly,
    AttnOnly,
    AllLinear,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Preset> {
        Ok(match s {
            "lossless" => Preset::Lossless,
            "mlp-only" => Preset::MlpOnly,
            "attn-only" => Preset::AttnOnly,
            "all-linear" => Preset::AllLinear,
            _ => {
                return Err(FormatError::Policy(format!(
                    "unknown preset '{s}' (lossless, mlp-only, attn-only, all-linear)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Lossless => "lossless",
            Preset::MlpOnly => "mlp-only",
            Preset::AttnOnly => "attn-only",
            Preset::AllLinear => "all-linear",
        }
    }

    /// Whether the preset quantizes tensor `name`: a projection weight of the roles it covers.
    fn selects(self, name: &str) -> bool {
        let Some(id) = TensorId::classify(name).filter(|id| id.part == Part::Weight) else {
            return false;
        };
        match (self, id.module.role()) {
            (Preset::Lossless, _) => false,
            (Preset::MlpOnly | Preset::AllLinear, Role::Mlp) => true,
            (Preset::AttnOnly | Preset::AllLinear, Role::Attention) => true,
            _ => false,
        }
    }
}

fn int4m(group_size: u32) -> Codec {
    Codec::Int4 {
        group_size,
        fit: Int4Fit::MinError,
    }
}

/// What a rule assigns. `Lossless` means the policy's lossless codec for the tensor's dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleCodec {
    Lossless,
    Fixed(Codec),
    /// Group-wise int8 at the policy's group size (a smaller one where that does not divide the
    /// columns, per-row where none does).
    Int8Default,
    /// int4 at the policy's group size (a smaller one where that does not divide the columns),
    /// fitted as given.
    Int4Default(Int4Fit),
    /// `int4s` at the policy's group size (a smaller one where that does not divide the columns).
    Int4SDefault,
}

impl RuleCodec {
    pub fn parse(s: &str) -> Result<RuleCodec> {
        Ok(match s {
            "lossless" => RuleCodec::Lossless,
            "raw" => RuleCodec::Fixed(Codec::Raw),
            "zstd" => RuleCodec::Fixed(Codec::Zstd),
            "zstd-bp" => RuleCodec::Fixed(Codec::ZstdBp),
            "int8" => RuleCodec::Int8Default,
            "int8-row" => RuleCodec::Fixed(Codec::Int8Row),
            "int8-g32" => RuleCodec::Fixed(Codec::Int8Group { group_size: 32 }),
            "int8-g64" => RuleCodec::Fixed(Codec::Int8Group { group_size: 64 }),
            "int8-g128" => RuleCodec::Fixed(Codec::Int8Group { group_size: 128 }),
            "int4" => RuleCodec::Int4Default(Int4Fit::MinMax),
            "int4-g32" => RuleCodec::Fixed(Codec::int4(32)),
            "int4-g64" => RuleCodec::Fixed(Codec::int4(64)),
            "int4-g128" => RuleCodec::Fixed(Codec::int4(128)),
            "int4m" => RuleCodec::Int4Default(Int4Fit::MinError),
            "int4m-g32" => RuleCodec::Fixed(int4m(32)),
            "int4m-g64" => RuleCodec::Fixed(int4m(64)),
            "int4m-g128" => RuleCodec::Fixed(int4m(128)),
            "int4s" => RuleCodec::Int4SDefault,
            "int4s-g32" => RuleCodec::Fixed(Codec::Int4S { group_size: 32 }),
            "int4s-g64" => RuleCodec::Fixed(Codec::Int4S { group_size: 64 }),
            "int4s-g128" => RuleCodec::Fixed(Codec::Int4S { group_size: 128 }),
            _ => {
                return Err(FormatError::Policy(format!(
                    "unknown codec '{s}' (lossless, raw, zstd, zstd-bp, int8, int8-row, int8-g32, int8-g64, int8-g128, int4, int4-g32, int4-g64, int4-g128, int4m, int4m-g32, int4m-g64, int4m-g128, int4s, int4s-g32, int4s-g64, int4s-g128)"
                )))
            }
        })
    }
}

#[derive(Clone, Debug)]
enum Matcher {
    Glob(globset::GlobMatcher),
    Regex(regex::Regex),
}

/// One override: tensors whose name matches get the codec. The last matching rule wins.
#[derive(Clone, Debug)]
pub struct Rule {
    pub text: String,
    matcher: Matcher,
    pub codec: RuleCodec,
}

impl Rule {
    /// Parses `PATTERN=CODEC`; a pattern starting `re:` is a regex that must match the whole name,
    /// any other pattern a glob.
    pub fn parse(text: &str) -> Result<Rule> {
        let (pattern, codec) = text
            .rsplit_once('=')
            .ok_or_else(|| FormatError::Policy(format!("rule '{text}' is not PATTERN=CODEC")))?;
        Rule::new(pattern, codec)
    }

    pub fn new(pattern: &str, codec: &str) -> Result<Rule> {
        let codec = RuleCodec::parse(codec)?;
        let matcher = if let Some(re) = pattern.strip_prefix("re:") {
            Matcher::Regex(
                regex::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| FormatError::Policy(format!("rule regex '{re}': {e}")))?,
            )
        } else {
            Matcher::Glob(
                globset::GlobBuilder::new(pattern)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| FormatError::Policy(format!("rule glob '{pattern}': {e}")))?
                    .compile_matcher(),
            )
        };
        Ok(Rule {
            text: format!("{pattern}={}", codec_text(codec)),
            matcher,
            codec,
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Glob(g) => g.is_match(name),
            Matcher::Regex(r) => r.is_match(name),
        }
    }
}

fn codec_text(c: RuleCodec) -> String {
    match c {
        RuleCodec::Lossless => "lossless".into(),
        RuleCodec::Int8Default => "int8".into(),
        RuleCodec::Int4Default(Int4Fit::MinMax) => "int4".into(),
        RuleCodec::Int4Default(Int4Fit::MinError) => "int4m".into(),
        RuleCodec::Int4SDefault => "int4s".into(),
        RuleCodec::Fixed(Codec::Int8Row) => "int8-row".into(),
        RuleCodec::Fixed(Codec::Int8Group { group_size }) => format!("int8-g{group_size}"),
        RuleCodec::Fixed(c @ (Codec::Int4 { group_size, .. } | Codec::Int4S { group_size })) => {
            format!("{}-g{group_size}", c.id())
        }
        RuleCodec::Fixed(c) => c.id().into(),
    }
}

/// Quantization used by a preset (`--quant`); its group size is the policy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    /// `int8`: symmetric int8, one scale per group of `group_size` columns (codec `int8g`).
    Int8Group,
    /// Symmetric int8, one scale per row (codec `int8`, readable by format 1.0 readers).
    Int8Row,
    /// Asymmetric int4 per group of `group_size` columns.
    Int4,
    /// int4 with each group's scale and minimum chosen for least squared error (codec `int4m`).
    Int4M,
    /// int4m's parameters stored as 6-bit codes under f16 factors per super-block of 8 groups
    /// (codec `int4s`): 4.5 bits per weight in groups of 32.
    Int4S,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Int8Group => "int8",
            Quant::Int8Row => "int8-row",
            Quant::Int4 => "int4",
            Quant::Int4M => "int4m",
            Quant::Int4S => "int4s",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub preset: Preset,
    pub quant: Quant,
    pub group_size: u32,
    /// Codec for tensors left lossless: `ZstdBp` (floats; others fall back to zstd), `Zstd` or `Raw`.
    pub lossless: Codec,
    pub rules: Vec<Rule>,
    pub allow_unmatched: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            preset: Preset::Lossless,
            quant: Quant::Int8Group,
            group_size: 64,
            lossless: Codec::ZstdBp,
            rules: Vec::new(),
            allow_unmatched: false,
        }
    }
}

/// A TOML policy file: the same settings as the command line.
///
/// ```toml
/// preset = "mlp-only"
/// quant = "int4"
/// group_size = 64
/// [[rule]]
/// pattern = "re:.*down_proj.weight"
/// codec = "int8"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub preset: Option<String>,
    pub quant: Option<String>,
    pub group_size: Option<u32>,
    pub lossless: Option<String>,
    pub allow_unmatched: Option<bool>,
    #[serde(default)]
    pub rule: Vec<RuleTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTable {
    pub pattern: String,
    pub codec: String,
}

impl PolicyFile {
    pub fn parse(text: &str) -> Result<PolicyFile> {
        toml::from_str(text).map_err(|e| FormatError::Policy(format!("policy file: {e}")))
    }
}

impl Policy {
    pub fn parse_quant(s: &str) -> Result<Quant> {
        match s {
            "int8" => Ok(Quant::Int8Group),
            "int8-row" => Ok(Quant::Int8Row),
            "int4" => Ok(Quant::Int4),
            "int4m" => Ok(Quant::Int4M),
            "int4s" => Ok(Quant::Int4S),
            _ => Err(FormatError::Policy(format!(
                "unknown quantization '{s}' (int8, int8-row, int4, int4m, int4s)"
            ))),
        }
    }

    pub fn parse_lossless(s: &str) -> Result<Codec> {
        match s {
            "zstd-bp" => Ok(Codec::ZstdBp),
            "zstd" => Ok(Codec::Zstd),
            "raw" => Ok(Codec::Raw),
            _ => Err(FormatError::Policy(format!(
                "unknown lossless codec '{s}' (zstd-bp, zstd, raw)"
            ))),
        }
    }

    /// Applies a policy file's settings; rules from the file come before command-line rules.
    pub fn apply_file(&mut self, file: &PolicyFile) -> Result<()> {
        if let Some(p) = &file.preset {
            self.preset = Preset::parse(p)?;
        }
        if let Some(q) = &file.quant {
            self.quant = Policy::parse_quant(q)?;
        }
        if let Some(g) = file.group_size {
            self.group_size = g;
        }
        if let Some(l) = &file.lossless {
            self.lossless = Policy::parse_lossless(l)?;
        }
        if let Some(a) = file.allow_unmatched {
            self.allow_unmatched = a;
        }
        let mut rules = file
            .rule
            .iter()
            .map(|r| Rule::new(&r.pattern, &r.codec))
            .collect::<Result<Vec<_>>>()?;
        rules.append(&mut self.rules);
        self.rules = rules;
        Ok(())
    }

    pub fn record(&self) -> PolicyRecord {
        PolicyRecord {
            preset: self.preset.name().into(),
            quant: self.quant.name().into(),
            group_size: self.group_size,
            rules: self.rules.iter().map(|r| r.text.clone()).collect(),
            lossless: self.lossless.id().into(),
        }
    }

    fn lossless_for(&self, dtype: Dtype) -> Codec {
        match self.lossless {
            Codec::ZstdBp if !dtype.is_float() => Codec::Zstd,
            c => c,
        }
    }

    /// The policy's group size, or the largest smaller one that divides `cols` (finer groups
    /// only ever lower the error); `None` when no group size divides it.
    fn group_for(&self, cols: u64) -> Option<u32> {
        crate::codec::GROUP_SIZES
            .iter()
            .rev()
            .copied()
            .find(|&g| g <= self.group_size && cols.is_multiple_of(g as u64))
    }

    /// Group-wise int8 at the policy's group size (see [`Policy::group_for`]), or per-row int8
    /// for a width no group size divides.
    fn int8_for(&self, shape: &[u64]) -> Codec {
        match self.group_for(shape.get(1).copied().unwrap_or(0)) {
            Some(group_size) => Codec::Int8Group { group_size },
            None => Codec::Int8Row,
        }
    }

    /// int4 at the policy's group size (see [`Policy::group_for`]); a width no group size
    /// divides keeps the policy's size, and planning then names the tensor.
    fn int4_for(&self, shape: &[u64], fit: Int4Fit) -> Codec {
        Codec::Int4 {
            group_size: self.int4_group_for(shape),
            fit,
        }
    }

    fn int4_group_for(&self, shape: &[u64]) -> u32 {
        let cols = shape.get(1).copied().unwrap_or(0);
        self.group_for(cols).unwrap_or(self.group_size)
    }

    fn quant_codec(&self, shape: &[u64]) -> Codec {
        match self.quant {
            Quant::Int8Group => self.int8_for(shape),
            Quant::Int8Row => Codec::Int8Row,
            Quant::Int4 => self.int4_for(shape, Int4Fit::MinMax),
            Quant::Int4M => self.int4_for(shape, Int4Fit::MinError),
            Quant::Int4S => Codec::Int4S {
                group_size: self.int4_group_for(shape),
            },
        }
    }

    /// Resolves the codec of every tensor. Tensors are `(name, dtype, shape)`. Fails on a rule that
    /// matches nothing (unless allowed) and on a codec that cannot hold a tensor, naming it.
    pub fn resolve(&self, tensors: &[(&str, Dtype, &[u64])]) -> Result<Vec<Codec>> {
        if !crate::codec::GROUP_SIZES.contains(&self.group_size) {
            return Err(FormatError::Policy(format!(
                "group size {} is not 32, 64 or 128",
                self.group_size
            )));
        }
        let mut used = vec![false; self.rules.len()];
        let mut plan = Vec::with_capacity(tensors.len());
        for &(name, dtype, shape) in tensors {
            let by_preset = self.preset.selects(name) && shape.len() == 2 && dtype.is_float();
            let mut codec = if by_preset {
                self.quant_codec(shape)
            } else {
                self.lossless_for(dtype)
            };
            for (i, rule) in self.rules.iter().enumerate() {
                if rule.matches(name) {
                    used[i] = true;
                    codec = match rule.codec {
                        RuleCodec::Lossless => self.lossless_for(dtype),
                        RuleCodec::Int8Default => self.int8_for(shape),
                        RuleCodec::Int4Default(fit) => self.int4_for(shape, fit),
                        RuleCodec::Int4SDefault => Codec::Int4S {
                            group_size: self.int4_group_for(shape),
                        },
                        RuleCodec::Fixed(c) => c,
                    };
                }
            }
            // Fails here, at plan time, for a codec that cannot hold this tensor.
            codec.streams(name, dtype, shape)?;
            plan.push(codec);
        }
        if !self.allow_unmatched {
            if let Some(i) = used.iter().position(|u| !u) {
                return Err(FormatError::Policy(format!(
                    "rule '{}' matches no tensor (pass --allow-unmatched to accept)",
                    self.rules[i].text
                )));
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [(&str, &[u64]); 6] = [
        ("model.embed_tokens.weight", &[320, 64]),
        ("model.layers.0.input_layernorm.weight", &[64]),
        ("model.layers.0.mlp.down_proj.weight", &[64, 128]),
        ("model.layers.0.mlp.gate_proj.weight", &[128, 64]),
        ("model.layers.0.self_attn.q_proj.weight", &[64, 64]),
        ("lm_head.weight", &[320, 64]),
    ];

    fn resolve(p: &Policy) -> Result<Vec<Codec>> {
        let t: Vec<_> = NAMES.iter().map(|(n, s)| (*n, Dtype::Bf16, *s)).collect();
        p.resolve(&t)
    }

    #[test]
    fn presets_never_touch_embeddings_norms_or_lm_head() {
        for preset in ["mlp-only", "attn-only", "all-linear"] {
            let p = Policy {
                preset: Preset::parse(preset).unwrap(),
                ..Policy::default()
            };
            let plan = resolve(&p).unwrap();
            assert_eq!(plan[0], Codec::ZstdBp);
            assert_eq!(plan[1], Codec::ZstdBp);
            assert_eq!(plan[5], Codec::ZstdBp);
        }
    }

    #[test]
    fn mlp_only_quantizes_mlp_only() {
        let p = Policy {
            preset: Preset::MlpOnly,
            ..Policy::default()
        };
        let plan = resolve(&p).unwrap();
        let g64 = Codec::Int8Group { group_size: 64 };
        assert_eq!(plan[2], g64);
        assert_eq!(plan[3], g64);
        assert_eq!(plan[4], Codec::ZstdBp);
    }

    #[test]
    fn group_size_falls_back_to_one_that_divides_the_width() {
        let t = |cols: u64| {
            vec![(
                "model.layers.0.mlp.up_proj.weight",
                Dtype::Bf16,
                vec![4, cols],
            )]
        };
        let plan = |quant, cols| {
            let p = Policy {
                preset: Preset::MlpOnly,
                quant,
                group_size: 128,
                ..Policy::default()
            };
            let t = t(cols);
            let t: Vec<_> = t.iter().map(|(n, d, s)| (*n, *d, s.as_slice())).collect();
            p.resolve(&t)
        };
        let g = |group_size| Codec::Int8Group { group_size };
        assert_eq!(plan(Quant::Int8Group, 256).unwrap(), [g(128)]);
        assert_eq!(plan(Quant::Int8Group, 576).unwrap(), [g(64)]);
        assert_eq!(plan(Quant::Int8Group, 160).unwrap(), [g(32)]);
        assert_eq!(plan(Quant::Int8Group, 40).unwrap(), [Codec::Int8Row]);
        assert_eq!(plan(Quant::Int4, 96).unwrap(), [Codec::int4(32)]);
        let e = plan(Quant::Int4, 40).unwrap_err().to_string();
        assert!(e.contains("up_proj") && e.contains("divisible"), "{e}");
    }

    #[test]
    fn int8_row_is_the_format_1_0_codec() {
        let p = Policy {
            preset: Preset::AllLinear,
            quant: Policy::parse_quant("int8-row").unwrap(),
            rules: vec![Rule::parse("*q_proj*=int8-g32").unwrap()],
            ..Policy::default()
        };
        let plan = resolve(&p).unwrap();
        assert_eq!(plan[2], Codec::Int8Row);
        assert_eq!(plan[4], Codec::Int8Group { group_size: 32 });
        assert_eq!(p.record().quant, "int8-row");
        assert_eq!(p.record().rules, ["*q_proj*=int8-g32"]);
    }

    #[test]
    fn last_matching_rule_wins() {
        let p = Policy {
            preset: Preset::AllLinear,
            quant: Quant::Int4,
            group_size: 32,
            rules: vec![
                Rule::parse("*.mlp.*=int8").unwrap(),
                Rule::parse("re:.*down_proj\\.weight=lossless").unwrap(),
            ],
            ..Policy::default()
        };
        let plan = resolve(&p).unwrap();
        assert_eq!(plan[2], Codec::ZstdBp);
        assert_eq!(plan[3], Codec::Int8Group { group_size: 32 });
        assert_eq!(plan[4], Codec::int4(32));
    }

    #[test]
    fn unmatched_rule_is_an_error_unless_allowed() {
        let mut p = Policy {
            rules: vec![Rule::parse("re:.*nothing.*=int8").unwrap()],
            ..Policy::default()
        };
        let e = resolve(&p).unwrap_err().to_string();
        assert!(e.contains("matches no tensor"), "{e}");
        p.allow_unmatched = true;
        assert!(resolve(&p).is_ok());
    }

    #[test]
    fn quantizing_a_norm_by_rule_names_the_tensor() {
        let p = Policy {
            rules: vec![Rule::parse("*layernorm*=int8").unwrap()],
            ..Policy::default()
        };
        let e = resolve(&p).unwrap_err().to_string();
        assert!(e.contains("input_layernorm") && e.contains("2-D"), "{e}");
    }

    #[test]
    fn policy_file_rules_come_first() {
        let f = PolicyFile::parse(
            "preset = \"mlp-only\"\nquant = \"int8\"\n[[rule]]\npattern = \"*q_proj*\"\ncodec = \"int8\"\n",
        )
        .unwrap();
        let mut p = Policy {
            rules: vec![Rule::parse("*q_proj*=lossless").unwrap()],
            ..Policy::default()
        };
        p.apply_file(&f).unwrap();
        assert_eq!(p.preset, Preset::MlpOnly);
        let plan = resolve(&p).unwrap();
        assert_eq!(plan[4], Codec::ZstdBp);
        assert!(PolicyFile::parse("bogus = 1").is_err());
    }
}
