//! A tensor's payload: from source bytes to each stream's decoded bytes (quantizing where the codec
//! says so), and back from streams to source-dtype bytes or f32 values.

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use crate::codec::Codec;
use crate::error::{FormatError, Result};
use crate::index::TensorEntry;
use crate::pack::SourceBytes;
use crate::quant;
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

/// What quantizing needs to know beyond each value: the per-row or per-group parameters.
pub enum QuantParams {
    None,
    /// `int8` (one group per row: `group_size == cols`) and `int8g`.
    Int8 {
        group_size: usize,
        scales: Vec<f32>,
    },
    Int4 {
        group_size: usize,
        scales: Vec<f16>,
        mins: Vec<f16>,
    },
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

/// [`quant_params`] over a source read a block of rows at a time (each block handed back with
/// [`SourceBytes::done`] once read), so memory holds a few rows, never the tensor.
pub fn quant_params_from(
    name: &str,
    codec: Codec,
    dtype: Dtype,
    shape: &[u64],
    src: &SourceBytes<'_>,
) -> Result<QuantParams> {
    let (rows, cols) = rows_cols(shape);
    let row_bytes = cols * dtype.size();
    let qerr = |row: usize, msg: String| FormatError::Quantize {
        tensor: name.to_string(),
        msg: format!("row {row}: {msg}"),
    };
    // Blocks of about 1 MiB of rows: few reads and releases, small memory per worker.
    let block = ((1usize << 20) / row_bytes.max(1)).max(1);
    let blocks = rows.div_ceil(block);
    let read_rows = |b: usize| {
        let (r0, r1) = (b * block, ((b + 1) * block).min(rows));
        (r0, r1, r0 * row_bytes..r1 * row_bytes)
    };
    match codec {
        Codec::Int8Row | Codec::Int8Group { .. } => {
            let g = codec.group_size().map_or(cols, |g| g as usize).max(1);
            let per_block = (0..blocks)
                .into_par_iter()
                .map_init(Vec::new, |buf, b| {
                    let (r0, r1, range) = read_rows(b);
                    let bytes = src.read(range.clone());
                    let mut scales = Vec::new();
                    for r in r0..r1 {
                        let off = (r - r0) * row_bytes;
                        quant::to_f32(dtype, &bytes[off..off + row_bytes], buf);
                        // A per-row scale exists even for an empty row (its scale is 0).
                        let groups: Vec<&[f32]> = if codec == Codec::Int8Row {
                            vec![&buf[..]]
                        } else {
                            buf.chunks(g).collect()
                        };
                        for (k, group) in groups.into_iter().enumerate() {
                            scales.push(quant::int8_scale(group).map_err(|j| {
                                qerr(r, format!("element {} is NaN or infinite", k * g + j))
                            })?);
                        }
                    }
                    drop(bytes);
                    src.done(range);
                    Ok(scales)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(QuantParams::Int8 {
                group_size: g,
                scales: per_block.into_iter().flatten().collect(),
            })
        }
        Codec::Int4 { group_size } => {
            let g = group_size as usize;
            let per_block = (0..blocks)
                .into_par_iter()
                .map_init(Vec::new, |buf, b| {
                    let (r0, r1, range) = read_rows(b);
                    let bytes = src.read(range.clone());
                    let mut params = Vec::new();
                    for r in r0..r1 {
                        let off = (r - r0) * row_bytes;
                        quant::to_f32(dtype, &bytes[off..off + row_bytes], buf);
                        for (k, group) in buf.chunks_exact(g).enumerate() {
                            params.push(quant::int4_group_params(group).map_err(|e| match e {
                                quant::QuantError::NonFinite { index } => {
                                    qerr(r, format!("element {} is NaN or infinite", k * g + index))
                                }
                                quant::QuantError::ScaleOverflow { .. } => {
                                    qerr(r, format!("group {k}: scale or min overflows f16"))
                                }
                            })?);
                        }
                    }
                    drop(bytes);
                    src.done(range);
                    Ok(params)
                })
                .collect::<Result<Vec<_>>>()?;
            let (scales, mins) = per_block.into_iter().flatten().unzip();
            Ok(QuantParams::Int4 {
                group_size: g,
                scales,
                mins,
            })
        }
        _ => Ok(QuantParams::None),
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
    let (_, cols) = rows_cols(shape);
    match (params, stream) {
        (QuantParams::None, _) => part.to_vec(),
        (QuantParams::Int8 { group_size, scales }, 0) => {
            let mut vals = Vec::new();
            quant::to_f32(dtype, part, &mut vals);
            let mut out = vec![0u8; range.len()];
            let groups_per_row = cols.div_ceil(*group_size);
            let mut at = 0;
            while at < range.len() {
                let e = range.start + at;
                let (row, col) = (e / cols, e % cols);
                let gi = row * groups_per_row + col / group_size;
                // Up to the end of this group (a group never spans rows).
                let n = (group_size - col % group_size).min(range.len() - at);
                quant::int8_quantize(&vals[at..at + n], scales[gi], &mut out[at..at + n]);
                at += n;
            }
            out
        }
        (QuantParams::Int8 { scales, .. }, _) => {
            let first = range.start / 4;
            let last = range.end.div_ceil(4);
            let bytes: Vec<u8> = scales[first..last]
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect();
            bytes[range.start - first * 4..range.end - first * 4].to_vec()
        }
        (
            QuantParams::Int4 {
                group_size,
                scales,
                mins,
            },
            0,
        ) => {
            let e0 = range.start * 2;
            let mut vals = Vec::new();
            quant::to_f32(dtype, part, &mut vals);
            let groups_per_row = cols / group_size;
            let code = |e: usize, x: f32| {
                let (row, col) = (e / cols, e % cols);
                let gi = row * groups_per_row + col / group_size;
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
        (QuantParams::Int4 { scales, mins, .. }, s) => {
            let v = if s == 1 { scales } else { mins };
            let first = range.start / 2;
            let last = range.end.div_ceil(2);
            let bytes: Vec<u8> = v[first..last]
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
        Codec::Int4 { group_size } => {
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
        Codec::Int4 { group_size } => {
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
