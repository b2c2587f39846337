//! Products of int8 weights (per row or per group) with an activation row held in exact fixed
//! point: integer multiply-adds, exact whatever the instructions, rounded once per lane and step.
//!
//! The arithmetic, which every instruction set performs identically (decision record 0025):
//!
//! - **x in fixed point.** With `m = max |x[i]|` and `e = ilogb(m)`, the row's shift is
//!   `S = 20 - e` (0 when `m` is 0), and `X[i] = round_ties_even(x[i] * 2^S)`, an integer with
//!   `|X[i]| <= 2^21`. A row with a non-finite value, or whose `S` falls outside `-100..=100`,
//!   has no fixed form ([`FixedRow::new`] gives `None`) and takes the float path instead.
//! - **Exact lane sums.** Columns are taken in steps of 64; lane `l` (0..16) of step `s` is the
//!   exact integer `I[s][l] = sum_j q[c] * X[c]` over the four columns `c = 64s + 4l + j`
//!   (columns past the row count as zero). `|I| <= 4 * 128 * 2^21 = 2^30`.
//! - **One rounding per lane and step.** `acc[l]` starts at +0.0 and takes, step after step,
//!   `acc[l] += f32(I[s][l]) * scale[l]` (conversion rounded to nearest even, product and sum
//!   each rounded, never fused), where `scale[l]` is the scale of the group holding lane `l`'s
//!   columns (group sizes are multiples of 16, so a lane never straddles two) or 1.0 for
//!   per-row int8.
//! - **Finish.** The 16 lanes combine by the fixed tree of [`dot`](super::dot), then
//!   `y = (tree * row_scale) * 2^-S` with `row_scale` the per-row scale (1.0 for groups).
//!
//! The integer sums do not depend on how they are computed, so the portable loop, its
//! auto-vectorized copies and the AVX-512 VNNI kernel give the same bits. VNNI's `vpdpbusd`
//! multiplies unsigned by signed bytes: the weights are offset to `q + 128` and X is split into
//! three signed base-256 digits, `X = D0 + 256 D1 + 65536 D2`; the offset's contribution
//! `128 * sum X` is precomputed per lane and step and subtracted, all in wrapping i32 arithmetic
//! whose result is the exact `I` because `I` itself fits.

use super::dot::{combine_lanes, Lanes, LANES};
use super::isa::{isa, multiversion};

/// Columns per step: 16 lanes of 4 columns.
pub(crate) const STEP: usize = 64;

/// `|X| <= 2^X_BITS`: 4 products of `|q| <= 128` and `|X| <= 2^21` fit an i32 lane.
const X_BITS: i32 = 21;

/// The shifts a row may take: `2^S` and `2^-S` are normal f32.
const MAX_SHIFT: i32 = 100;

/// One step of a fixed-point row: the three digit planes of its 64 columns and the offset
/// correction `128 * sum X` of each lane. 256 bytes, cache-line aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Step {
    digits: [[i8; STEP]; 3],
    correction: [i32; LANES],
}

/// An activation row in fixed point; see the module documentation.
pub(crate) struct FixedRow {
    steps: Vec<Step>,
    /// `X`, zero-padded to whole 128-column steps (the plain loops' operand).
    ints: Vec<i32>,
    /// `X = halves[1] * 2^16 + halves[0]`, the low half signed (AVX2's 16-bit operands).
    halves: [Vec<i16>; 2],
    /// `2^-S`.
    unscale: f32,
    cols: usize,
}

impl FixedRow {
    /// The fixed form of `x`, or `None` when it has a non-finite value or a shift outside the
    /// allowed range (such rows take the float path).
    pub(crate) fn new(x: &[f32]) -> Option<FixedRow> {
        build(isa(), x)
    }
}

// Building a row is on the decode's serial path (once per product of a token), so its passes are
// plain loops the compiler vectorizes, compiled per ISA; they are integer or exact operations, so
// every copy builds the same row.
multiversion!(fn build => build_generic(x: &[f32]) -> Option<FixedRow>);

