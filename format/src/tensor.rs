//! A tensor's payload: from source bytes to each stream's decoded bytes (quantizing where the codec
//! says so), and back from streams to source-dtype bytes or f32 values.

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use crate::codec::{Codec, Int4Fit};
use crate::error::{FormatError, Result};
use crate::index::TensorEntry;
use crate::quant;
use crate::source::SourceBytes;
use crate::Dtype;

/// `(rows, cols)` as spec section 4 defines them.
pub fn rows_cols(shape: &[u64]) -> (usize, usize) {
    let numel: u64 = shape.iter().product();
    if shape.len() < 2 {
        (1, numel as usize)
    } else {
        let rows = shape[0] as usize;
        (rows, (numel as usize).checked_div(rows).unwrap_or(0))
    }
}

/// What quantizing needs to know beyond each value: the per-row or per-group parameters of the
/// groups `first_group..first_group + scales.len()` (group `i` is column block `i % per_row` of
/// row `i / per_row`).
pub enum QuantParams {
    None,
    /// `int8` (one group per row: `group_size == cols`) and `int8g`.
    Int8 {
        group_size: usize,
        first_group: usize,
        scales: Vec<f32>,
    },
    Int4 {
        group_size: usize,
        first_group: usize,
        scales: Vec<f16>,
        mins: Vec<f16>,
    },
}

/// How a quantized codec's groups tile a tensor: `per_row` groups of `size` columns in each row
/// (an `int8g` row's last group may be shorter; an `int8` row is one group, even when empty).
#[derive(Clone, Copy)]
struct Tiling {
    cols: usize,
    size: usize,
    per_row: usize,
}

impl Tiling {
    fn of(codec: Codec, shape: &[u64]) -> Option<Tiling> {
        let (_, cols) = rows_cols(shape);
        let (size, per_row) = match codec {
            Codec::Int8Row => (cols.max(1), 1),
            Codec::Int8Group { group_size } => {
                let g = (group_size as usize).max(1);
                (g, cols.div_ceil(g))
            }
            Codec::Int4 { group_size, .. } => {
                let g = (group_size as usize).max(1);
                (g, cols / g)
            }
            _ => return None,
        };
        Some(Tiling {
            cols,
            size,
            per_row,
        })
    }

    fn groups(&self, shape: &[u64]) -> usize {
        rows_cols(shape).0 * self.per_row
    }

    /// The group holding element `e` (row-major).
    fn group_of(&self, e: usize) -> usize {
        (e / self.cols) * self.per_row + (e % self.cols) / self.size
    }

    /// The elements of groups `groups` (consecutive groups are contiguous).
    fn elements(&self, groups: &Range<usize>) -> Range<usize> {
        if groups.is_empty() {
            return 0..0;
        }
        let start = |g: usize| (g / self.per_row) * self.cols + (g % self.per_row) * self.size;
        let last = groups.end - 1;
        let end = (last / self.per_row) * self.cols
            + ((last % self.per_row + 1) * self.size).min(self.cols);
        start(groups.start)..end
    }
}

/// The groups whose parameters the decoded bytes `range` of stream `stream` depend on: those its
/// codes fall in for the data stream, those it holds for the scale and minimum streams.
pub fn param_groups(
    codec: Codec,
    shape: &[u64],
    stream: usize,
    range: &Range<usize>,
) -> Range<usize> {
    let Some(tiling) = Tiling::of(codec, shape) else {
        return 0..0;
    };
    let int4 = matches!(codec, Codec::Int4 { .. });
    if range.is_empty() {
        return 0..0;
    }
    match (stream, int4) {
        (0, _) => {
            let per_byte = if int4 { 2 } else { 1 };
            tiling.group_of(range.start * per_byte)..tiling.group_of(range.end * per_byte - 1) + 1
        }
        (_, false) => range.start / 4..range.end.div_ceil(4),
        (_, true) => range.start / 2..range.end.div_ceil(2),
    }
}

