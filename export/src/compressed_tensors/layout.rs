//! What the export of a packed model holds, decided from the index (and, for int4, each
//! tensor's scales and minimums): every safetensors entry with its dtype, shape and length, and
//! how its bytes come from the container's streams. The writer and `verify_against` share it:
//! one writes [`emit`]'s bytes, the other compares a folder with them.

use std::collections::BTreeMap;

use cllm_format::{Codec, Dtype};
use cllm_loader::Packed;
use half::f16;

use crate::ExportError;

/// How a quantized weight is carried: `pack-quantized` int32 words of `bits`-bit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scheme {
    pub bits: u32,
    /// `None`: one scale per row (strategy `channel`); `Some(G)`: strategy `group`.
    pub group: Option<u32>,
    pub symmetric: bool,
}

impl Scheme {
    /// The `weights` member of a `config_groups` entry.
    pub fn weights_json(&self) -> serde_json::Value {
        serde_json::json!({
            "num_bits": self.bits,
            "type": "int",
            "symmetric": self.symmetric,
            "strategy": if self.group.is_some() { "group" } else { "channel" },
            "group_size": self.group,
            "block_structure": null,
            "dynamic": false,
            "actorder": null,
            "observer": "minmax",
            "observer_kwargs": {},
        })
    }

    fn label(&self) -> String {
        let g = self.group.map_or("row".to_string(), |g| format!("g{g}"));
        format!(
            "int{}-{g}{}",
            self.bits,
            if self.symmetric { "" } else { "-zp" }
        )
    }
}

/// Where an entry's bytes come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A lossless tensor: its data stream, as packed.
    Dense { index: usize },
    /// int8 codes as int32 words: each byte offset by 128 (`q ^ 0x80`), rows padded with zero
    /// bytes to a whole word.
    Codes8 { index: usize, cols: u64 },
    /// int4 codes: cllm's bytes are already compressed-tensors' words (see [`emit`]).
    Codes4 { index: usize },
    /// f32 scales, as packed (int8, int8g).
    Scales32 { index: usize },
    /// f16 scales widened to f32 (int4).
    Scales16 { index: usize },
    /// `weight_shape`: `[rows, cols]` as int64.
    Shape { rows: u64, cols: u64 },
    /// int4 zero points, 4 bits each, packed along the rows.
    Zero {
        index: usize,
        rows: u64,
        groups: u64,
    },
}

/// One tensor of the exported safetensors files.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    /// safetensors spelling.
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub len: u64,
    pub src: Source,
}

/// The entries one container tensor becomes; they stay in one shard together.
#[derive(Clone, Debug)]
pub struct Unit {
    pub tensor: String,
    /// `Some` for a quantized weight: its module and scheme.
    pub quantized: Option<(String, Scheme)>,
    pub entries: Vec<Entry>,
}

impl Unit {
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.len).sum()
    }
}

/// Every unit, in tensor-name order, and the modules to list under `ignore`.
pub struct Layout {
    pub units: Vec<Unit>,
    pub ignore: Vec<String>,
}

fn refused(tensor: &str, reason: impl Into<String>) -> ExportError {
    ExportError::Refused {
        tensor: tensor.to_string(),
        reason: reason.into(),
    }
}

/// The int4 zero point of each group, as `k` in 0..=15 (compressed-tensors' signed zero point
/// is `k - 8`), row-major `[rows, cols / G]`; or why the tensor cannot be carried exactly.
///
/// cllm dequantizes `x' = f32(q) * s + m` (two rounded f32 operations); compressed-tensors
/// `x' = (f32(q - 8) - f32(k - 8)) * s` = `(q - k) * s` (one rounding; `q - k` is exact). When
/// `m == -(k * s)` with `k` a whole number in 0..=15, `q * s` and `k * s` are exact in f32 (4-bit
/// times 11-bit significands), so `q * s + m` is the real number `(q - k) * s` before its one
/// rounding: the two agree bit for bit (and `q == k` gives +0 in both). For any other minimum
/// there is no integer zero point, and a float one would round `q - z` first: refused.
/// A group with scale 0 dequantizes to `m` in cllm and to `(q - k) * 0 = +0` here: exact only
/// where `m` is zero (then `k = 0`, which keeps the sign of zero right).
pub fn int4_zero_points(
    tensor: &str,
    cols: u64,
    group: u32,
    scales: &[u8],
    mins: &[u8],
) -> Result<Vec<u8>, ExportError> {
    let groups_per_row = (cols / group as u64).max(1);
    let n = scales.len() / 2;
    let mut ks = Vec::with_capacity(n);
    for g in 0..n {
        let s = f16::from_le_bytes([scales[2 * g], scales[2 * g + 1]]).to_f32();
        let m = f16::from_le_bytes([mins[2 * g], mins[2 * g + 1]]).to_f32();
        let k = if s == 0.0 {
            (m == 0.0).then_some(0.0f32)
        } else {
            let k = (-m / s).round();
            ((0.0..=15.0).contains(&k) && k * s == -m).then_some(k)
        };
        match k {
            Some(k) => ks.push(k as u8),
            None => {
                let (row, col) = (g as u64 / groups_per_row, g as u64 % groups_per_row);
                return Err(refused(
                    tensor,
                    format!(
                        "int4 group {col} of row {row} has minimum {m:e} and scale {s:e} \
                         (minimum / scale = {:.4}); compressed-tensors dequantizes (q - z) * scale \
                         with a whole-number zero point z, which reproduces cllm's q * scale + \
                         minimum exactly only where the minimum is minus a whole multiple (0 to \
                         15) of the scale; it is not re-quantized here: pack this tensor as int8 \
                         (e.g. --rule '{tensor}=int8') to export it",
                        if s == 0.0 { f32::INFINITY } else { m / s }
                    ),
                ));
            }
        }
    }
    Ok(ks)
}