#[inline(always)]
fn build_generic(_lanes: impl Lanes, x: &[f32]) -> Option<FixedRow> {
    // max |x| by its bits: the order of non-negative floats is their bits' order, and
    // every non-finite value is at or above infinity's.
    let top = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    if top >= f32::INFINITY.to_bits() {
        return None;
    }
    let m = f32::from_bits(top);
    let shift = if m == 0.0 {
        0
    } else {
        if m < f32::MIN_POSITIVE {
            return None; // subnormal: its shift is out of range anyway
        }
        let e = ((top >> 23) & 0xff) as i32 - 127;
        X_BITS - 1 - e
    };
    if !(-MAX_SHIFT..=MAX_SHIFT).contains(&shift) {
        return None;
    }
    let scale = 2f32.powi(shift);
    // Padded to whole int4 steps (128 columns), which are whole int8 steps too.
    let mut ints = vec![0i32; x.len().div_ceil(PAD) * PAD];
    for (i, &v) in ints.iter_mut().zip(x) {
        // Exact scaling by a power of two, then one rounding; |X| <= 2^21.
        *i = round_ties_even(v * scale);
    }
    let zero = Step {
        digits: [[0; STEP]; 3],
        correction: [0; LANES],
    };
    let mut steps = vec![zero; x.len().div_ceil(STEP)];
    for (step, is) in steps.iter_mut().zip(ints.chunks_exact(STEP)) {
        for (c, &xi) in is.iter().enumerate() {
            let [d0, d1, d2] = FixedRow::digits(xi);
            step.digits[0][c] = d0;
            step.digits[1][c] = d1;
            step.digits[2][c] = d2;
        }
        for (l, v) in step.correction.iter_mut().enumerate() {
            let sum = is[4 * l]
                .wrapping_add(is[4 * l + 1])
                .wrapping_add(is[4 * l + 2])
                .wrapping_add(is[4 * l + 3]);
            *v = sum.wrapping_mul(128);
        }
    }
    let lo: Vec<i16> = ints.iter().map(|&v| v as i16).collect();
    let hi = ints
        .iter()
        .zip(&lo)
        .map(|(&v, &l)| ((v - l as i32) >> 16) as i16)
        .collect();
    Some(FixedRow {
        steps,
        ints,
        halves: [lo, hi],
        unscale: 2f32.powi(-shift),
        cols: x.len(),
    })
}

/// What `ints` is padded to: whole steps of int8's and int4's layouts.
const PAD: usize = 128;

impl FixedRow {
    /// `X = D0 + 256 D1 + 65536 D2`: the three signed base-256 digits of `|X| <= 2^21`.
    #[inline(always)]
    pub(crate) fn digits(xi: i32) -> [i8; 3] {
        let d0 = xi as i8;
        let x1 = (xi - d0 as i32) >> 8;
        let d1 = x1 as i8;
        let d2 = ((x1 - d1 as i32) >> 8) as i8;
        [d0, d1, d2]
    }

    /// `X`, zero-padded to whole 128-column steps.
    pub(crate) fn ints(&self) -> &[i32] {
        &self.ints
    }

    /// The row's width.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// `2^-S`.
    pub(crate) fn unscale(&self) -> f32 {
        self.unscale
    }
}

/// `round_ties_even(y)` for `|y| <= 2^22`: adding and subtracting 1.5 * 2^23 leaves `y` rounded
/// to an integer by the addition's own rounding (to nearest, ties to even), in two IEEE
/// operations that need no SSE4.1 or libm call.
#[inline(always)]
fn round_ties_even(y: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    ((y + MAGIC) - MAGIC) as i32
}

/// Where an int8 row's scales come from.
#[derive(Clone, Copy)]
pub(crate) enum Scales<'a> {
    /// Per-row int8: lanes unscaled (1.0), the row's scale applied to the finished sum.
    Row(f32),
    /// Group-wise int8: the row's group scales (`cols / group_size` values).
    Groups {
        scales: &'a [f32],
        group_size: usize,
    },
}

/// One int8 weight row and its scales.
#[derive(Clone, Copy)]
pub(crate) struct Int8Src<'a> {
    pub q: &'a [i8],
    pub scales: Scales<'a>,
}

