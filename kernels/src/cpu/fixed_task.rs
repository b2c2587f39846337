//! The tasks of a matrix product ([`matmul`](super::matmul)) whose weights are multiplied in
//! fixed point, int8 and int4 (decision records 0025, 0026): each block of weight rows described
//! once, the kernel picked per ISA (VNNI, AVX2, plain loops), every choice giving the
//! definition's bits. Activation rows without a fixed form take the float path of `matmul`.

use super::dot::Lanes;
use super::fixed::{self, FixedRow, Int8Src, Scales};
use super::fixed4::{self, Fixed4, Int4Src};
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
    matches!(w.data, WeightData::Int4 { group_size, .. } if fixed4::takes_fixed(group_size))
}

/// The activation rows in fixed point (`None` where a row has no fixed form), and their int4
/// layout where an int4 weight is among the jobs.
#[derive(Clone, Copy)]
pub(super) struct Fixed<'a> {
    pub rows: &'a [Option<FixedRow>],
    pub int4: &'a [Option<Fixed4>],
}

/// Rows `r..r + k` of an int4 weight and their parameters.
#[inline(always)]
pub(super) fn int4_src(w: &Weight, r: usize, k: usize) -> Int4Src<'_> {
    let WeightData::Int4 {
        packed,
        scales,
        mins,
        group_size,
    } = &w.data
    else {
        unreachable!("int4_src is called on int4 weights only")
    };
    let (half, groups) = (w.cols / 2, w.cols.div_ceil(*group_size));
    Int4Src {
        packed: &packed[r * half..(r + k) * half],
        scales: &scales[r * groups..(r + k) * groups],
        mins: &mins[r * groups..(r + k) * groups],
        group_size: *group_size,
    }
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
    let int4 = matches!(w.data, WeightData::Int4 { .. });
    let nrows = out.len() / n;
    let mut i = 0;
    while i < nrows {
        let k = if i + ROW_BLOCK <= nrows { ROW_BLOCK } else { 1 };
        let r = |j: usize| row0 + i + j.min(k - 1);
        for (t, fx) in fixed.rows.iter().enumerate() {
            let Some(fx) = fx else { continue };
            let mut y = [0f32; ROW_BLOCK];
            if int4 {
                let Some(f4) = &fixed.int4[t] else { continue };
                int4_dots(isa, int4_src(w, row0 + i, k), fx, f4, &mut y[..k]);
            } else {
                // Written out, not `from_fn`: its closure call is not inlined and costs more
                // than the short rows' products.
                let rows = [
                    int8_src(w, r(0)),
                    int8_src(w, r(1)),
                    int8_src(w, r(2)),
                    int8_src(w, r(3)),
                ];
                int8_dots(isa, &rows[..k], fx, &mut y[..k]);
            }
            for (j, v) in y[..k].iter().enumerate() {
                out[(i + j) * n + t] = *v;
            }
        }
        i += k;
    }
}

/// `y[j] = row j of the block . x` (a block of one or four rows) in the int4 fixed-point
/// arithmetic, by VNNI where the ISA has it, AVX2's byte multiply-adds on other AVX2 / AVX-512
/// machines and plain loops on the baseline: the same bits.
fn int4_dots(isa: Isa, rows: Int4Src<'_>, x: &FixedRow, x4: &Fixed4, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: `Isa::Avx512Vnni` is only produced after detecting AVX-512 F/BW and VNNI, and
        // the block has `y.len()` rows of `x.cols()` columns.
        match y.len() {
            4 => y.copy_from_slice(&unsafe { fixed4::dots4_vnni::<4>(rows, x, x4) }),
            _ => y.copy_from_slice(&unsafe { fixed4::dots4_vnni::<1>(rows, x, x4) }),
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `Isa::Avx2` and above are only produced after detecting AVX2 and F16C.
        match y.len() {
            4 => y.copy_from_slice(&unsafe { fixed4::dots4_avx2::<4>(rows, x, x4) }),
            _ => y.copy_from_slice(&unsafe { fixed4::dots4_avx2::<1>(rows, x, x4) }),
        }
        return;
    }
    match y.len() {
        4 => y.copy_from_slice(&fixed4::dots4_portable::<4>(rows, x, x4)),
        _ => y.copy_from_slice(&fixed4::dots4_portable::<1>(rows, x, x4)),
    }
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
