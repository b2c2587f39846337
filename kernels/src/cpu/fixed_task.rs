//! The tasks of a matrix product ([`matmul`](super::matmul)) whose weights are multiplied in
//! fixed point, int8 and int4 (decision records 0025, 0028): each block of weight rows described
//! once, the kernel picked per ISA (VNNI, AVX2, plain loops), every choice giving the
//! definition's bits. Activation rows without a fixed form take the float path of `matmul`.

use super::dot::Lanes;
use super::fixed::{self, FixedRow, Int8Src, Scales};
use super::fixed4::{self, Fixed4, Int4Rows};
use super::int4_blocks::{Int4Blocks, BLOCK_ROWS};
use super::isa::{multiversion, Isa};
use super::matmul::{rows_task, ROW_BLOCK};
use crate::weights::{Weight, WeightData};

/// Whether `w` is multiplied in fixed point ([`fixed_task`]): int8, and int4 of the group
/// sizes [`fixed4`] takes.
pub(super) fn is_fixed(w: &Weight) -> bool {
    matches!(
        w.data,
        WeightData::Int8Row { .. } | WeightData::Int8Group { .. }
    ) || is_fixed_int4(w)
}

pub(super) fn is_fixed_int4(w: &Weight) -> bool {
    match w.data {
        WeightData::Int4 { group_size, .. } => fixed4::takes_fixed(group_size),
        WeightData::Int4Blocked(_) => true,
        _ => false,
    }
}

/// The rows a task of `w` starts at a multiple of: whole blocks of an [`Int4Blocks`] weight.
pub(super) fn row_alignment(w: &Weight) -> usize {
    match w.data {
        WeightData::Int4Blocked(_) => BLOCK_ROWS,
        _ => ROW_BLOCK,
    }
}

/// The activation rows in fixed point (`None` where a row has no fixed form), and their int4
/// layout where an int4 weight is among the jobs.
#[derive(Clone, Copy)]
pub(super) struct Fixed<'a> {
    pub rows: &'a [Option<FixedRow>],
    pub int4: &'a [Option<Fixed4>],
}

/// Row `r` of an int8 weight and its scales.
#[inline(always)]
pub(super) fn int8_src(w: &Weight, r: usize) -> Int8Src<'_> {
    let cols = w.cols;
    let span = r * cols..(r + 1) * cols;
    match &w.data {
        WeightData::Int8Row { q, scales } => Int8Src {
            q: &q[span],
            scales: Scales::Row(scales[r]),
        },
        WeightData::Int8Group {
            q,
            scales,
            group_size,
        } => {
            let groups = cols / group_size;
            Int8Src {
                q: &q[span],
                scales: Scales::Groups {
                    scales: &scales[r * groups..(r + 1) * groups],
                    group_size: *group_size,
                },
            }
        }
        _ => unreachable!("int8_src is called on int8 weights only"),
    }
}

/// [`rows_task`] for weights multiplied in fixed point (int8, int4): each weight row against
/// each activation row with a fixed form, four weight rows side by side while four remain (each
/// with the bits it has alone); activation rows without one take the float path.
pub(super) fn fixed_task(
    isa: Isa,
    w: &Weight,
    x: &[f32],
    n: usize,
    row0: usize,
    out: &mut [f32],
    fixed: Fixed<'_>,
) {
    if fixed.rows.iter().any(Option::is_none) {
        let mut buf = vec![0f32; ROW_BLOCK * w.cols];
        for (t, f) in fixed.rows.iter().enumerate() {
            if f.is_none() {
                rows_task(isa, w, x, n, row0, out, &mut buf, t..t + 1);
            }
        }
    }
    let nrows = out.len() / n;
    if let WeightData::Int4Blocked(blocks) = &w.data {
        return int4_block_task(isa, blocks, n, row0, out, fixed);
    }
    if let Some(rows) = Int4Rows::of(w) {
        // Not prepared for the CPU: the plain loops, the same bits.
        for i in 0..nrows {
            for (t, fx) in fixed.rows.iter().enumerate() {
                if let Some(fx) = fx {
                    out[i * n + t] = fixed4::dot_portable(&rows, row0 + i, fx);
                }
            }
        }
        return;
    }
    let mut i = 0;
    while i < nrows {
        let k = if i + ROW_BLOCK <= nrows { ROW_BLOCK } else { 1 };
        let r = |j: usize| row0 + i + j.min(k - 1);
        for (t, fx) in fixed.rows.iter().enumerate() {
            let Some(fx) = fx else { continue };
            let mut y = [0f32; ROW_BLOCK];
            // Written out, not `from_fn`: its closure call is not inlined and costs more than
            // the short rows' products.
            let rows = [
                int8_src(w, r(0)),
                int8_src(w, r(1)),
                int8_src(w, r(2)),
                int8_src(w, r(3)),
            ];
            int8_dots(isa, &rows[..k], fx, &mut y[..k]);
            for (j, v) in y[..k].iter().enumerate() {
                out[(i + j) * n + t] = *v;
            }
        }
        i += k;
    }
}