impl Int8Src<'_> {
    /// The scale of lane `l` of step `s` (1.0 for per-row int8; 0.0 past the row, where the lane
    /// sum is 0 and the accumulator, never -0.0, is unchanged either way).
    #[inline(always)]
    fn lane_scale(&self, s: usize, l: usize) -> f32 {
        match self.scales {
            Scales::Row(_) => 1.0,
            Scales::Groups { scales, group_size } => {
                let c = s * STEP + l * 4;
                scales.get(c / group_size).copied().unwrap_or(0.0)
            }
        }
    }

    /// The 16 lane scales of step `s`: [`Int8Src::lane_scale`] for each lane.
    #[inline(always)]
    fn step_scales(&self, s: usize) -> [f32; LANES] {
        let mut v = [0f32; LANES];
        match self.scales {
            Scales::Row(_) => v = [1.0; LANES],
            Scales::Groups { scales, group_size } if group_size.is_multiple_of(STEP) => {
                v = [scales[s * STEP / group_size]; LANES];
            }
            Scales::Groups { scales, group_size } if STEP.is_multiple_of(group_size) => {
                let per_step = STEP / group_size;
                for (l, v) in v.iter_mut().enumerate() {
                    *v = scales
                        .get(s * per_step + 4 * l / group_size)
                        .copied()
                        .unwrap_or(0.0);
                }
            }
            Scales::Groups { .. } => {
                for (l, v) in v.iter_mut().enumerate() {
                    *v = self.lane_scale(s, l);
                }
            }
        }
        v
    }

    /// The row's group scales (empty for per-row int8).
    #[inline(always)]
    fn group_scales(&self) -> &[f32] {
        match self.scales {
            Scales::Row(_) => &[],
            Scales::Groups { scales, .. } => scales,
        }
    }

    #[inline(always)]
    fn row_scale(&self) -> f32 {
        match self.scales {
            Scales::Row(s) => s,
            Scales::Groups { .. } => 1.0,
        }
    }
}

/// `rows[j] . x` for each row, in the module's arithmetic, by plain loops (the baseline path,
/// and the AVX2 / AVX-512 copies' when they inline it: written so that they vectorize).
#[inline(always)]
pub(crate) fn dots_portable<const N: usize>(rows: [Int8Src<'_>; N], x: &FixedRow) -> [f32; N] {
    let mut out = [0f32; N];
    for (o, row) in out.iter_mut().zip(rows) {
        let q = &row.q[..x.cols];
        let mut acc = [0f32; LANES];
        for (s, (qs, xs)) in q.chunks(STEP).zip(x.ints.chunks_exact(STEP)).enumerate() {
            let mut prod = [0i32; STEP];
            for ((p, &w), &xv) in prod.iter_mut().zip(qs).zip(xs) {
                *p = w as i32 * xv;
            }
            let scales = row.step_scales(s);
            for l in 0..LANES {
                let i = prod[4 * l] + prod[4 * l + 1] + prod[4 * l + 2] + prod[4 * l + 3];
                acc[l] += i as f32 * scales[l];
            }
        }
        let tree = combine_lanes(&acc);
        *o = (tree * row.row_scale()) * x.unscale;
    }
    out
}

/// [`dots_portable`] with AVX2, the same bits: `vpmaddwd` on the weights widened to 16 bits and
/// the two 16-bit halves of X gives exact sums of column pairs, added pairwise into the lanes.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn dots_avx2<const N: usize>(rows: [Int8Src<'_>; N], x: &FixedRow) -> [f32; N] {
    use std::arch::x86_64::*;
    let cols = x.cols;
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let (lo, hi) = (x.halves[0].as_ptr(), x.halves[1].as_ptr());
    for s in 0..cols.div_ceil(STEP) {
        let c0 = s * STEP;
        // The halves of X for the step's four blocks of 16 columns.
        let mut xl = [_mm256_setzero_si256(); 4];
        let mut xh = [_mm256_setzero_si256(); 4];
        for b in 0..4 {
            xl[b] = _mm256_loadu_si256(lo.add(c0 + 16 * b) as *const __m256i);
            xh[b] = _mm256_loadu_si256(hi.add(c0 + 16 * b) as *const __m256i);
        }
        for j in 0..N {
            let mut tail = [0i8; STEP];
            let q = if c0 + STEP <= cols {
                let p = rows[j].q.as_ptr().add(c0);
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_ROWS * cols));
                p
            } else {
                tail[..cols - c0].copy_from_slice(&rows[j].q[c0..cols]);
                tail.as_ptr()
            };
            // Exact sums of column pairs (2k, 2k + 1) of each block: |sum| <= 2^29.
            let mut pairs = [_mm256_setzero_si256(); 4];
            for b in 0..4 {
                let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(q.add(16 * b) as *const __m128i));
                let l = _mm256_madd_epi16(w, xl[b]);
                let h = _mm256_madd_epi16(w, xh[b]);
                pairs[b] = _mm256_add_epi32(l, _mm256_slli_epi32::<16>(h));
            }
            let scales = rows[j].step_scales(s);
            for half in 0..2 {
                // hadd gives lanes [0, 1, 4, 5 | 2, 3, 6, 7] of the half; vpermq restores order.
                let sums = _mm256_hadd_epi32(pairs[2 * half], pairs[2 * half + 1]);
                let ints = _mm256_permute4x64_epi64::<0b11_01_10_00>(sums);
                let sc = _mm256_loadu_ps(scales.as_ptr().add(8 * half));
                let f = _mm256_mul_ps(_mm256_cvtepi32_ps(ints), sc);
                acc[j][half] = _mm256_add_ps(acc[j][half], f);
            }
        }
    }
    let mut out = [0f32; N];
    for j in 0..N {
        let mut l = [0f32; LANES];
        _mm256_storeu_ps(l.as_mut_ptr(), acc[j][0]);
        _mm256_storeu_ps(l.as_mut_ptr().add(8), acc[j][1]);
        let tree = combine_lanes(&l);
        out[j] = (tree * rows[j].row_scale()) * x.unscale;
    }
    out
}