/// The sets of projections vLLM and SGLang fuse into one layer, which must share a scheme.
const FUSED: &[&[&str]] = &[&["q_proj", "k_proj", "v_proj"], &["gate_proj", "up_proj"]];

pub fn layout(packed: &Packed) -> Result<Layout, ExportError> {
    let mut units = Vec::with_capacity(packed.len());
    let mut ignore = Vec::new();
    // module -> the scheme (or "lossless") of every 2-D weight, for the fused-layer check.
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..packed.len() {
        let t = packed.tensor(i);
        let name = t.name.clone();
        let numel: u64 = t.shape.iter().product();
        let (rows, cols) = match t.shape.len() {
            0 | 1 => (1, numel),
            _ => (t.shape[0], numel / t.shape[0].max(1)),
        };
        let module = name.strip_suffix(".weight").map(str::to_string);
        let codec = packed.codec(i);
        let scheme = match codec {
            Codec::Raw | Codec::Zstd | Codec::ZstdBp => None,
            Codec::Int8Row => Some(Scheme {
                bits: 8,
                group: None,
                symmetric: true,
            }),
            Codec::Int8Group { group_size } => Some(Scheme {
                bits: 8,
                group: Some(group_size),
                symmetric: true,
            }),
            Codec::Int4 { group_size, .. } | Codec::Int4S { group_size } => {
                let (scales, mins) = packed.int4_param_bytes(i)?;
                let ks = int4_zero_points(&name, cols, group_size, &scales, &mins)?;
                Some(Scheme {
                    bits: 4,
                    group: Some(group_size),
                    symmetric: ks.iter().all(|&k| k == 8),
                })
            }
        };
        let Some(scheme) = scheme else {
            if t.shape.len() == 2 {
                if let Some(m) = &module {
                    ignore.push(m.clone());
                    kinds.insert(m.clone(), "lossless".into());
                }
            }
            units.push(Unit {
                tensor: name.clone(),
                quantized: None,
                entries: vec![Entry {
                    name: name.clone(),
                    dtype: t.dtype.safetensors_name(),
                    shape: t.shape.clone(),
                    len: numel * t.dtype.size() as u64,
                    src: Source::Dense { index: i },
                }],
            });
            continue;
        };
        let Some(module) = module else {
            return Err(refused(
                &name,
                "a quantized tensor must be a module's `.weight` (compressed-tensors stores it \
                 as that module's weight_packed and weight_scale)",
            ));
        };
        if t.shape.len() != 2 || !matches!(t.dtype, Dtype::Bf16 | Dtype::F16 | Dtype::F32) {
            return Err(refused(
                &name,
                "a quantized tensor must be a 2-D float weight",
            ));
        }
        kinds.insert(module.clone(), scheme.label());
        let groups = scheme.group.map_or(1, |g| cols / g as u64);
        let words = (cols * scheme.bits as u64).div_ceil(32);
        let mut entries = vec![
            Entry {
                name: format!("{module}.weight_packed"),
                dtype: "I32",
                shape: vec![rows, words],
                len: rows * words * 4,
                src: if scheme.bits == 8 {
                    Source::Codes8 { index: i, cols }
                } else {
                    Source::Codes4 { index: i }
                },
            },
            Entry {
                name: format!("{module}.weight_scale"),
                dtype: "F32",
                shape: vec![rows, groups],
                len: rows * groups * 4,
                src: if scheme.bits == 8 {
                    Source::Scales32 { index: i }
                } else {
                    Source::Scales16 { index: i }
                },
            },
            Entry {
                name: format!("{module}.weight_shape"),
                dtype: "I64",
                shape: vec![2],
                len: 16,
                src: Source::Shape { rows, cols },
            },
        ];
        if !scheme.symmetric {
            let zrows = (rows * scheme.bits as u64).div_ceil(32);
            entries.push(Entry {
                name: format!("{module}.weight_zero_point"),
                dtype: "I32",
                shape: vec![zrows, groups],
                len: zrows * groups * 4,
                src: Source::Zero {
                    index: i,
                    rows,
                    groups,
                },
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        units.push(Unit {
            tensor: name,
            quantized: Some((module, scheme)),
            entries,
        });
    }
    // vLLM and SGLang load q/k/v (and gate/up) as one layer with the scheme of its parts; parts
    // with different schemes would be loaded wrongly.
    for (module, kind) in &kinds {
        for set in FUSED {
            let Some((parent, own)) = module.rsplit_once('.') else {
                continue;
            };
            if !set.contains(&own) {
                continue;
            }
            for other in set.iter().filter(|o| **o != own) {
                if let Some(k2) = kinds.get(&format!("{parent}.{other}")) {
                    if k2 != kind {
                        return Err(refused(
                            &format!("{module}.weight"),
                            format!(
                                "vLLM and SGLang load {} as one fused layer with one scheme, \
                                 but {own} is {kind} and {other} is {k2}: pack them with the \
                                 same codec",
                                set.join("/")
                            ),
                        ));
                    }
                }
            }
        }
    }
    if !ignore.iter().any(|m| m == "lm_head") {
        ignore.push("lm_head".into());
    }
    ignore.sort();
    Ok(Layout { units, ignore })
}

/// Hands `entry`'s bytes to `sink`, a piece at a time (a frame of the container, or less).
pub fn emit(
    packed: &Packed,
    entry: &Entry,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    // The loader's callbacks return LoadError; an error of the sink is parked here.
    let mut parked: Option<ExportError> = None;
    let mut run = |index: usize,
                   stream: usize,
                   f: &mut dyn FnMut(&[u8]) -> Result<(), ExportError>|
     -> Result<(), ExportError> {
        let r = packed.stream_chunks(index, stream, |c| {
            f(c).map_err(|e| {
                parked = Some(e);
                cllm_loader::LoadError::Model {
                    path: Default::default(),
                    msg: "stopped by the writer".into(),
                }
            })
        });
        match (r, parked.take()) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Ok(()),
        }
    };
    match &entry.src {
        Source::Dense { index } | Source::Codes4 { index } | Source::Scales32 { index } => {
            // int4: byte k of a row holds column 2k in bits 0..3 and 2k + 1 in bits 4..7, so
            // the little-endian int32 word w holds columns 8w..8w+7 at bits 4j: compressed-
            // tensors' packing, whose nibble is the signed code plus 8, i.e. cllm's code.
            let stream = usize::from(matches!(entry.src, Source::Scales32 { .. }));
            run(*index, stream, sink)
        }
        Source::Codes8 { index, cols } => {
            // The signed code plus 128 as a byte is `q ^ 0x80`; four per little-endian word.
            let pad = ((4 - cols % 4) % 4) as usize;
            let mut col = 0u64;
            let mut buf = Vec::new();
            run(*index, 0, &mut |c: &[u8]| {
                buf.clear();
                for &b in c {
                    buf.push(b ^ 0x80);
                    col += 1;
                    if col == *cols {
                        buf.extend(std::iter::repeat_n(0u8, pad));
                        col = 0;
                    }
                }
                sink(&buf)
            })
        }
        Source::Scales16 { index } => {
            let s = packed.decode_stream(*index, 1)?;
            let mut out = Vec::with_capacity(s.len() * 2);
            for h in s.chunks_exact(2) {
                out.extend_from_slice(&f16::from_le_bytes([h[0], h[1]]).to_f32().to_le_bytes());
            }
            sink(&out)
        }
        Source::Shape { rows, cols } => {
            let mut out = Vec::with_capacity(16);
            out.extend_from_slice(&(*rows as i64).to_le_bytes());
            out.extend_from_slice(&(*cols as i64).to_le_bytes());
            sink(&out)
        }
        Source::Zero {
            index,
            rows,
            groups,
        } => {
            let t = packed.tensor(*index);
            let Some(group) = t.group_size else {
                return Err(ExportError::Unsupported(format!(
                    "{}: int4 without a group size",
                    t.name
                )));
            };
            let cols = *groups * group as u64;
            let (scales, mins) = packed.int4_param_bytes(*index)?;
            let ks = int4_zero_points(&t.name, cols, group, &scales, &mins)?;
            let (rows, groups) = (*rows as usize, *groups as usize);
            let mut out = Vec::with_capacity(rows.div_ceil(8) * groups * 4);
            for w in 0..rows.div_ceil(8) {
                for g in 0..groups {
                    let mut word = 0u32;
                    for j in 0..8 {
                        let r = 8 * w + j;
                        if r < rows {
                            word |= (ks[r * groups + g] as u32) << (4 * j);
                        }
                    }
                    out.extend_from_slice(&word.to_le_bytes());
                }
            }
            sink(&out)
        }
    }
}
