//! A tensor's payload: from source bytes to each stream's decoded bytes (quantizing where the codec
//! says so), and back from streams to source-dtype bytes or f32 values.

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use crate::codec::{Codec, SUB_CODE_BITS, SUPER_BLOCK_GROUPS};
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
    /// `int4`, `int4m` and `int4s` (whose `scales` and `mins` are the ones its `sub` stands for).
    Int4 {
        group_size: usize,
        first_group: usize,
        scales: Vec<f16>,
        mins: Vec<f16>,
        /// `int4s` only: each group's sub-code and its super-block's factors.
        sub: Option<Vec<SubParams>>,
    },
}

/// One `int4s` group's stored parameters (spec section 4.6).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SubParams {
    /// `sc | (mc << 6)`.
    pub code: u16,
    /// Its super-block's factors.
    pub d: f16,
    pub dmin: f16,
}

/// How a quantized codec's groups tile a tensor: `per_row` groups of `size` columns in each row
/// (an `int8g` row's last group may be shorter; an `int8` row is one group, even when empty).
/// `int4s` groups also form super-blocks of up to [`SUPER_BLOCK_GROUPS`] groups of a row, whose
/// parameters are computed together.
#[derive(Clone, Copy)]
struct Tiling {
    cols: usize,
    size: usize,
    per_row: usize,
    super_blocks: bool,
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
            Codec::Int4 { group_size, .. } | Codec::Int4S { group_size } => {
                let g = (group_size as usize).max(1);
                (g, cols / g)
            }
            _ => return None,
        };
        Some(Tiling {
            cols,
            size,
            per_row,
            super_blocks: matches!(codec, Codec::Int4S { .. }),
        })
    }

    fn blocks_per_row(&self) -> usize {
        self.per_row.div_ceil(SUPER_BLOCK_GROUPS)
    }

    /// The groups of super-block `j` (row-major over the tensor's super-blocks).
    fn block_groups(&self, j: usize) -> Range<usize> {
        let bpr = self.blocks_per_row().max(1);
        let row_start = (j / bpr) * self.per_row;
        let start = row_start + (j % bpr) * SUPER_BLOCK_GROUPS;
        start..(start + SUPER_BLOCK_GROUPS).min(row_start + self.per_row)
    }

    /// The super-block holding group `g`.
    fn block_of(&self, g: usize) -> usize {
        let per_row = self.per_row.max(1);
        (g / per_row) * self.blocks_per_row() + (g % per_row) / SUPER_BLOCK_GROUPS
    }

    /// `groups` widened to whole super-blocks (unchanged without super-blocks).
    fn widen(&self, groups: Range<usize>) -> Range<usize> {
        if !self.super_blocks || groups.is_empty() {
            return groups;
        }
        self.block_groups(self.block_of(groups.start)).start
            ..self.block_groups(self.block_of(groups.end - 1)).end
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
    let int4 = matches!(codec, Codec::Int4 { .. } | Codec::Int4S { .. });
    if range.is_empty() {
        return 0..0;
    }
    let groups = match (stream, codec) {
        (0, _) => {
            let per_byte = if int4 { 2 } else { 1 };
            tiling.group_of(range.start * per_byte)..tiling.group_of(range.end * per_byte - 1) + 1
        }
        (1, Codec::Int4S { .. }) => {
            let (first, last) = (range.start / 4, (range.end - 1) / 4);
            tiling.block_groups(first).start..tiling.block_groups(last).end
        }
        (_, Codec::Int4S { .. }) => {
            let bits = |b: usize| b * 8 / SUB_CODE_BITS;
            bits(range.start)..(bits(range.end) + 1).min(tiling.groups(shape))
        }
        _ if int4 => range.start / 2..range.end.div_ceil(2),
        _ => range.start / 4..range.end.div_ceil(4),
    };
    tiling.widen(groups)
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
    importance: Option<&[f32]>,
    src: &[u8],
) -> Result<QuantParams> {
    quant_params_from(
        name,
        codec,
        dtype,
        shape,
        importance,
        &SourceBytes::Slice(src),
    )
}