/// The source bytes of groups `groups`: what [`quant_params_in`] and [`quantize_data_range`]
/// read.
pub fn group_source_range(
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    groups: &Range<usize>,
) -> Range<usize> {
    let es = dtype.size();
    Tiling::of(codec, shape).map_or(0..0, |t| {
        let e = t.elements(groups);
        e.start * es..e.end * es
    })
}

/// Computes the quantization parameters of a whole tensor (parallel over rows).
pub fn quant_params(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    src: &[u8],
) -> Result<QuantParams> {
    quant_params_from(name, codec, dtype, shape, &SourceBytes::Slice(src))
}

/// [`quant_params`] over a source read a block of rows at a time.
pub fn quant_params_from(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    src: &SourceBytes<'_>,
) -> Result<QuantParams> {
    let groups = Tiling::of(codec, shape).map_or(0, |t| t.groups(shape));
    quant_params_for(name, codec, dtype, shape, src, 0..groups)
}

/// The parameters of groups `groups` of the tensor whose source is `src`, read in blocks of about
/// 1 MiB (each handed back with [`SourceBytes::done`] once read), so memory holds a few rows and
/// the parameters asked for, never the tensor.
pub fn quant_params_for(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    src: &SourceBytes<'_>,
    groups: Range<usize>,
) -> Result<QuantParams> {
    let Some(tiling) = Tiling::of(codec, shape) else {
        return Ok(QuantParams::None);
    };
    let per_block = ((1usize << 20) / (tiling.size * dtype.size()).max(1)).max(1);
    let blocks: Vec<Range<usize>> = (groups.start..groups.end)
        .step_by(per_block)
        .map(|g| g..(g + per_block).min(groups.end))
        .collect();
    let parts = blocks
        .into_par_iter()
        .map(|block| {
            let range = group_source_range(codec, dtype, shape, &block);
            let bytes = src.read(range.clone());
            let params = quant_params_in(name, codec, dtype, shape, block, &bytes);
            drop(bytes);
            src.done(range);
            params
        })
        .collect::<Result<Vec<_>>>()?;
    let mut all = empty_params(codec, tiling, groups.start, groups.len());
    for p in parts {
        match (&mut all, p) {
            (QuantParams::Int8 { scales, .. }, QuantParams::Int8 { scales: s, .. }) => {
                scales.extend(s)
            }
            (
                QuantParams::Int4 { scales, mins, .. },
                QuantParams::Int4 {
                    scales: s, mins: m, ..
                },
            ) => {
                scales.extend(s);
                mins.extend(m);
            }
            _ => {}
        }
    }
    Ok(all)
}

fn empty_params(codec: Codec, tiling: Tiling, first_group: usize, capacity: usize) -> QuantParams {
    let group_size = tiling.size;
    match codec {
        Codec::Int8Row | Codec::Int8Group { .. } => QuantParams::Int8 {
            group_size,
            first_group,
            scales: Vec::with_capacity(capacity),
        },
        Codec::Int4 { .. } => QuantParams::Int4 {
            group_size,
            first_group,
            scales: Vec::with_capacity(capacity),
            mins: Vec::with_capacity(capacity),
        },
        _ => QuantParams::None,
    }
}

/// The parameters of groups `groups`, from `bytes`, their source bytes
/// ([`group_source_range`]).
pub fn quant_params_in(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    groups: Range<usize>,
    bytes: &[u8],
) -> Result<QuantParams> {
    let mut vals = Vec::new();
    quant::to_f32(dtype, bytes, &mut vals);
    quant_params_of_values(name, codec, shape, groups, &vals)
}

