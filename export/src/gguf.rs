//! Export to GGUF (llama.cpp), the inverse of `cllm import-gguf`.
//!
//! Each tensor keeps its values exactly:
//!
//! * lossless tensors are written in their dtype (BF16, F16, F32); one-dimensional ones (norms,
//!   biases) widened to F32, as llama.cpp's converter writes them (its kernels take F32 there);
//! * `int4` is Q4_1 and `int8`/`int8g` is Q8_0 where every scale is an f16 value (see
//!   [`blocks`]); an int8 tensor whose scales are not, or whose groups are not whole 32-blocks,
//!   is refused by name, or with `--requantize TYPE` quantized again from cllm's dequantized
//!   values with llama.cpp's reference quantizer, the error it adds measured and reported.
//!
//! llama.cpp's layout: the q and k rows of the families whose converter permutes them
//! (Llama, Mistral) are interleaved per head ([`cllm_gguf::permute_rows`]). Metadata: the
//! family's hyper-parameters (the keys the importer reads), the byte-level BPE tokenizer, its
//! special ids and chat template.
//!
//! Memory: the data of a tensor passes a frame at a time (the rows of one head for permuted
//! tensors); only a quantized tensor's scales and minimums are held whole.

mod blocks;
mod tokenizer;

use std::io::Write;
use std::path::Path;

use cllm_format::{Codec, Dtype};
use cllm_gguf::writer::{GgufWriter, TensorDecl, Value as G};
use cllm_gguf::GgmlType;
use cllm_loader::{LoadError, Packed};
use cllm_model::tensors::RopeRows;
use cllm_model::{Family, ModelConfig, RopeScaling, TensorId};
use half::f16;
use serde_json::Value;

use crate::{ExportError, ExportSummary};
use blocks::{Requant, QK};

/// Options of `cllm export --to gguf`.
#[derive(Clone, Debug, Default)]
pub struct GgufOptions {
    /// A GGUF type name (`Q8_0`, `Q4_0`, `Q4_1`) for quantized tensors no type carries exactly.
    pub requantize: Option<String>,
}

/// How one tensor's bytes become the GGUF's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Conv {
    /// The source bytes as they are.
    Copy,
    /// bf16 or f16 values widened to f32 (exact).
    Widen(Dtype),
    /// `int4` with this group size → Q4_1.
    Int4 { g: usize },
    /// `int8`/`int8g` (group size `g`, the row for per-row) with f16-exact scales → Q8_0.
    Int8 { g: usize },
    /// cllm's dequantized values quantized again.
    Requant(Requant),
}

struct Plan {
    /// Position in the packed model.
    index: usize,
    gguf_name: String,
    shape: Vec<u64>,
    ty: GgmlType,
    conv: Conv,
    codec: Codec,
    /// Heads of llama.cpp's q/k row permutation.
    permute: Option<usize>,
}

/// The measured error of a re-quantized tensor against cllm's dequantized values.
#[derive(Default, Clone, Copy)]
struct Loss {
    max_abs: f64,
    sum_sq_err: f64,
    sum_sq_ref: f64,
    n: u64,
}

impl Loss {
    fn add(&mut self, reference: &[f32], got: &[f32]) {
        for (&a, &b) in reference.iter().zip(got) {
            let e = (a as f64 - b as f64).abs();
            self.max_abs = self.max_abs.max(e);
            self.sum_sq_err += e * e;
            self.sum_sq_ref += (a as f64) * (a as f64);
        }
        self.n += reference.len() as u64;
    }
    fn merge(&mut self, o: &Loss) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.sum_sq_err += o.sum_sq_err;
        self.sum_sq_ref += o.sum_sq_ref;
        self.n += o.n;
    }
    fn rel_rms(&self) -> f64 {
        if self.sum_sq_ref > 0.0 {
            (self.sum_sq_err / self.sum_sq_ref).sqrt()
        } else {
            0.0
        }
    }
    fn describe(&self) -> String {
        format!(
            "max abs error {:.3e}, relative RMS error {:.3e} over {} values",
            self.max_abs,
            self.rel_rms(),
            self.n
        )
    }
}