/// Whether this machine runs [`dots_vnni`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// [`dots_portable`] with AVX-512 VNNI, the same bits. The rows must be of one weight (one
/// kind of scales, one group size).
///
/// # Safety
/// The CPU must support AVX-512 F/BW and VNNI ([`has_vnni`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn dots_vnni<const N: usize>(rows: [Int8Src<'_>; N], x: &FixedRow) -> [f32; N] {
    use vnni::*;
    match rows[0].scales {
        Scales::Row(_) => run(rows, x, [Unit; N]),
        Scales::Groups { group_size, .. }
            if group_size.is_multiple_of(STEP) && group_size.is_power_of_two() =>
        {
            let shift = (group_size / STEP).trailing_zeros();
            run(
                rows,
                x,
                rows.map(|r| Broadcast(r.group_scales().as_ptr(), shift)),
            )
        }
        Scales::Groups { group_size, .. } if group_size == 16 || group_size == 32 => run(
            rows,
            x,
            rows.map(|r| Spread::new(r.group_scales(), group_size)),
        ),
        Scales::Groups { .. } => run(rows, x, rows.map(Lookup)),
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    //! The VNNI kernel's loop and its ways to build a step's 16 lane scales (all inlined into
    //! [`dots_vnni`](super::dots_vnni), which carries the target features).
    use std::arch::x86_64::*;

    use super::{combine_lanes, FixedRow, Int8Src, LANES, STEP};

    /// A step's 16 lane scales for one row, as [`Int8Src::lane_scale`] gives them.
    pub(super) trait LaneScales: Copy {
        /// # Safety
        /// AVX-512 F is present; `s` is a step of the row.
        unsafe fn at(self, s: usize) -> __m512;
    }

    /// Per-row int8: every lane 1.0.
    #[derive(Clone, Copy)]
    pub(super) struct Unit;
    impl LaneScales for Unit {
        #[inline(always)]
        unsafe fn at(self, _s: usize) -> __m512 {
            _mm512_set1_ps(1.0)
        }
    }

    /// Groups of `64 << shift` columns: one scale for the whole step.
    #[derive(Clone, Copy)]
    pub(super) struct Broadcast(pub *const f32, pub u32);
    impl LaneScales for Broadcast {
        #[inline(always)]
        unsafe fn at(self, s: usize) -> __m512 {
            _mm512_set1_ps(*self.0.add(s >> self.1))
        }
    }

    /// Groups of 16 or 32 columns: a step's 4 or 2 scales, lane `l` taking `4l / group_size`.
    #[derive(Clone, Copy)]
    pub(super) struct Spread {
        scales: *const f32,
        groups: usize,
        per_step: usize,
        index: __m512i,
    }
    impl Spread {
        #[inline(always)]
        pub(super) unsafe fn new(scales: &[f32], group_size: usize) -> Spread {
            let lane =
                _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60);
            let shift = _mm_cvtsi32_si128(group_size.trailing_zeros() as i32);
            Spread {
                scales: scales.as_ptr(),
                groups: scales.len(),
                per_step: STEP / group_size,
                index: _mm512_srl_epi32(lane, shift),
            }
        }
    }
    impl LaneScales for Spread {
        #[inline(always)]
        unsafe fn at(self, s: usize) -> __m512 {
            let first = s * self.per_step;
            // Fewer than `per_step` scales remain only in a last, partial step.
            let count = self.per_step.min(self.groups - first);
            let v = _mm512_maskz_loadu_ps(((1u32 << count) - 1) as u16, self.scales.add(first));
            _mm512_permutexvar_ps(self.index, v)
        }
    }

    /// Any other group size: the lane scales one by one.
    #[derive(Clone, Copy)]
    pub(super) struct Lookup<'a>(pub Int8Src<'a>);
    impl LaneScales for Lookup<'_> {
        #[inline(always)]
        unsafe fn at(self, s: usize) -> __m512 {
            let mut v = [0f32; LANES];
            for (l, v) in v.iter_mut().enumerate() {
                *v = self.0.lane_scale(s, l);
            }
            _mm512_loadu_ps(v.as_ptr())
        }
    }

    /// The kernel: per step, the digits and corrections once, then each row's 64 weights.
    ///
    /// # Safety
    /// AVX-512 F/BW and VNNI are present; each row has `x.cols` weights.
    #[inline(always)]
    pub(super) unsafe fn run<const N: usize, S: LaneScales>(
        rows: [Int8Src<'_>; N],
        x: &FixedRow,
        scales: [S; N],
    ) -> [f32; N] {
        let cols = x.cols;
        let full = cols / STEP;
        let ahead = super::PREFETCH_ROWS * cols;
        let offset = _mm512_set1_epi8(-128);
        let ptr = rows.map(|r| r.q.as_ptr());
        let mut acc = [_mm512_setzero_ps(); N];
        for s in 0..cols.div_ceil(STEP) {
            let step = &x.steps[s];
            let d0 = _mm512_load_si512(step.digits[0].as_ptr() as *const __m512i);
            let d1 = _mm512_load_si512(step.digits[1].as_ptr() as *const __m512i);
            let d2 = _mm512_load_si512(step.digits[2].as_ptr() as *const __m512i);
            let neg = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_load_si512(step.correction.as_ptr() as *const __m512i),
            );
            for j in 0..N {
                let p = ptr[j].add(s * STEP);
                let q = if s < full {
                    // The same bytes of a row further down: rows of one task are contiguous.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(ahead));
                    _mm512_loadu_si512(p as *const __m512i)
                } else {
                    _mm512_maskz_loadu_epi8((1u64 << (cols - s * STEP)) - 1, p)
                };
                let u = _mm512_xor_si512(q, offset);
                let a = _mm512_dpbusd_epi32(neg, u, d0);
                let b = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, d1);
                let c = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, d2);
                let ints = _mm512_add_epi32(
                    a,
                    _mm512_slli_epi32::<8>(_mm512_add_epi32(b, _mm512_slli_epi32::<8>(c))),
                );
                let f = _mm512_cvtepi32_ps(ints);
                acc[j] = _mm512_add_ps(acc[j], _mm512_mul_ps(f, scales[j].at(s)));
            }
        }
        let mut out = [0f32; N];
        for j in 0..N {
            let mut l = [0f32; LANES];
            _mm512_storeu_ps(l.as_mut_ptr(), acc[j]);
            let tree = combine_lanes(&l);
            out[j] = (tree * rows[j].row_scale()) * x.unscale;
        }
        out
    }
}