/// [`quant_params_in`] from the groups' values, already converted to f32.
fn quant_params_of_values(
    name: &str,
    codec: Codec,
    shape: &[u64],
    groups: Range<usize>,
    vals: &[f32],
) -> Result<QuantParams> {
    let Some(tiling) = Tiling::of(codec, shape) else {
        return Ok(QuantParams::None);
    };
    let base = tiling.elements(&groups).start;
    let group_of = |gi: usize| {
        let e = tiling.elements(&(gi..gi + 1));
        &vals[e.start - base..e.end - base]
    };
    let qerr = |gi: usize, msg: String| FormatError::Quantize {
        tensor: name.to_string(),
        msg: format!("row {}: {msg}", gi / tiling.per_row),
    };
    let col = |gi: usize, j: usize| (gi % tiling.per_row) * tiling.size + j;
    let int4_fit =
        |gi: usize, fit: fn(&[f32]) -> std::result::Result<(f16, f16), quant::QuantError>| {
            fit(group_of(gi)).map_err(|e| match e {
                quant::QuantError::NonFinite { index } => {
                    qerr(gi, format!("element {} is NaN or infinite", col(gi, index)))
                }
                quant::QuantError::ScaleOverflow { .. } => qerr(
                    gi,
                    format!("group {}: scale or min overflows f16", gi % tiling.per_row),
                ),
            })
        };
    // int4m's search costs some twenty passes over each group: a frame's groups are spread over
    // the threads (each group's result is its own; the first failing group, in order, is named).
    let searched: Option<Vec<(f16, f16)>> = match codec {
        Codec::Int4 {
            fit: Int4Fit::MinError,
            ..
        } => Some(
            groups
                .clone()
                .into_par_iter()
                .with_min_len(64)
                .map(|gi| int4_fit(gi, quant::int4m_group_params))
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<Result<Vec<_>>>()?,
        ),
        _ => None,
    };
    let mut params = empty_params(codec, tiling, groups.start, groups.len());
    match &mut params {
        QuantParams::Int8 { scales, .. } => {
            for gi in groups {
                scales.push(
                    quant::int8_scale(group_of(gi)).map_err(|j| {
                        qerr(gi, format!("element {} is NaN or infinite", col(gi, j)))
                    })?,
                );
            }
        }
        QuantParams::Int4 { scales, mins, .. } => match searched {
            Some(pairs) => (*scales, *mins) = pairs.into_iter().unzip(),
            None => {
                for gi in groups {
                    let (s, m) = int4_fit(gi, quant::int4_group_params)?;
                    scales.push(s);
                    mins.push(m);
                }
            }
        },
        QuantParams::None => {}
    }
    Ok(params)
}

/// A tensor's quantization parameters are kept from its data frames for its scale frames up to
/// this size ([`ParamsMemo`]); beyond it they are computed again.
pub const PARAMS_MEMO_BYTES: usize = 16 << 20;

/// A quantized tensor's data-stream bytes `range` (its codes), and the parameters of the groups
/// they fall in ([`param_groups`] of stream 0), from `span`, those groups' source bytes
/// ([`group_source_range`]). One f32 conversion serves both; `vals` is left holding it (the
/// span's values), for a caller that also needs the source values.
pub fn quantize_data_range(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    range: Range<usize>,
    span: &[u8],
    vals: &mut Vec<f32>,
) -> Result<(Vec<u8>, QuantParams)> {
    let groups = param_groups(codec, shape, 0, &range);
    let span_at = group_source_range(codec, dtype, shape, &groups).start;
    let source = source_range(codec, dtype, 0, &range).unwrap_or(0..0);
    quant::to_f32(dtype, span, vals);
    let params = quant_params_of_values(name, codec, shape, groups, vals)?;
    let es = dtype.size();
    let part = &vals[(source.start - span_at) / es..(source.end - span_at) / es];
    let codes = stream_range_of_values(shape, &params, part, 0, range);
    Ok((codes, params))
}

/// The parameters a tensor's data frames computed, kept for its scale and minimum frames (which
/// come after them in the file) when the whole tensor's fit a fixed budget; frames whose groups
/// are not all here compute theirs again from the source. Memory stays bounded at any size, and
/// the usual tensor's parameters are computed once.
pub struct ParamsMemo {
    kept: Option<std::sync::Mutex<(QuantParams, Vec<u64>)>>,
}