/// [`quant_params`] over a source read a block of rows at a time.
pub fn quant_params_from(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    importance: Option<&[f32]>,
    src: &SourceBytes<'_>,
) -> Result<QuantParams> {
    let groups = Tiling::of(codec, shape).map_or(0, |t| t.groups(shape));
    quant_params_for(name, codec, dtype, shape, importance, src, 0..groups)
}

/// The parameters of groups `groups` of the tensor whose source is `src`, read in blocks of about
/// 1 MiB (each handed back with [`SourceBytes::done`] once read), so memory holds a few rows and
/// the parameters asked for, never the tensor.
pub fn quant_params_for(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    importance: Option<&[f32]>,
    src: &SourceBytes<'_>,
    groups: Range<usize>,
) -> Result<QuantParams> {
    let Some(tiling) = Tiling::of(codec, shape) else {
        return Ok(QuantParams::None);
    };
    let per_block = ((1usize << 20) / (tiling.size * dtype.size()).max(1)).max(1);
    // Cuts fall on super-block starts (`groups` starts and ends on them), so each block's
    // parameters are its own.
    let mut cuts: Vec<usize> = (groups.start..groups.end)
        .step_by(per_block)
        .map(|g| tiling.widen(g..g + 1).start)
        .collect();
    cuts.dedup();
    cuts.push(groups.end);
    let blocks: Vec<Range<usize>> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
    let parts = blocks
        .into_par_iter()
        .map(|block| {
            let range = group_source_range(codec, dtype, shape, &block);
            let bytes = src.read(range.clone());
            let params = quant_params_in(name, codec, dtype, shape, importance, block, &bytes);
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
                QuantParams::Int4 {
                    scales, mins, sub, ..
                },
                QuantParams::Int4 {
                    scales: s,
                    mins: m,
                    sub: u,
                    ..
                },
            ) => {
                scales.extend(s);
                mins.extend(m);
                if let (Some(sub), Some(u)) = (sub, u) {
                    sub.extend(u);
                }
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
        Codec::Int4 { .. } | Codec::Int4S { .. } => QuantParams::Int4 {
            group_size,
            first_group,
            scales: Vec::with_capacity(capacity),
            mins: Vec::with_capacity(capacity),
            sub: matches!(codec, Codec::Int4S { .. }).then(|| Vec::with_capacity(capacity)),
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
    importance: Option<&[f32]>,
    groups: Range<usize>,
    bytes: &[u8],
) -> Result<QuantParams> {
    let mut vals = Vec::new();
    quant::to_f32(dtype, bytes, &mut vals);
    quant_params_of_values(name, codec, shape, importance, groups, &vals)
}

/// [`quant_params_in`] from the groups' values, already converted to f32.
/// `importance`, one weight per column, weights the searched fits (`int4m`, `int4s`; spec section
/// 4.7); the other fits ignore it.
fn quant_params_of_values(
    name: &str,
    codec: Codec,
    shape: &[u64],
    importance: Option<&[f32]>,
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
    // A searched fit's weights: the group's columns of the importance vector.
    let weights_of =
        |gi: usize| importance.map(|w| &w[col(gi, 0)..col(gi, 0) + group_of(gi).len()]);
    let int4_fit = |gi: usize,
                    fit: &dyn Fn(
        &[f32],
        Option<&[f32]>,
    ) -> std::result::Result<(f16, f16), quant::QuantError>| {
        fit(group_of(gi), weights_of(gi)).map_err(|e| match e {
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
        c if c.is_searched() => Some(
            groups
                .clone()
                .into_par_iter()
                .with_min_len(64)
                .map(|gi| int4_fit(gi, &quant::int4m_group_params))
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
        QuantParams::Int4 {
            scales,
            mins,
            sub: Some(sub),
            ..
        } => {
            // `groups` is whole super-blocks (see `param_groups`).
            let pairs = searched.unwrap_or_default();
            let mut at = groups.start;
            while at < groups.end {
                let block = tiling.widen(at..at + 1);
                let part = &pairs[block.start - groups.start..block.end - groups.start];
                let (d, dmin) = quant::int4s_factors(part);
                for (k, &pair) in part.iter().enumerate() {
                    let code = quant::int4s_sub_code(pair, d, dmin);
                    let (s, m) = quant::int4s_group_params(code, d, dmin);
                    if !s.is_finite() || !m.is_finite() {
                        let gi = block.start + k;
                        return Err(qerr(
                            gi,
                            format!("group {}: scale or min overflows f16", gi % tiling.per_row),
                        ));
                    }
                    scales.push(s);
                    mins.push(m);
                    sub.push(SubParams { code, d, dmin });
                }
                at = block.end;
            }
        }
        QuantParams::Int4 { scales, mins, .. } => match searched {
            Some(pairs) => (*scales, *mins) = pairs.into_iter().unzip(),
            None => {
                for gi in groups {
                    let (s, m) = int4_fit(gi, &|g, _| quant::int4_group_params(g))?;
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
#[allow(clippy::too_many_arguments)]
pub fn quantize_data_range(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    importance: Option<&[f32]>,
    range: Range<usize>,
    span: &[u8],
    vals: &mut Vec<f32>,
) -> Result<(Vec<u8>, QuantParams)> {
    let groups = param_groups(codec, shape, 0, &range);
    let span_at = group_source_range(codec, dtype, shape, &groups).start;
    let source = source_range(codec, dtype, 0, &range).unwrap_or(0..0);
    quant::to_f32(dtype, span, vals);
    let params = quant_params_of_values(name, codec, shape, importance, groups, vals)?;
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
                    QuantParams::Int4 {
                        scales, mins, sub, ..
                    } => {
                        scales.resize(groups, f16::ZERO);
                        mins.resize(groups, f16::ZERO);
                        if let Some(sub) = sub {
                            sub.resize(groups, SubParams::default());
                        }
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
                QuantParams::Int4 {
                    scales, mins, sub, ..
                },
                QuantParams::Int4 {
                    first_group,
                    scales: s,
                    mins: m,
                    sub: u,
                    ..
                },
            ) => {
                let at = *first_group..*first_group + s.len();
                scales[at.clone()].copy_from_slice(s);
                mins[at.clone()].copy_from_slice(m);
                if let (Some(sub), Some(u)) = (sub, u) {
                    sub[at.clone()].copy_from_slice(u);
                }
                at
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
                sub,
                ..
            } => QuantParams::Int4 {
                group_size: *group_size,
                first_group: g.start,
                scales: scales[g.clone()].to_vec(),
                mins: mins[g.clone()].to_vec(),
                sub: sub.as_ref().map(|u| u[g].to_vec()),
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
        (Codec::Int4 { .. } | Codec::Int4S { .. }, 0) => {
            Some(range.start * 2 * es..range.end * 2 * es)
        }
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
                ..
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
                group_size,
                first_group,
                sub: Some(sub),
                ..
            },
            1,
        ) => {
            let tiling = Tiling {
                cols,
                size: *group_size,
                per_row: cols / group_size,
                super_blocks: true,
            };
            let (first, last) = (range.start / 4, range.end.div_ceil(4));
            let bytes: Vec<u8> = (first..last)
                .flat_map(|j| {
                    let p = sub[tiling.block_groups(j).start - first_group];
                    [p.d.to_bits().to_le_bytes(), p.dmin.to_bits().to_le_bytes()]
                })
                .flatten()
                .collect();
            bytes[range.start - first * 4..range.end - first * 4].to_vec()
        }
        (
            QuantParams::Int4 {
                first_group,
                sub: Some(sub),
                ..
            },
            _,
        ) => range
            .map(|b| {
                // Byte b holds bits 8b..8b+8 of the stream: the end of group g's 12 bits and, when
                // they end inside it, the start of group g + 1's.
                let (g, shift) = (b * 8 / SUB_CODE_BITS, b * 8 % SUB_CODE_BITS);
                let mut word = sub[g - first_group].code as u32;
                if (g + 1) * SUB_CODE_BITS < b * 8 + 8 && g + 1 - first_group < sub.len() {
                    word |= (sub[g + 1 - first_group].code as u32) << SUB_CODE_BITS;
                }
                (word >> shift) as u8
            })
            .collect(),
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

/// The f16 scale and minimum of each of groups `groups` of an `int4`, `int4m` or `int4s` tensor,
/// from its parameter streams (`params`: the streams after `data`, as decoded): stored as they are
/// for `int4` and `int4m`, expanded from the factors and sub-codes for `int4s` (spec section 4.6).
/// Lengths are the codec's (a reader has checked them); `None` for any other codec.
pub fn int4_group_params<B: AsRef<[u8]>>(
    codec: Codec,
    shape: &[u64],
    params: &[B],
    groups: Range<usize>,
) -> Option<(Vec<f16>, Vec<f16>)> {
    let h = |b: &[u8], i: usize| f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]));
    match codec {
        Codec::Int4 { .. } => {
            let (s, m) = (params[0].as_ref(), params[1].as_ref());
            Some(groups.map(|g| (h(s, g), h(m, g))).unzip())
        }
        Codec::Int4S { .. } => {
            let tiling = Tiling::of(codec, shape)?;
            let (factors, subs) = (params[0].as_ref(), params[1].as_ref());
            Some(
                groups
                    .map(|g| {
                        let j = tiling.block_of(g);
                        let (d, dmin) = (h(factors, 2 * j), h(factors, 2 * j + 1));
                        let bit = g * SUB_CODE_BITS;
                        let at = bit / 8;
                        let word = subs[at] as u32 | (*subs.get(at + 1).unwrap_or(&0) as u32) << 8;
                        let code = ((word >> (bit % 8)) & 0xfff) as u16;
                        quant::int4s_group_params(code, d, dmin)
                    })
                    .unzip(),
            )
        }
        _ => None,
    }
}

/// [`int4_group_params`] of every group of the tensor.
pub fn int4_params<B: AsRef<[u8]>>(
    codec: Codec,
    shape: &[u64],
    params: &[B],
) -> Option<(Vec<f16>, Vec<f16>)> {
    let groups = Tiling::of(codec, shape)?.groups(shape);
    int4_group_params(codec, shape, params, 0..groups)
}

/// [`int4_params`] as `int4`'s `scales` and `mins` streams: little-endian f16, row-major.
pub fn int4_param_bytes<B: AsRef<[u8]>>(
    codec: Codec,
    shape: &[u64],
    params: &[B],
) -> Option<(Vec<u8>, Vec<u8>)> {
    let bytes = |v: Vec<f16>| v.iter().flat_map(|h| h.to_le_bytes()).collect();
    int4_params(codec, shape, params).map(|(s, m)| (bytes(s), bytes(m)))
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
        Codec::Int4 { group_size, .. } | Codec::Int4S { group_size } => {
            let g = group_size as usize;
            let gpr = cols / g;
            let (scales, mins) = int4_params(codec, shape, &streams[1..]).expect("an int4 codec");
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
        Codec::Int4 { group_size, .. } | Codec::Int4S { group_size } => {
            let g = group_size as usize;
            let gpr = cols / g;
            let group = |e: usize| (e / cols) * gpr + (e % cols) / g;
            if codes.is_empty() {
                return Vec::new();
            }
            let first = group(2 * at);
            let groups = first..group(2 * (at + codes.len()) - 1) + 1;
            let (scales, mins) =
                int4_group_params(codec, shape, params, groups).expect("an int4 codec");
            let mut out = Vec::with_capacity(codes.len() * 2);
            for (k, &b) in codes.iter().enumerate() {
                for (j, q) in [b & 0x0f, b >> 4].into_iter().enumerate() {
                    let gi = group(2 * (at + k) + j) - first;
                    out.push(quant::int4_dequantize(q, scales[gi], mins[gi]));
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
