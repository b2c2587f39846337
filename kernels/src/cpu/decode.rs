//! Turning one row of a [`Weight`] into f32 values, for every [`WeightData`] form, and checking
//! that a weight's buffers agree with its declared shape.
//!
//! The matrix kernels decode one row at a time into a small scratch buffer and immediately use
//! it, so quantized matrices are never expanded as a whole. For per-row int8 the matrix kernels
//! use the *unscaled* row (`q as f32`, exact) and multiply the finished dot product by the row's
//! scale; [`Weight::dequantize_row`] gives the scaled values for lookups (embeddings, norms).
//! Group-wise int8 has several scales per row, which no single post-multiplication can apply, so
//! it decodes to the dequantized `q as f32 * scale` like every other form.

use half::slice::HalfFloatSliceExt;

use super::error::KernelError;
use crate::weights::{Weight, WeightData};

impl Weight {
    /// Number of int4 scale groups per row (the last group may be short).
    pub fn int4_groups_per_row(&self) -> Option<usize> {
        match &self.data {
            WeightData::Int4 { group_size, .. } if *group_size > 0 => {
                Some(self.cols.div_ceil(*group_size))
            }
            WeightData::Int4Blocked(b) => Some(self.cols.div_ceil(b.group_size())),
            _ => None,
        }
    }

    /// Checks that the payload (and scales) have exactly the lengths `rows x cols` implies.
    pub fn validate(&self) -> Result<(), KernelError> {
        let (rows, cols) = (self.rows, self.cols);
        let n = rows.checked_mul(cols).ok_or(KernelError::WeightLength {
            what: "element count",
            rows,
            cols,
            expected: usize::MAX,
            actual: 0,
        })?;
        let check = |what, expected, actual| {
            if expected == actual {
                Ok(())
            } else {
                Err(KernelError::WeightLength {
                    what,
                    rows,
                    cols,
                    expected,
                    actual,
                })
            }
        };
        match &self.data {
            WeightData::F32(v) => check("f32 values", n, v.len()),
            WeightData::Bf16(v) => check("bf16 values", n, v.len()),
            WeightData::F16(v) => check("f16 values", n, v.len()),
            WeightData::Int8Row { q, scales } => {
                check("int8 values", n, q.len())?;
                check("int8 row scales", rows, scales.len())
            }
            WeightData::Int8Group {
                q,
                scales,
                group_size,
            } => {
                // Multiples of 16 keep every 16-value chunk inside one group (see `rows`).
                let gs = *group_size;
                if gs == 0 || !gs.is_multiple_of(16) || !cols.is_multiple_of(gs) {
                    return Err(KernelError::Int8GroupSize {
                        group_size: gs,
                        cols,
                    });
                }
                check("int8 group-wise values", n, q.len())?;
                check("int8 group scales", rows * (cols / gs), scales.len())
            }
            WeightData::Int4 {
                packed,
                scales,
                mins,
                group_size,
            } => {
                if *group_size == 0 || group_size % 2 != 0 {
                    return Err(KernelError::Int4GroupSize(*group_size));
                }
                if cols % 2 != 0 {
                    return Err(KernelError::Int4OddColumns(cols));
                }
                let groups = rows * cols.div_ceil(*group_size);
                check("int4 packed bytes", n / 2, packed.len())?;
                check("int4 group scales", groups, scales.len())?;
                check("int4 group mins", groups, mins.len())
            }
            WeightData::Int4Blocked(b) => {
                check("int4 block rows", rows, b.rows())?;
                check("int4 block columns", cols, b.cols())
            }
        }
    }

    /// Writes row `row`, dequantized to f32 (int8 scales applied: `q as f32 * scale`), into `out`.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.validate()?;
        if row >= self.rows {
            return Err(KernelError::RowOutOfRange {
                row,
                rows: self.rows,
            });
        }
        super::error::check_len("dequantized row", self.cols, out.len())?;
        if let Some(scale) = decode_row_unscaled(self, row, out) {
            for v in out.iter_mut() {
                *v *= scale;
            }
        }
        Ok(())
    }

    /// The whole weight as f32 values, row-major (tests and tiny tensors such as norm weights).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, KernelError> {
        self.validate()?;
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
                self.dequantize_row(r, row)?;
            }
        }
        Ok(out)
    }
}

/// Writes row `row` of a *validated* weight into `out` (length `cols`). For per-row int8 writes
/// the unscaled `q as f32` and returns the row scale that the caller must apply; otherwise
/// (group-wise int8 included) writes the dequantized values and returns `None`.
#[inline(always)]
pub(crate) fn decode_row_unscaled(w: &Weight, row: usize, out: &mut [f32]) -> Option<f32> {
    let cols = w.cols;
    let start = row * cols;
    match &w.data {
        WeightData::F32(v) => {
            out.copy_from_slice(&v[start..start + cols]);
            None
        }
        WeightData::Bf16(v) => {
            // bf16 -> f32 is exact: the bf16 bits are the high half of the f32.
            for (o, b) in out.iter_mut().zip(&v[start..start + cols]) {
                *o = f32::from_bits((b.to_bits() as u32) << 16);
            }
            None
        }
        WeightData::F16(v) => {
            // Exact conversion; `half` uses F16C instructions when the CPU has them.
            v[start..start + cols].convert_to_f32_slice(out);
            None
        }
        WeightData::Int8Row { q, scales } => {
            for (o, &b) in out.iter_mut().zip(&q[start..start + cols]) {
                *o = b as f32;
            }
            Some(scales[row])
        }
        WeightData::Int8Group {
            q,
            scales,
            group_size,
        } => {
            let gs = *group_size;
            let groups = cols / gs;
            let row_q = &q[start..start + cols];
            let row_scales = &scales[row * groups..(row + 1) * groups];
            // One f32 rounding, as the format defines it: `q as f32` is exact.
            for ((o, qg), &s) in out
                .chunks_exact_mut(gs)
                .zip(row_q.chunks_exact(gs))
                .zip(row_scales)
            {
                for (o, &b) in o.iter_mut().zip(qg) {
                    *o = b as f32 * s;
                }
            }
            None
        }
        WeightData::Int4 {
            packed,
            scales,
            mins,
            group_size,
        } => {
            let gs = *group_size;
            let groups = cols.div_ceil(gs);
            let row_bytes = &packed[start / 2..(start + cols) / 2];
            for g in 0..groups {
                let c0 = g * gs;
                let c1 = (c0 + gs).min(cols);
                let scale = scales[row * groups + g].to_f32();
                let min = mins[row * groups + g].to_f32();
                let bytes = row_bytes[c0 / 2..c1 / 2].iter().copied();
                decode_int4_group(bytes, scale, min, &mut out[c0..c1]);
            }
            None
        }
        WeightData::Int4Blocked(b) => {
            b.decode_row(row, out);
            None
        }
    }
}

/// One int4 group's packed bytes (low nibble first) dequantized into `out`: two f32 roundings,
/// in the format's order, `(nibble * scale) + min`.
#[inline(always)]
pub(crate) fn decode_int4_group(
    bytes: impl Iterator<Item = u8>,
    scale: f32,
    min: f32,
    out: &mut [f32],
) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = (b & 0x0f) as f32 * scale + min;
        pair[1] = (b >> 4) as f32 * scale + min;
    }
}