impl ParamsMemo {
    pub fn new(codec: Codec, shape: &[u64], budget_bytes: usize) -> ParamsMemo {
        let kept = Tiling::of(codec, shape).and_then(|tiling| {
            let groups = tiling.groups(shape);
            (groups.saturating_mul(4) <= budget_bytes).then(|| {
                let mut p = empty_params(codec, tiling, 0, groups);
                match &mut p {
                    QuantParams::Int8 { scales, .. } => scales.resize(groups, 0.0),
                    QuantParams::Int4 { scales, mins, .. } => {
                        scales.resize(groups, f16::ZERO);
                        mins.resize(groups, f16::ZERO);
                    }
                    QuantParams::None => {}
                }
                std::sync::Mutex::new((p, vec![0u64; groups.div_ceil(64)]))
            })
        });
        ParamsMemo { kept }
    }

    /// Keeps `p`'s groups.
    pub fn record(&self, p: &QuantParams) {
        let Some(kept) = &self.kept else { return };
        let mut guard = kept.lock().unwrap_or_else(|e| e.into_inner());
        let (all, filled) = &mut *guard;
        let first = match (all, p) {
            (
                QuantParams::Int8 { scales, .. },
                QuantParams::Int8 {
                    first_group,
                    scales: s,
                    ..
                },
            ) => {
                scales[*first_group..*first_group + s.len()].copy_from_slice(s);
                *first_group..*first_group + s.len()
            }
            (
                QuantParams::Int4 { scales, mins, .. },
                QuantParams::Int4 {
                    first_group,
                    scales: s,
                    mins: m,
                    ..
                },
            ) => {
                scales[*first_group..*first_group + s.len()].copy_from_slice(s);
                mins[*first_group..*first_group + m.len()].copy_from_slice(m);
                *first_group..*first_group + s.len()
            }
            _ => return,
        };
        for g in first {
            filled[g / 64] |= 1 << (g % 64);
        }
    }

    /// Groups `groups`' parameters, when every one of them was kept.
    pub fn get(&self, groups: &Range<usize>) -> Option<QuantParams> {
        let guard = self
            .kept
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (all, filled) = &*guard;
        if !groups
            .clone()
            .all(|g| filled[g / 64] & (1 << (g % 64)) != 0)
        {
            return None;
        }
        let g = groups.clone();
        Some(match all {
            QuantParams::Int8 {
                group_size, scales, ..
            } => QuantParams::Int8 {
                group_size: *group_size,
                first_group: g.start,
                scales: scales[g].to_vec(),
            },
            QuantParams::Int4 {
                group_size,
                scales,
                mins,
                ..
            } => QuantParams::Int4 {
                group_size: *group_size,
                first_group: g.start,
                scales: scales[g.clone()].to_vec(),
                mins: mins[g].to_vec(),
            },
            QuantParams::None => QuantParams::None,
        })
    }
}

/// The source bytes that decoded bytes `range` of stream `stream` are computed from: the same
/// range for a lossless codec's data, the range's elements for a quantized data stream, nothing
/// for scales and mins (computed from the parameters).
pub fn source_range(
    codec: Codec,
    dtype: Dtype,
    stream: usize,
    range: &Range<usize>,
) -> Option<Range<usize>> {
    let es = dtype.size();
    match (codec, stream) {
        (c, 0) if c.is_lossless() => Some(range.clone()),
        (Codec::Int4 { .. }, 0) => Some(range.start * 2 * es..range.end * 2 * es),
        (_, 0) => Some(range.start * es..range.end * es),
        _ => None,
    }
}