fn refused(tensor: &str, reason: impl Into<String>) -> ExportError {
    ExportError::Refused {
        tensor: tensor.to_string(),
        reason: reason.into(),
    }
}

fn json_file(packed: &Packed, name: &str) -> Result<Option<Vec<u8>>, ExportError> {
    Ok(packed.read_file(name)?)
}

fn rows_cols(shape: &[u64]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n as usize),
        [r, rest @ ..] => (*r as usize, rest.iter().product::<u64>() as usize),
    }
}

fn f32s_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The f32 scales of an int8 tensor as f16, if every one is an f16 value (else the first that
/// is not).
fn f16_scales(raw: &[u8]) -> Result<Vec<f16>, f32> {
    raw.chunks_exact(4)
        .map(|c| {
            let s = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            blocks::exact_f16(s).ok_or(s)
        })
        .collect()
}

/// Decides every tensor's GGUF name, type and conversion; refuses what cannot be carried.
fn plan(
    packed: &Packed,
    cfg: &ModelConfig,
    requant: Option<Requant>,
) -> Result<Vec<Plan>, ExportError> {
    let family = cfg.family;
    let mut plans = Vec::with_capacity(packed.len());
    for i in 0..packed.len() {
        let t = packed.tensor(i);
        let name = t.name.as_str();
        let id = TensorId::parse_hf(name).ok_or_else(|| {
            refused(
                name,
                format!(
                    "not a tensor of a {} model llama.cpp loads",
                    family.model_type()
                ),
            )
        })?;
        let gguf_name = id.gguf_name(family);
        let codec = packed.codec(i);
        let shape = t.shape.clone();
        let (rows, cols) = rows_cols(&shape);
        let permute = match id.module.gguf_rows().filter(|_| family.gguf_permutes_qk()) {
            Some(RopeRows::Query) => Some(cfg.num_attention_heads),
            Some(RopeRows::Key) => Some(cfg.num_key_value_heads),
            None => None,
        };
        if let Some(h) = permute {
            if h == 0 || rows % (2 * h) != 0 {
                return Err(refused(
                    name,
                    format!("{rows} rows cannot be permuted per head for {h} heads"),
                ));
            }
        }
        let (ty, conv) = if codec.is_lossless() {
            let one_d = shape.len() <= 1;
            match t.dtype {
                Dtype::F32 => (GgmlType::F32, Conv::Copy),
                Dtype::Bf16 | Dtype::F16 if one_d => (GgmlType::F32, Conv::Widen(t.dtype)),
                Dtype::Bf16 => (GgmlType::BF16, Conv::Copy),
                Dtype::F16 => (GgmlType::F16, Conv::Copy),
                d => return Err(refused(name, format!("dtype {d} has no GGUF float type"))),
            }
        } else {
            let exact = match codec {
                Codec::Int4 { group_size, .. } | Codec::Int4S { group_size }
                    if group_size as usize % QK == 0 =>
                {
                    Ok((
                        GgmlType::Q4_1,
                        Conv::Int4 {
                            g: group_size as usize,
                        },
                    ))
                }
                Codec::Int4 { group_size, .. } | Codec::Int4S { group_size } => Err(format!(
                    "int4 groups of {group_size} are not whole Q4_1 blocks of 32"
                )),
                Codec::Int8Row | Codec::Int8Group { .. } => {
                    let g = codec.group_size().map_or(cols, |g| g as usize);
                    if g % QK != 0 {
                        Err(format!(
                            "{codec} scales groups of {g} columns; Q8_0 needs whole blocks of 32"
                        ))
                    } else {
                        match f16_scales(&packed.decode_stream(i, 1)?) {
                            Ok(_) => Ok((GgmlType::Q8_0, Conv::Int8 { g })),
                            Err(s) => Err(format!(
                                "{codec} scale {s:e} is not an f16 value, so Q8_0 (an f16 scale \
                                 per 32 values) cannot carry it exactly"
                            )),
                        }
                    }
                }
                other => Err(format!("codec {other} has no GGUF type")),
            };
            match (exact, requant) {
                (Ok(x), _) => x,
                (Err(_), Some(r)) if cols % QK == 0 => (r.ggml(), Conv::Requant(r)),
                (Err(why), Some(r)) => {
                    return Err(refused(
                        name,
                        format!("{why}; and {cols} columns are not whole {r:?} blocks of 32"),
                    ))
                }
                (Err(why), None) => {
                    return Err(refused(
                        name,
                        format!(
                            "{why}; `--requantize Q8_0` (or Q4_0, Q4_1) converts it, measuring \
                             the error"
                        ),
                    ))
                }
            }
        };
        plans.push(Plan {
            index: i,
            gguf_name,
            shape,
            ty,
            conv,
            codec,
            permute,
        });
    }
    Ok(plans)
}

/// The `<arch>.*` hyper-parameters (what `cllm_gguf`'s importer reads back), and the extra
/// tensors RoPE scaling needs.
fn hparams(
    cfg: &ModelConfig,
    arch: &str,
    notes: &mut Vec<String>,
) -> Result<(Vec<(String, G)>, Vec<(String, Vec<f32>)>), ExportError> {
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| G::U32(v as u32);
    let mut md = vec![
        (k("vocab_size"), u(cfg.vocab_size)),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(cfg.num_key_value_heads)),
        (k("rope.freq_base"), G::F32(cfg.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            G::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    let mut tensors = Vec::new();
    if cfg.family == Family::Phi3 {
        md.push((k("rope.dimension_count"), u(cfg.rotary_dim)));
        md.push((
            k("attention.sliding_window"),
            u(cfg.sliding_window.unwrap_or(0)),
        ));
        // The importer reads Phi-3's head width as embedding_length / head_count.
        if cfg.hidden_size != cfg.head_dim * cfg.num_attention_heads {
            return Err(ExportError::Unsupported(
                "phi3: a head width other than hidden_size / num_attention_heads".into(),
            ));
        }
    } else {
        md.push((k("attention.key_length"), u(cfg.head_dim)));
        md.push((k("attention.value_length"), u(cfg.head_dim)));
        md.push((k("rope.dimension_count"), u(cfg.rotary_dim)));
    }
    if let (Some(w), Family::Mistral | Family::Qwen2 | Family::Qwen3) =
        (cfg.sliding_window, cfg.family)
    {
        if cfg
            .layer_types
            .iter()
            .any(|t| *t == cllm_model::AttentionKind::Sliding)
            && w < cfg.max_position_embeddings
        {
            notes.push(format!(
                "llama.cpp runs {} with full attention: the sliding window of {w} is not carried",
                arch
            ));
        }
    }
    match &cfg.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            md.push((k("rope.scaling.type"), G::str("linear")));
            md.push((k("rope.scaling.factor"), G::F32(*factor)));
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: orig,
        } => {
            // llama.cpp's converter's `rope_freqs.weight`: each frequency's divisor, in f32.
            let (low, high, orig, factor) = (*low, *high, *orig as f32, *factor);
            let dim = cfg.rotary_dim as f32;
            let theta = cfg.rope_theta as f32;
            let freqs = (0..cfg.rotary_dim / 2)
                .map(|i| {
                    let freq = 1.0 / theta.powf(2.0 * i as f32 / dim);
                    let wavelen = 2.0 * std::f32::consts::PI / freq;
                    if wavelen < orig / high {
                        1.0
                    } else if wavelen > orig / low {
                        factor
                    } else {
                        let smooth = (orig / wavelen - low) / (high - low);
                        1.0 / ((1.0 - smooth) / factor + smooth)
                    }
                })
                .collect();
            tensors.push(("rope_freqs.weight".to_string(), freqs));
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings: orig,
            attention_factor,
        } => {
            md.push((k("rope.scaling.original_context_length"), u(*orig)));
            md.push((k("rope.scaling.attn_factor"), G::F32(*attention_factor)));
            tensors.push(("rope_factors_long.weight".into(), long_factor.clone()));
            tensors.push(("rope_factors_short.weight".into(), short_factor.clone()));
        }
    }
    Ok((md, tensors))
}

/// Writes `packed` as one GGUF file.
pub fn export(
    packed: &Packed,
    out: &mut dyn Write,
    opts: &GgufOptions,
) -> Result<ExportSummary, ExportError> {
    let requant = match &opts.requantize {
        None => None,
        Some(s) => Some(Requant::parse(s).ok_or_else(|| {
            ExportError::Unsupported(format!(
                "--requantize {s}: the types are Q8_0, Q4_0 and Q4_1"
            ))
        })?),
    };
    let config_bytes = json_file(packed, "config.json")?
        .ok_or_else(|| ExportError::Unsupported("the container has no config.json".into()))?;
    let config_text = String::from_utf8_lossy(&config_bytes);
    let cfg = ModelConfig::from_json(&config_text)
        .map_err(|e| ExportError::Unsupported(format!("config.json: {e}")))?;
    let config: Value = serde_json::from_str(&config_text)
        .map_err(|e| ExportError::Unsupported(format!("config.json: {e}")))?;
    let family = cfg.family;
    if family == Family::Gemma3 {
        return Err(ExportError::Unsupported(
            "gemma3: GGUF export of Gemma (SentencePiece tokenizer, norm offsets, local-layer \
             pattern) is not written yet"
                .into(),
        ));
    }
    // llama.cpp's converter writes Mistral as `llama`; the importer knows it by its name.
    let arch = if family == Family::Mistral {
        "llama"
    } else {
        family.gguf()
    };
    let mut notes = Vec::new();

    let plans = plan(packed, &cfg, requant)?;
    let (hp, rope_tensors) = hparams(&cfg, arch, &mut notes)?;

    let tok_json = json_file(packed, "tokenizer.json")?.ok_or_else(|| {
        ExportError::Unsupported(
            "the container has no tokenizer.json (GGUF needs the vocabulary)".into(),
        )
    })?;
    let tok_cfg = json_file(packed, "tokenizer_config.json")?;
    let template_file =
        json_file(packed, "chat_template.jinja")?.map(|b| String::from_utf8_lossy(&b).into_owned());
    let vocab = tokenizer::metadata(
        &tok_json,
        tok_cfg.as_deref(),
        &config,
        template_file,
        cfg.vocab_size,
    )?;
    let _ = vocab.n_tokens;

    let stem = packed
        .path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = if family == Family::Mistral && !stem.to_ascii_lowercase().contains("mistral") {
        format!("Mistral {stem}")
    } else {
        stem
    };
    let mut md: Vec<(String, G)> = vec![
        ("general.architecture".into(), G::str(arch)),
        ("general.name".into(), G::Str(name)),
        ("general.alignment".into(), G::U32(32)),
    ];
    if plans
        .iter()
        .any(|p| p.ty != GgmlType::F32 && p.ty != GgmlType::F16 && p.ty != GgmlType::BF16)
    {
        md.push(("general.quantization_version".into(), G::U32(2)));
    }
    md.extend(hp);
    md.extend(vocab.metadata);

    let mut decls: Vec<TensorDecl> = plans
        .iter()
        .map(|p| TensorDecl {
            name: p.gguf_name.clone(),
            shape: p.shape.clone(),
            ty: p.ty,
        })
        .collect();
    for (n, v) in &rope_tensors {
        decls.push(TensorDecl {
            name: n.clone(),
            shape: vec![v.len() as u64],
            ty: GgmlType::F32,
        });
    }
    let io = |e: std::io::Error| ExportError::io(Path::new("<gguf output>"), e);
    let mut w = GgufWriter::new(out, &md, &decls).map_err(io)?;

    let mut total = Loss::default();
    let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for p in &plans {
        let loss = write_tensor(packed, p, &mut w)?;
        *counts.entry(p.ty.name()).or_default() += 1;
        if let Some(l) = loss {
            notes.push(format!(
                "{} ({}): {} re-quantized to {}: {}",
                p.gguf_name,
                packed.tensor(p.index).name,
                p.codec,
                p.ty.name(),
                l.describe()
            ));
            total.merge(&l);
        }
    }
    for (_, v) in &rope_tensors {
        w.write(&f32s_le(v)).map_err(io)?;
        w.end_tensor().map_err(io)?;
        *counts.entry("F32").or_default() += 1;
    }
    if total.n > 0 {
        notes.push(format!(
            "re-quantized in all ({}): {}",
            opts.requantize.as_deref().unwrap_or_default(),
            total.describe()
        ));
    }
    notes.push(format!(
        "GGUF types: {}",
        counts
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let (_, bytes) = w.finish().map_err(io)?;
    Ok(ExportSummary {
        tensors: decls.len(),
        bytes,
        notes,
    })
}

/// Feeds a tensor's input rows through `convert` in llama.cpp's row order, a frame (or, for
/// permuted tensors, a head) at a time, and writes the result.
struct RowPump<'a, W: Write> {
    w: &'a mut GgufWriter<W>,
    row_bytes: usize,
    /// Rows gathered before they are converted: a head for permuted tensors.
    unit: usize,
    permute: bool,
    buf: Vec<u8>,
    /// Index of the first row in `buf`.
    first_row: usize,
    out: Vec<u8>,
}

impl<W: Write> RowPump<'_, W> {
    fn push(
        &mut self,
        mut chunk: &[u8],
        convert: &mut dyn FnMut(usize, &[u8], &mut Vec<u8>) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        let cap = self.unit * self.row_bytes;
        while !chunk.is_empty() {
            let take = (cap - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() == cap {
                self.flush(convert)?;
            }
        }
        Ok(())
    }

    fn flush(
        &mut self,
        convert: &mut dyn FnMut(usize, &[u8], &mut Vec<u8>) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = self.buf.len() / self.row_bytes;
        let half = n / 2;
        self.out.clear();
        for r in 0..n {
            // llama.cpp's permutation: output row 2k + j of a head is input row j·hd/2 + k.
            let src = if self.permute {
                (r % 2) * half + r / 2
            } else {
                r
            };
            let row = &self.buf[src * self.row_bytes..(src + 1) * self.row_bytes];
            convert(self.first_row + src, row, &mut self.out)?;
        }
        self.w
            .write(&self.out)
            .map_err(|e| ExportError::io(Path::new("<gguf output>"), e))?;
        self.first_row += n;
        self.buf.clear();
        Ok(())
    }
}

/// Writes one tensor's data; returns the measured loss of a re-quantized one.
fn write_tensor<W: Write>(
    packed: &Packed,
    p: &Plan,
    w: &mut GgufWriter<W>,
) -> Result<Option<Loss>, ExportError> {
    let i = p.index;
    let t = packed.tensor(i);
    let (rows, cols) = rows_cols(&p.shape);
    let row_bytes = match p.conv {
        Conv::Copy | Conv::Widen(_) => cols * t.dtype.size(),
        Conv::Int4 { .. } => cols / 2,
        Conv::Int8 { .. } => cols,
        Conv::Requant(_) => match p.codec {
            Codec::Int4 { .. } | Codec::Int4S { .. } => cols / 2,
            _ => cols,
        },
    };
    let unit = match p.permute {
        Some(h) => rows / h,
        // About 1 MiB of input at a time.
        None => ((1 << 20) / row_bytes.max(1)).clamp(1, rows.max(1)),
    };
    let mut pump = RowPump {
        w,
        row_bytes,
        unit,
        permute: p.permute.is_some(),
        buf: Vec::with_capacity(unit * row_bytes),
        first_row: 0,
        out: Vec::new(),
    };
    let mut loss = Loss::default();
    // Small streams, held for the tensor.
    let params: Vec<Vec<u8>> = if p.codec.is_lossless() {
        Vec::new()
    } else {
        (1..t.streams.len())
            .map(|s| packed.decode_stream(i, s))
            .collect::<Result<_, _>>()?
    };
    let mut convert: Box<dyn FnMut(usize, &[u8], &mut Vec<u8>) -> Result<(), ExportError>> = match p
        .conv
    {
        Conv::Copy => Box::new(|_, row: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(row);
            Ok(())
        }),
        Conv::Widen(d) => Box::new(move |_, row: &[u8], out: &mut Vec<u8>| {
            for c in row.chunks_exact(2) {
                let bits = u16::from_le_bytes([c[0], c[1]]);
                let x = match d {
                    Dtype::Bf16 => f32::from_bits((bits as u32) << 16),
                    _ => f16::from_bits(bits).to_f32(),
                };
                out.extend_from_slice(&x.to_le_bytes());
            }
            Ok(())
        }),
        Conv::Int4 { g } => {
            let gpr = cols / g;
            // The streams decoded above, as int4's f16 pairs (expanded for int4s).
            let (scales, mins) = cllm_format::tensor::int4_param_bytes(p.codec, &p.shape, &params)
                .ok_or_else(|| refused(&t.name, format!("codec {} is not int4", p.codec)))?;
            Box::new(move |r, row: &[u8], out: &mut Vec<u8>| {
                let span = 2 * gpr * r..2 * gpr * (r + 1);
                blocks::int4_row_to_q4_1(row, &scales[span.clone()], &mins[span], g, out);
                Ok(())
            })
        }
        Conv::Int8 { g } => {
            let gpr = cols / g;
            let scales = f16_scales(&params[0])
                .map_err(|s| refused(&t.name, format!("scale {s:e} changed to a non-f16 value")))?;
            Box::new(move |r, row: &[u8], out: &mut Vec<u8>| {
                blocks::int8_row_to_q8_0(row, &scales[gpr * r..gpr * (r + 1)], g, out);
                Ok(())
            })
        }
        Conv::Requant(rq) => {
            let codec = p.codec;
            let shape = p.shape.clone();
            let params = &params;
            let loss = &mut loss;
            let ty = p.ty;
            let mut q = Vec::new();
            Box::new(move |r, row: &[u8], out: &mut Vec<u8>| {
                let x = cllm_format::tensor::dequantize_range(
                    codec,
                    &shape,
                    row,
                    r * row_bytes,
                    params,
                );
                q.clear();
                rq.quantize(&x, &mut q);
                let y = cllm_gguf::dequant::dequantize(ty, &q, x.len())
                    .map_err(|e| ExportError::Unsupported(e.to_string()))?;
                loss.add(&x, &y);
                out.extend_from_slice(&q);
                Ok(())
            })
        }
    };

    // The pump's errors are kept here; the loader's callback only learns that it must stop.
    let mut failed: Option<ExportError> = None;
    let read = {
        let mut each = |chunk: &[u8]| -> Result<(), LoadError> {
            pump.push(chunk, &mut *convert).map_err(|e| {
                failed = Some(e);
                LoadError::io(Path::new(&t.name), std::io::Error::other("export stopped"))
            })
        };
        if p.codec.is_lossless() {
            packed.source_chunks(i, &mut each)
        } else {
            packed.stream_chunks(i, 0, &mut each)
        }
    };
    if let Some(e) = failed {
        return Err(e);
    }
    read?;
    pump.flush(&mut *convert)?;
    drop(convert);
    drop(pump);
    let io = |e: std::io::Error| ExportError::io(Path::new("<gguf output>"), e);
    w.end_tensor().map_err(io)?;
    Ok(matches!(p.conv, Conv::Requant(_)).then_some(loss))
}