/// Rows `row0..row0 + out.len() / n` (`row0` a multiple of [`BLOCK_ROWS`]) of an int4 weight in
/// blocks, against each activation row with a fixed form.
fn int4_block_task(
    isa: Isa,
    w: &Int4Blocks,
    n: usize,
    row0: usize,
    out: &mut [f32],
    fixed: Fixed<'_>,
) {
    debug_assert!(row0.is_multiple_of(BLOCK_ROWS));
    let nrows = out.len() / n;
    for b in row0 / BLOCK_ROWS..(row0 + nrows).div_ceil(BLOCK_ROWS) {
        let first = b * BLOCK_ROWS - row0;
        for (t, (fx, f4)) in fixed.rows.iter().zip(fixed.int4).enumerate() {
            let (Some(fx), Some(f4)) = (fx, f4) else {
                continue;
            };
            let y = int4_block(isa, w, b, fx, f4);
            for (j, v) in y.iter().take(nrows - first).enumerate() {
                out[(first + j) * n + t] = *v;
            }
        }
    }
}

/// Block `b` of `w` . x in the int4 fixed-point arithmetic, by VNNI where the ISA has it, AVX2's
/// byte multiply-adds on other AVX2 / AVX-512 machines and plain loops on the baseline: the same
/// bits.
fn int4_block(isa: Isa, w: &Int4Blocks, b: usize, x: &FixedRow, x4: &Fixed4) -> [f32; BLOCK_ROWS] {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: `Isa::Avx512Vnni` is only produced after detecting AVX-512 F/BW and VNNI; the
        // activation row has the weight's columns (checked by `matmul`).
        return unsafe { fixed4::block_vnni(w, b, x, x4) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `Isa::Avx2` and above are only produced after detecting AVX2 and F16C.
        return unsafe { fixed4::block_avx2(w, b, x, x4) };
    }
    let _ = (isa, x4);
    fixed4::block_portable(w, b, x)
}

/// `y[j] = rows[j] . x` (one or four rows) in the fixed-point arithmetic, by VNNI where the ISA
/// has it, AVX2's 16-bit multiply-adds on other AVX2 / AVX-512 machines and plain loops on the
/// baseline: the same bits.
fn int8_dots(isa: Isa, rows: &[Int8Src<'_>], x: &FixedRow, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: `Isa::Avx512Vnni` is only produced after detecting AVX-512 F/BW and VNNI.
        return by_rows(
            rows,
            y,
            |r| unsafe { fixed::dots_vnni(r, x) },
            |r| unsafe { fixed::dots_vnni(r, x) },
        );
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `Isa::Avx2` and above are only produced after detecting AVX2.
        return by_rows(
            rows,
            y,
            |r| unsafe { fixed::dots_avx2(r, x) },
            |r| unsafe { fixed::dots_avx2(r, x) },
        );
    }
    int8_dots_plain(isa, rows, x, y);
}

/// `y = four(rows)` for four rows, else `one` row by row.
#[inline(always)]
fn by_rows<'a>(
    rows: &[Int8Src<'a>],
    y: &mut [f32],
    four: impl FnOnce([Int8Src<'a>; 4]) -> [f32; 4],
    one: impl Fn([Int8Src<'a>; 1]) -> [f32; 1],
) {
    match rows {
        [a, b, c, d] => y.copy_from_slice(&four([*a, *b, *c, *d])),
        _ => {
            for (v, r) in y.iter_mut().zip(rows) {
                *v = one([*r])[0];
            }
        }
    }
}

multiversion!(fn int8_dots_plain => int8_dots_generic(
    rows: &[Int8Src<'_>],
    x: &FixedRow,
    y: &mut [f32],
));

#[inline(always)]
fn int8_dots_generic(_lanes: impl Lanes, rows: &[Int8Src<'_>], x: &FixedRow, y: &mut [f32]) {
    by_rows(
        rows,
        y,
        |r| fixed::dots_portable(r, x),
        |r| fixed::dots_portable(r, x),
    );
}