/// The decoded bytes `range` of stream `stream` (its position in the codec's stream list), from
/// the whole tensor's source bytes `src`. For lossless codecs this is a copy of the source;
/// callers that can borrow should.
pub fn stream_range(
    dtype: Dtype,
    shape: &[u64],
    params: &QuantParams,
    src: &[u8],
    stream: usize,
    range: Range<usize>,
) -> Vec<u8> {
    let es = dtype.size();
    let part = match (params, stream) {
        (QuantParams::None, _) => &src[range.clone()],
        (QuantParams::Int4 { .. }, 0) => &src[range.start * 2 * es..range.end * 2 * es],
        (_, 0) => &src[range.start * es..range.end * es],
        _ => &[][..],
    };
    stream_range_from(dtype, shape, params, part, stream, range)
}

/// [`stream_range`] given only `part`, the source bytes [`source_range`] names for `range`.
pub fn stream_range_from(
    dtype: Dtype,
    shape: &[u64],
    params: &QuantParams,
    part: &[u8],
    stream: usize,
    range: Range<usize>,
) -> Vec<u8> {
    match (params, stream) {
        (QuantParams::None, _) => part.to_vec(),
        (_, 0) => {
            let mut vals = Vec::new();
            quant::to_f32(dtype, part, &mut vals);
            stream_range_of_values(shape, params, &vals, stream, range)
        }
        _ => stream_range_of_values(shape, params, &[], stream, range),
    }
}

/// [`stream_range_from`] for a quantized tensor, given its data range's source values in f32
/// (`vals`; empty for the scale and minimum streams).
pub fn stream_range_of_values(
    shape: &[u64],
    params: &QuantParams,
    vals: &[f32],
    stream: usize,
    range: Range<usize>,
) -> Vec<u8> {
    let (_, cols) = rows_cols(shape);
    match (params, stream) {
        (QuantParams::None, _) => Vec::new(),
        (
            QuantParams::Int8 {
                group_size,
                first_group,
                scales,
            },
            0,
        ) => {
            let mut out = vec![0u8; range.len()];
            let groups_per_row = cols.div_ceil(*group_size);
            let mut at = 0;
            while at < range.len() {
                let e = range.start + at;
                let (row, col) = (e / cols, e % cols);
                let gi = row * groups_per_row + col / group_size - first_group;
                // Up to the end of this group (a group never spans rows).
                let n = (group_size - col % group_size).min(range.len() - at);
                quant::int8_quantize(&vals[at..at + n], scales[gi], &mut out[at..at + n]);
                at += n;
            }
            out
        }
        (
            QuantParams::Int8 {
                first_group,
                scales,
                ..
            },
            _,
        ) => {
            let first = range.start / 4;
            let last = range.end.div_ceil(4);
            let bytes: Vec<u8> = scales[first - first_group..last - first_group]
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect();
            bytes[range.start - first * 4..range.end - first * 4].to_vec()
        }
        (
            QuantParams::Int4 {
                group_size,
                first_group,
                scales,
                mins,
            },
            0,
        ) => {
            let e0 = range.start * 2;
            let groups_per_row = cols / group_size;
            let code = |e: usize, x: f32| {
                let (row, col) = (e / cols, e % cols);
                let gi = row * groups_per_row + col / group_size - first_group;
                quant::int4_code(x, scales[gi], mins[gi])
            };
            vals.chunks_exact(2)
                .enumerate()
                .map(|(k, pair)| {
                    let e = e0 + 2 * k;
                    code(e, pair[0]) | (code(e + 1, pair[1]) << 4)
                })
                .collect()
        }
        (
            QuantParams::Int4 {
                first_group,
                scales,
                mins,
                ..
            },
            s,
        ) => {
            let v = if s == 1 { scales } else { mins };
            let first = range.start / 2;
            let last = range.end.div_ceil(2);
            let bytes: Vec<u8> = v[first - first_group..last - first_group]
                .iter()
                .flat_map(|h| h.to_bits().to_le_bytes())
                .collect();
            bytes[range.start - first * 2..range.end - first * 2].to_vec()
        }
    }
}