/// How many rows ahead the VNNI kernel prefetches a row's bytes: the rows of a task are
/// contiguous, and its reads are short row streams the hardware prefetchers follow too late.
pub(crate) const PREFETCH_ROWS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{reference_fixed_point, Rng};

    /// The module's arithmetic written out from its documentation, in i64 and f64-free f32.
    fn reference(q: &[i8], scales: Scales<'_>, x: &[f32]) -> Option<f32> {
        let (s, xi) = reference_fixed_point(x)?;
        let mut acc = [0f32; LANES];
        for step in 0..x.len().div_ceil(STEP) {
            for (l, a) in acc.iter_mut().enumerate() {
                let c0 = step * STEP + 4 * l;
                let i: i64 = (c0..(c0 + 4).min(x.len()))
                    .map(|c| q[c] as i64 * xi[c])
                    .sum();
                assert!(i.abs() <= 1 << 30);
                let sc = match scales {
                    Scales::Row(_) => 1.0,
                    Scales::Groups { scales, group_size } => {
                        scales.get(c0 / group_size).copied().unwrap_or(0.0)
                    }
                };
                *a += i as f32 * sc;
            }
        }
        let row = match scales {
            Scales::Row(s) => s,
            Scales::Groups { .. } => 1.0,
        };
        Some((combine_lanes(&acc) * row) * 2f32.powi(-s))
    }

    #[test]
    fn every_path_computes_the_documented_arithmetic() {
        let mut rng = Rng(11);
        for cols in [64usize, 576, 96, 16, 1536, 208] {
            for gs in [0, 16, 32, 48, 64, 128] {
                if gs != 0 && !cols.is_multiple_of(gs) {
                    continue;
                }
                for mag in [1.0f32, 3e-7, 9e4, 0.0] {
                    let q: Vec<i8> = (0..4 * cols)
                        .map(|_| (rng.next_u64() % 255) as i8)
                        .collect();
                    let q = |j: usize| &q[j * cols..(j + 1) * cols];
                    let per = cols.checked_div(gs).unwrap_or(1);
                    let scales: Vec<f32> = (0..4 * per).map(|_| rng.f32() * 0.01).collect();
                    let src = |j: usize| Int8Src {
                        q: q(j),
                        scales: if gs == 0 {
                            Scales::Row(0.003 * (j as f32 + 1.0))
                        } else {
                            Scales::Groups {
                                scales: &scales[j * per..(j + 1) * per],
                                group_size: gs,
                            }
                        },
                    };
                    let mut x: Vec<f32> = rng.vec(cols).iter().map(|v| v * mag).collect();
                    // The extreme of X, -2^21: the largest value below a power of two rounds up.
                    if mag != 0.0 {
                        let p = 2f32.powi((mag as f64).log2().floor() as i32 + 1);
                        x[0] = -f32::from_bits(p.to_bits() - 1);
                    }
                    let fx = FixedRow::new(&x).unwrap();
                    let want: Vec<f32> = (0..4)
                        .map(|j| reference(q(j), src(j).scales, &x).unwrap())
                        .collect();
                    let name = format!("cols {cols} group {gs} magnitude {mag}");
                    let four = dots_portable([src(0), src(1), src(2), src(3)], &fx);
                    assert_eq!(four.map(f32::to_bits), bits(&want), "{name}");
                    assert_eq!(dots_portable([src(2)], &fx)[0].to_bits(), want[2].to_bits());
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: AVX2 was detected.
                        let four = unsafe { dots_avx2([src(0), src(1), src(2), src(3)], &fx) };
                        assert_eq!(four.map(f32::to_bits), bits(&want), "avx2 {name}");
                        let one = unsafe { dots_avx2([src(1)], &fx) };
                        assert_eq!(one[0].to_bits(), want[1].to_bits(), "avx2 {name}");
                    }
                    #[cfg(target_arch = "x86_64")]
                    if has_vnni() {
                        // SAFETY: VNNI was detected.
                        let four = unsafe { dots_vnni([src(0), src(1), src(2), src(3)], &fx) };
                        assert_eq!(four.map(f32::to_bits), bits(&want), "vnni {name}");
                        let one = unsafe { dots_vnni([src(3)], &fx) };
                        assert_eq!(one[0].to_bits(), want[3].to_bits(), "vnni {name}");
                    }
                }
            }
        }
    }

    fn bits(v: &[f32]) -> [u32; 4] {
        [0, 1, 2, 3].map(|j| v[j].to_bits())
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        let mut rng = Rng(3);
        for y in [
            0.5f32, 1.5, 2.5, -0.5, -2.5, 2097151.5, -2097152.0, 3.49999, -7.5000005,
        ]
        .into_iter()
        .chain((0..10000).map(|_| rng.f32() * 2097152.0))
        {
            assert_eq!(round_ties_even(y), y.round_ties_even() as i32, "{y}");
        }
    }

    #[test]
    fn rows_without_a_fixed_form_are_refused() {
        assert!(FixedRow::new(&[1.0, f32::NAN]).is_none());
        assert!(FixedRow::new(&[f32::INFINITY]).is_none());
        assert!(FixedRow::new(&[1e-35]).is_none());
        assert!(FixedRow::new(&[3e38]).is_none());
        assert!(FixedRow::new(&[1e-20, 0.0]).is_some());
        assert!(FixedRow::new(&[0.0; 70]).is_some());
    }
}