/// Dequantizes a quantized tensor's streams to f32 values (row-major).
pub fn dequantize(codec: Codec, shape: &[u64], streams: &[Vec<u8>]) -> Vec<f32> {
    let (rows, cols) = rows_cols(shape);
    match codec {
        Codec::Int8Row | Codec::Int8Group { .. } => {
            let scales: Vec<f32> = streams[1]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let cols = cols.max(1);
            let g = codec.group_size().map_or(cols, |g| g as usize);
            let gpr = cols.div_ceil(g);
            streams[0]
                .iter()
                .enumerate()
                .map(|(e, &q)| {
                    let gi = (e / cols) * gpr + (e % cols) / g;
                    quant::int8_dequantize(q as i8, scales[gi])
                })
                .collect()
        }
        Codec::Int4 { group_size, .. } => {
            let g = group_size as usize;
            let h = |b: &[u8]| -> Vec<f16> {
                b.chunks_exact(2)
                    .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect()
            };
            let (scales, mins) = (h(&streams[1]), h(&streams[2]));
            let gpr = cols / g;
            let mut out = Vec::with_capacity(rows * cols);
            for (k, &b) in streams[0].iter().enumerate() {
                for (j, q) in [b & 0x0f, b >> 4].into_iter().enumerate() {
                    let e = 2 * k + j;
                    let gi = (e / cols) * gpr + (e % cols) / g;
                    out.push(quant::int4_dequantize(q, scales[gi], mins[gi]));
                }
            }
            out
        }
        _ => unreachable!("dequantize is for quantized codecs"),
    }
}

/// Dequantizes bytes `codes` of a quantized tensor's data stream that start at byte `at` of the
/// stream, given the tensor's other streams (`params`: scales, then mins), to f32 values.
/// The same arithmetic as [`dequantize`], for one frame at a time.
pub fn dequantize_range(
    codec: Codec,
    shape: &[u64],
    codes: &[u8],
    at: usize,
    params: &[Vec<u8>],
) -> Vec<f32> {
    let (_, cols) = rows_cols(shape);
    match codec {
        Codec::Int8Row | Codec::Int8Group { .. } => {
            let cols = cols.max(1);
            let g = codec.group_size().map_or(cols, |g| g as usize);
            let gpr = cols.div_ceil(g);
            let scale = |gi: usize| {
                let b = &params[0][gi * 4..gi * 4 + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            };
            codes
                .iter()
                .enumerate()
                .map(|(k, &q)| {
                    let e = at + k;
                    quant::int8_dequantize(q as i8, scale((e / cols) * gpr + (e % cols) / g))
                })
                .collect()
        }
        Codec::Int4 { group_size, .. } => {
            let g = group_size as usize;
            let gpr = cols / g;
            let h = |v: &[u8], gi: usize| {
                f16::from_bits(u16::from_le_bytes([v[2 * gi], v[2 * gi + 1]]))
            };
            let mut out = Vec::with_capacity(codes.len() * 2);
            for (k, &b) in codes.iter().enumerate() {
                for (j, q) in [b & 0x0f, b >> 4].into_iter().enumerate() {
                    let e = 2 * (at + k) + j;
                    let gi = (e / cols) * gpr + (e % cols) / g;
                    out.push(quant::int4_dequantize(
                        q,
                        h(&params[0], gi),
                        h(&params[1], gi),
                    ));
                }
            }
            out
        }
        _ => unreachable!("dequantize_range is for quantized codecs"),
    }
}

/// A decoded tensor back in its source dtype.
pub fn to_source_bytes(t: &TensorEntry, codec: Codec, mut streams: Vec<Vec<u8>>) -> Vec<u8> {
    if codec.is_lossless() {
        return streams.swap_remove(0);
    }
    let values = dequantize(codec, &t.shape, &streams);
    let mut out = Vec::new();
    quant::from_f32(t.dtype, &values, &mut out);
    out
}
