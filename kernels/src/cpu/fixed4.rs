//! Products of int4 weights (a scale and a minimum per group) with an activation row in the
//! exact fixed point of [`fixed`](super::fixed): integer sums of nibbles times X, each group's
//! scale and minimum applied once per lane and step.
//!
//! The arithmetic, which every instruction set performs identically (decision record 0026):
//!
//! - **x in fixed point** exactly as for int8 ([`FixedRow`]): `X[c]`, shift `S`. A row without a
//!   fixed form takes the float path.
//! - **Exact lane sums.** Columns are taken in steps of 128; lane `l` (0..16) of step `s` holds
//!   the eight columns `c = 128s + 8l + j` (columns past the row count as zero), and has the
//!   exact integers `I = sum n[c] * X[c]` over its nibbles `n` (`|I| < 2^28`) and
//!   `J = sum X[c]` (`|J| <= 2^24`, so `f32(J)` is exact).
//! - **One rounding per term.** `acc[l]` starts at +0.0 and takes, step after step,
//!   `acc[l] += f32(I) * scale + f32(J) * min` (conversion rounded to nearest even; each
//!   product, their sum and the addition to `acc` rounded, never fused), with the f16 scale and
//!   minimum (widened exactly) of the group holding the lane: group sizes are multiples of 8, so
//!   a lane never straddles two.
//! - **Finish.** The 16 lanes combine by the fixed tree of [`dot`](super::dot), then
//!   `y = tree * 2^-S`.
//!
//! Weights with other group sizes keep the float path of `rows`. AVX-512 VNNI's `vpdpbusd`
//! multiplies unsigned by signed bytes, which is what a nibble and a base-256 digit of X are: a
//! packed byte's low nibble is an even column and its high nibble the odd one after it, so each
//! step keeps X's three digits as an even-column and an odd-column plane of 64 bytes.

use half::f16;

use super::dot::{combine_lanes, Lanes, LANES};
use super::fixed::FixedRow;
use super::isa::{isa, multiversion};

/// Columns per step: 16 lanes of 8 columns, 64 packed bytes.
pub(crate) const STEP4: usize = 128;

/// Columns per lane.
const LANE_COLS: usize = STEP4 / LANES;

/// One step of a fixed-point row laid out for packed nibbles: digit `d` of X at the even
/// (`digits[0][d]`) and odd (`digits[1][d]`) column of each of the step's 64 bytes, and each
/// lane's `f32(J)`. 448 bytes, cache-line aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Step4 {
    digits: [[[i8; STEP4 / 2]; 3]; 2],
    sums: [f32; LANES],
}

/// The int4 layout of a [`FixedRow`]: one [`Step4`] per 128 columns.
pub(crate) struct Fixed4 {
    steps: Vec<Step4>,
}

impl Fixed4 {
    pub(crate) fn new(x: &FixedRow) -> Fixed4 {
        build4(isa(), x)
    }
}

// On the decode's serial path like `FixedRow`'s own build: plain loops, compiled per ISA.
multiversion!(fn build4 => build4_generic(x: &FixedRow) -> Fixed4);

#[inline(always)]
fn build4_generic(_lanes: impl Lanes, x: &FixedRow) -> Fixed4 {
    let zero = Step4 {
        digits: [[[0; STEP4 / 2]; 3]; 2],
        sums: [0.0; LANES],
    };
    let mut steps = vec![zero; x.cols().div_ceil(STEP4)];
    // `ints` is padded to whole steps of 128 columns.
    for (step, is) in steps.iter_mut().zip(x.ints().chunks_exact(STEP4)) {
        for (b, pair) in is.chunks_exact(2).enumerate() {
            for (parity, &xi) in pair.iter().enumerate() {
                let [d0, d1, d2] = FixedRow::digits(xi);
                step.digits[parity][0][b] = d0;
                step.digits[parity][1][b] = d1;
                step.digits[parity][2][b] = d2;
            }
        }
        for (sum, lane) in step.sums.iter_mut().zip(is.chunks_exact(LANE_COLS)) {
            *sum = lane.iter().sum::<i32>() as f32;
        }
    }
    Fixed4 { steps }
}

/// Consecutive rows of one int4 weight (a block of one or four): `cols / 2` packed bytes per row
/// and each row's group scales and minimums, the rows one after another.
#[derive(Clone, Copy)]
pub(crate) struct Int4Src<'a> {
    pub packed: &'a [u8],
    pub scales: &'a [f16],
    pub mins: &'a [f16],
    pub group_size: usize,
}

impl<'a> Int4Src<'a> {
    /// Row `j` of the block, for rows of `cols` columns.
    #[inline(always)]
    fn row(&self, j: usize, cols: usize) -> Int4Src<'a> {
        let (half, groups) = (cols / 2, cols.div_ceil(self.group_size));
        Int4Src {
            packed: &self.packed[j * half..(j + 1) * half],
            scales: &self.scales[j * groups..(j + 1) * groups],
            mins: &self.mins[j * groups..(j + 1) * groups],
            group_size: self.group_size,
        }
    }

    /// The scale and minimum of lane `l` of step `s` of a one-row block (zero past the row,
    /// where the lane's sums are 0 and the accumulator, never -0.0, is unchanged either way).
    #[inline(always)]
    fn lane_params(&self, s: usize, l: usize) -> (f32, f32) {
        let g = (s * STEP4 + l * LANE_COLS) / self.group_size;
        match (self.scales.get(g), self.mins.get(g)) {
            (Some(sc), Some(m)) => (sc.to_f32(), m.to_f32()),
            _ => (0.0, 0.0),
        }
    }

    #[cfg(test)]
    fn nibble(&self, c: usize) -> i32 {
        let b = self.packed[c / 2];
        (if c.is_multiple_of(2) {
            b & 0x0f
        } else {
            b >> 4
        }) as i32
    }
}

/// Whether an int4 weight of `group_size` takes the fixed-point products.
pub(crate) fn takes_fixed(group_size: usize) -> bool {
    group_size > 0 && group_size.is_multiple_of(LANE_COLS)
}

/// `row j of rows . x` for the `N` rows of the block, in the module's arithmetic, by plain
/// loops (the baseline path).
#[inline(always)]
pub(crate) fn dots4_portable<const N: usize>(
    rows: Int4Src<'_>,
    x: &FixedRow,
    x4: &Fixed4,
) -> [f32; N] {
    let cols = x.cols();
    let ints = x.ints();
    let mut out = [0f32; N];
    for (j, o) in out.iter_mut().enumerate() {
        let row = rows.row(j, cols);
        let mut acc = [0f32; LANES];
        // Consecutive lanes share a group: widen its f16 pair once.
        let mut group = (usize::MAX, 0f32, 0f32);
        for (s, step) in x4.steps.iter().enumerate() {
            let bytes = &row.packed[(s * STEP4 / 2).min(row.packed.len())..];
            let xs = &ints[s * STEP4..(s + 1) * STEP4];
            for (l, a) in acc.iter_mut().enumerate() {
                let mut i = 0i32;
                for (b, &byte) in bytes
                    .iter()
                    .skip(l * LANE_COLS / 2)
                    .take(LANE_COLS / 2)
                    .enumerate()
                {
                    let c = l * LANE_COLS + 2 * b;
                    i += (byte & 0x0f) as i32 * xs[c] + (byte >> 4) as i32 * xs[c + 1];
                }
                let g = (s * STEP4 + l * LANE_COLS) / row.group_size;
                if g != group.0 {
                    group = match (row.scales.get(g), row.mins.get(g)) {
                        (Some(sc), Some(m)) => (g, sc.to_f32(), m.to_f32()),
                        _ => (g, 0.0, 0.0),
                    };
                }
                *a += i as f32 * group.1 + step.sums[l] * group.2;
            }
        }
        *o = combine_lanes(&acc) * x.unscale();
    }
    out
}

/// [`dots4_portable`] with AVX2, the same bits: `vpmaddubsw` of the nibbles and X's digits (pairs
/// of at most 2 * 15 * 128, never saturating), the even and odd planes added, then `vpmaddwd`
/// by ones gives each lane's exact digit sums, as VNNI's `vpdpbusd` does.
///
/// # Safety
/// The CPU must support AVX2 and F16C; `rows` holds `N` rows of `x.cols()` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dots4_avx2<const N: usize>(
    rows: Int4Src<'_>,
    x: &FixedRow,
    x4: &Fixed4,
) -> [f32; N] {
    use std::arch::x86_64::*;
    let cols = x.cols();
    let bytes = cols / 2;
    let gs = rows.group_size;
    let groups = cols.div_ceil(gs);
    assert!(rows.packed.len() >= N * bytes);
    assert!(rows.scales.len() >= N * groups && rows.mins.len() >= N * groups);
    // Power-of-two groups of at least 8 columns: the eight lanes of a half step (64 columns)
    // take groups `g0 + 8l / gs`, eight values at most from `g0`.
    let spread = gs.is_power_of_two();
    let shift = gs.trailing_zeros();
    let index = _mm256_srlv_epi32(
        _mm256_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56),
        _mm256_set1_epi32(shift as i32),
    );
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let ahead = super::fixed::PREFETCH_ROWS * bytes;
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (s, step) in x4.steps.iter().enumerate() {
        for (j, acc) in acc.iter_mut().enumerate() {
            let row = rows.row(j, cols);
            let b0 = s * STEP4 / 2;
            let mut tail = [0u8; STEP4 / 2];
            let q = if b0 + STEP4 / 2 <= bytes {
                let p = row.packed.as_ptr().add(b0);
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(ahead) as *const i8);
                p
            } else {
                tail[..bytes - b0].copy_from_slice(&row.packed[b0..]);
                tail.as_ptr()
            };
            for (h, acc) in acc.iter_mut().enumerate() {
                let v = _mm256_loadu_si256(q.add(32 * h) as *const __m256i);
                let even = _mm256_and_si256(v, low);
                let odd = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                let digit = |d: usize| {
                    let e =
                        _mm256_load_si256(step.digits[0][d].as_ptr().add(32 * h) as *const __m256i);
                    let o =
                        _mm256_load_si256(step.digits[1][d].as_ptr().add(32 * h) as *const __m256i);
                    let pairs = _mm256_add_epi16(
                        _mm256_maddubs_epi16(even, e),
                        _mm256_maddubs_epi16(odd, o),
                    );
                    _mm256_madd_epi16(pairs, ones)
                };
                let (d0, d1, d2) = (digit(0), digit(1), digit(2));
                let ints = _mm256_add_epi32(
                    d0,
                    _mm256_slli_epi32::<8>(_mm256_add_epi32(d1, _mm256_slli_epi32::<8>(d2))),
                );
                let (sc, m) = if spread {
                    let g0 = (s * STEP4 + 64 * h) >> shift;
                    let n = groups.saturating_sub(g0).min(8);
                    let (mut hs, mut hm) = ([0u16; 8], [0u16; 8]);
                    for k in 0..n {
                        hs[k] = row.scales[g0 + k].to_bits();
                        hm[k] = row.mins[g0 + k].to_bits();
                    }
                    let widen = |v: &[u16; 8]| {
                        let f = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr() as *const __m128i));
                        _mm256_permutevar8x32_ps(f, index)
                    };
                    (widen(&hs), widen(&hm))
                } else {
                    let (mut sc, mut m) = ([0f32; 8], [0f32; 8]);
                    for l in 0..8 {
                        (sc[l], m[l]) = row.lane_params(s, 8 * h + l);
                    }
                    (_mm256_loadu_ps(sc.as_ptr()), _mm256_loadu_ps(m.as_ptr()))
                };
                let sums = _mm256_load_ps(step.sums.as_ptr().add(8 * h));
                let t = _mm256_add_ps(
                    _mm256_mul_ps(_mm256_cvtepi32_ps(ints), sc),
                    _mm256_mul_ps(sums, m),
                );
                *acc = _mm256_add_ps(*acc, t);
            }
        }
    }
    let mut out = [0f32; N];
    for (o, acc) in out.iter_mut().zip(acc) {
        let mut l = [0f32; LANES];
        _mm256_storeu_ps(l.as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(l.as_mut_ptr().add(8), acc[1]);
        *o = combine_lanes(&l) * x.unscale();
    }
    out
}

/// [`dots4_portable`] with AVX-512 VNNI, the same bits.
///
/// # Safety
/// The CPU must support AVX-512 F/BW and VNNI ([`has_vnni`](super::fixed::has_vnni)); `rows`
/// holds `N` rows of `x.cols()` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn dots4_vnni<const N: usize>(
    rows: Int4Src<'_>,
    x: &FixedRow,
    x4: &Fixed4,
) -> [f32; N] {
    use vnni::*;
    let gs = rows.group_size;
    let groups = x.cols().div_ceil(gs);
    assert!(rows.packed.len() >= N * (x.cols() / 2));
    assert!(rows.scales.len() >= N * groups && rows.mins.len() >= N * groups);
    if gs.is_power_of_two() && gs <= STEP4 {
        run::<N, _>(rows, x, x4, Spread::new(gs, groups))
    } else {
        run::<N, _>(
            rows,
            x,
            x4,
            Lookup {
                groups,
                group_size: gs,
            },
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    //! The int4 VNNI kernel's loop and its ways to build a step's lane scales and minimums (all
    //! inlined into [`dots4_vnni`](super::dots4_vnni), which carries the target features).
    use std::arch::x86_64::*;

    use half::f16;

    use super::{combine_lanes, Fixed4, FixedRow, Int4Src, LANES, LANE_COLS, STEP4};
    use crate::cpu::fixed::PREFETCH_ROWS;

    /// A step's 16 lane scales and minimums for one row, as [`Int4Src::lane_params`] gives them:
    /// widened from f16 once per span of steps ([`load`](LaneParams::load)), then spread to the
    /// lanes per step ([`pick`](LaneParams::pick)).
    pub(super) trait LaneParams: Copy {
        /// Steps one [`load`](LaneParams::load) covers.
        fn span(self) -> usize;
        /// What [`pick`](LaneParams::pick) selects from for steps `s..s + span` of a row.
        ///
        /// # Safety
        /// AVX-512 F/BW are present; `scales` and `mins` are a row's, `s` is a step of the row
        /// and a multiple of the span.
        unsafe fn load(self, scales: *const f16, mins: *const f16, s: usize) -> (__m512, __m512);
        /// Which loaded value each lane of the step at `phase` of its span takes.
        ///
        /// # Safety
        /// AVX-512 F is present.
        unsafe fn at(self, phase: usize) -> __m512i;
        /// A step's lane scales and minimums from its span's [`load`](LaneParams::load).
        ///
        /// # Safety
        /// AVX-512 F is present.
        unsafe fn pick(self, loaded: (__m512, __m512), at: __m512i) -> (__m512, __m512);
    }

    /// Power-of-two groups of 8 to 128 columns: the groups of `16 / (128 / group_size)` steps
    /// widened at once (16 values), lane `l` of step `s` taking the step's `8l / group_size`-th.
    #[derive(Clone, Copy)]
    pub(super) struct Spread {
        groups: usize,
        per_step: usize,
        span: usize,
        index: __m512i,
    }
    impl Spread {
        #[inline(always)]
        pub(super) unsafe fn new(group_size: usize, groups: usize) -> Spread {
            let lane = _mm512_setr_epi32(
                0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120,
            );
            let shift = _mm_cvtsi32_si128(group_size.trailing_zeros() as i32);
            let per_step = STEP4 / group_size;
            Spread {
                groups,
                per_step,
                span: LANES / per_step,
                index: _mm512_srl_epi32(lane, shift),
            }
        }
    }
    impl LaneParams for Spread {
        #[inline(always)]
        fn span(self) -> usize {
            self.span
        }
        #[inline(always)]
        unsafe fn load(self, scales: *const f16, mins: *const f16, s: usize) -> (__m512, __m512) {
            let first = s * self.per_step;
            // Fewer than 16 groups remain only in a row's last span.
            let count = LANES.min(self.groups - first);
            let mask = ((1u64 << count) - 1) as u32;
            let widen = |p: *const f16| {
                let h = _mm512_maskz_loadu_epi16(mask, p.add(first) as *const i16);
                _mm512_cvtph_ps(_mm512_castsi512_si256(h))
            };
            (widen(scales), widen(mins))
        }
        #[inline(always)]
        unsafe fn at(self, phase: usize) -> __m512i {
            _mm512_add_epi32(
                self.index,
                _mm512_set1_epi32((phase * self.per_step) as i32),
            )
        }
        #[inline(always)]
        unsafe fn pick(self, loaded: (__m512, __m512), at: __m512i) -> (__m512, __m512) {
            (
                _mm512_permutexvar_ps(at, loaded.0),
                _mm512_permutexvar_ps(at, loaded.1),
            )
        }
    }

    /// Any other group size: the lane parameters one by one, every step.
    #[derive(Clone, Copy)]
    pub(super) struct Lookup {
        pub groups: usize,
        pub group_size: usize,
    }
    impl LaneParams for Lookup {
        #[inline(always)]
        fn span(self) -> usize {
            1
        }
        #[inline(always)]
        unsafe fn load(self, scales: *const f16, mins: *const f16, s: usize) -> (__m512, __m512) {
            let row = Int4Src {
                packed: &[],
                scales: std::slice::from_raw_parts(scales, self.groups),
                mins: std::slice::from_raw_parts(mins, self.groups),
                group_size: self.group_size,
            };
            let (mut sc, mut m) = ([0f32; LANES], [0f32; LANES]);
            for l in 0..LANES {
                (sc[l], m[l]) = row.lane_params(s, l);
            }
            (_mm512_loadu_ps(sc.as_ptr()), _mm512_loadu_ps(m.as_ptr()))
        }
        #[inline(always)]
        unsafe fn at(self, _phase: usize) -> __m512i {
            _mm512_setzero_si512()
        }
        #[inline(always)]
        unsafe fn pick(self, loaded: (__m512, __m512), _at: __m512i) -> (__m512, __m512) {
            loaded
        }
    }

    /// The kernel: per step, X's digit planes and lane sums once, then each row's 64 bytes.
    ///
    /// # Safety
    /// AVX-512 F/BW and VNNI are present; `rows` holds `N` rows of `x.cols()` columns.
    #[inline(always)]
    pub(super) unsafe fn run<const N: usize, P: LaneParams>(
        rows: Int4Src<'_>,
        x: &FixedRow,
        x4: &Fixed4,
        params: P,
    ) -> [f32; N] {
        let bytes = x.cols() / 2;
        let groups = x.cols().div_ceil(rows.group_size);
        let per_step = STEP4 / 2;
        let full = bytes / per_step;
        let ahead = PREFETCH_ROWS * bytes;
        let low = _mm512_set1_epi8(0x0f);
        let zero = _mm512_setzero_si512();
        let (packed, scales, mins) = (
            rows.packed.as_ptr(),
            rows.scales.as_ptr(),
            rows.mins.as_ptr(),
        );
        let mut acc = [_mm512_setzero_ps(); N];
        let mut loaded = [(_mm512_setzero_ps(), _mm512_setzero_ps()); N];
        let mut phase = 0;
        debug_assert_eq!(LANE_COLS * LANES, STEP4);
        for (s, step) in x4.steps.iter().enumerate() {
            // The step's place in its span (a counter: the span is a runtime value).
            if phase == params.span() {
                phase = 0;
            }
            if phase == 0 {
                for (j, l) in loaded.iter_mut().enumerate() {
                    *l = params.load(scales.add(j * groups), mins.add(j * groups), s);
                }
            }
            let at = params.at(phase);
            phase += 1;
            let plane = |p: usize, d: usize| {
                _mm512_load_si512(step.digits[p][d].as_ptr() as *const __m512i)
            };
            let (e0, e1, e2) = (plane(0, 0), plane(0, 1), plane(0, 2));
            let (o0, o1, o2) = (plane(1, 0), plane(1, 1), plane(1, 2));
            let sums = _mm512_load_ps(step.sums.as_ptr());
            for (j, (acc, loaded)) in acc.iter_mut().zip(&loaded).enumerate() {
                let p = packed.add(j * bytes + s * per_step);
                let q = if s < full {
                    // The same bytes of a row further down: a block's rows are contiguous.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(ahead) as *const i8);
                    _mm512_loadu_si512(p as *const __m512i)
                } else {
                    _mm512_maskz_loadu_epi8((1u64 << (bytes - s * per_step)) - 1, p as *const i8)
                };
                let even = _mm512_and_si512(q, low);
                let odd = _mm512_and_si512(_mm512_srli_epi16::<4>(q), low);
                // Horner in base 256, from the top digit down (wrapping i32, exact: see
                // `fixed`): no separate digit sums to add.
                let d2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, even, e2), odd, o2);
                let d21 = _mm512_dpbusd_epi32(
                    _mm512_dpbusd_epi32(_mm512_slli_epi32::<8>(d2), even, e1),
                    odd,
                    o1,
                );
                let ints = _mm512_dpbusd_epi32(
                    _mm512_dpbusd_epi32(_mm512_slli_epi32::<8>(d21), even, e0),
                    odd,
                    o0,
                );
                let (sc, m) = params.pick(*loaded, at);
                let t = _mm512_add_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(ints), sc),
                    _mm512_mul_ps(sums, m),
                );
                *acc = _mm512_add_ps(*acc, t);
            }
        }
        let mut out = [0f32; N];
        for (o, acc) in out.iter_mut().zip(acc) {
            let mut l = [0f32; LANES];
            _mm512_storeu_ps(l.as_mut_ptr(), acc);
            *o = combine_lanes(&l) * x.unscale();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{reference_fixed_point, Rng};

    /// The module's arithmetic written out from its documentation, with i64 sums.
    fn reference(row: Int4Src<'_>, x: &[f32]) -> Option<f32> {
        let (s, xi) = reference_fixed_point(x)?;
        let mut acc = [0f32; LANES];
        for step in 0..x.len().div_ceil(STEP4) {
            for (l, a) in acc.iter_mut().enumerate() {
                let c0 = step * STEP4 + 8 * l;
                let cs = c0..(c0 + 8).min(x.len());
                let nib = |c: usize| {
                    let b = row.packed[c / 2];
                    (if c.is_multiple_of(2) { b & 15 } else { b >> 4 }) as i64
                };
                let i: i64 = cs.clone().map(|c| nib(c) * xi[c]).sum();
                let j: i64 = cs.map(|c| xi[c]).sum();
                assert!(i.abs() < 1 << 28 && j.abs() <= 1 << 24);
                let g = c0 / row.group_size;
                let (sc, mn) = match (row.scales.get(g), row.mins.get(g)) {
                    (Some(a), Some(b)) => (a.to_f32(), b.to_f32()),
                    _ => (0.0, 0.0),
                };
                *a += i as f32 * sc + j as f32 * mn;
            }
        }
        Some(combine_lanes(&acc) * 2f32.powi(-s))
    }

    struct Rows {
        packed: Vec<u8>,
        scales: Vec<f16>,
        mins: Vec<f16>,
        cols: usize,
        gs: usize,
    }

    impl Rows {
        fn random(rng: &mut Rng, n: usize, cols: usize, gs: usize) -> Rows {
            let groups = cols.div_ceil(gs);
            Rows {
                packed: (0..n * cols / 2).map(|_| rng.next_u64() as u8).collect(),
                scales: (0..n * groups)
                    .map(|_| f16::from_f32(rng.f32() * 0.02))
                    .collect(),
                mins: (0..n * groups)
                    .map(|_| f16::from_f32(rng.f32() * -0.1))
                    .collect(),
                cols,
                gs,
            }
        }
        /// Rows `r..r + n`.
        fn block(&self, r: usize, n: usize) -> Int4Src<'_> {
            let groups = self.cols.div_ceil(self.gs);
            Int4Src {
                packed: &self.packed[r * self.cols / 2..(r + n) * self.cols / 2],
                scales: &self.scales[r * groups..(r + n) * groups],
                mins: &self.mins[r * groups..(r + n) * groups],
                group_size: self.gs,
            }
        }
        fn row(&self, r: usize) -> Int4Src<'_> {
            self.block(r, 1)
        }
    }

    #[test]
    fn every_path_gives_the_bits_of_the_definition() {
        let mut rng = Rng(41);
        for (cols, gs) in [
            (576, 32),
            (576, 64),
            (1536, 128),
            (384, 16),
            (200, 8),
            (250, 40),
            (300, 256),
            (96, 48),
            (130, 32),
            // More steps than one widening of 16 groups covers, the last one partial.
            (2304, 128),
            (2200, 64),
        ] {
            let rows = Rows::random(&mut rng, 4, cols, gs);
            for scale in [1.0f32, 1e-20, 3e25] {
                let mut x: Vec<f32> = rng.vec(cols).iter().map(|v| v * scale).collect();
                if scale == 1.0 {
                    x[cols / 3] = 4.0; // the largest |x|, whose X is +2^20
                }
                let want: Vec<u32> = (0..4)
                    .map(|r| reference(rows.row(r), &x).unwrap().to_bits())
                    .collect();
                let fx = FixedRow::new(&x).unwrap();
                let f4 = Fixed4::new(&fx);
                let one = |f: &dyn Fn(Int4Src<'_>) -> [f32; 1]| -> Vec<u32> {
                    (0..4).map(|r| f(rows.row(r))[0].to_bits()).collect()
                };
                let what = format!("cols {cols} group {gs} scale {scale}");
                assert_eq!(one(&|r| dots4_portable(r, &fx, &f4)), want, "{what}");
                let four: [f32; 4] = dots4_portable(rows.block(0, 4), &fx, &f4);
                assert_eq!(four.map(f32::to_bits).to_vec(), want, "{what}");
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    // SAFETY: AVX2 and F16C were detected.
                    let a1 = one(&|r| unsafe { dots4_avx2(r, &fx, &f4) });
                    assert_eq!(a1, want, "avx2, {what}");
                    let a4: [f32; 4] = unsafe { dots4_avx2(rows.block(0, 4), &fx, &f4) };
                    assert_eq!(a4.map(f32::to_bits).to_vec(), want, "avx2 x4, {what}");
                }
                #[cfg(target_arch = "x86_64")]
                if crate::cpu::fixed::has_vnni() {
                    // SAFETY: VNNI was detected.
                    let v1 = one(&|r| unsafe { dots4_vnni(r, &fx, &f4) });
                    assert_eq!(v1, want, "vnni, {what}");
                    let v4: [f32; 4] = unsafe { dots4_vnni(rows.block(0, 4), &fx, &f4) };
                    assert_eq!(v4.map(f32::to_bits).to_vec(), want, "vnni x4, {what}");
                }
            }
        }
    }

    #[test]
    fn the_fixed_point_product_is_close_to_the_exact_one() {
        // The definition's error against f64 of the dequantized weights: X's rounding (2^-22
        // of the largest |x|) and f32 sums.
        let mut rng = Rng(43);
        let (cols, gs) = (576, 32);
        let rows = Rows::random(&mut rng, 1, cols, gs);
        let x = rng.vec(cols);
        let fx = FixedRow::new(&x).unwrap();
        let got = dots4_portable::<1>(rows.row(0), &fx, &Fixed4::new(&fx))[0] as f64;
        let row = rows.row(0);
        let (mut want, mut mag) = (0f64, 0f64);
        for (c, &xv) in x.iter().enumerate() {
            let g = c / gs;
            let w = row.nibble(c) as f64 * row.scales[g].to_f64() + row.mins[g].to_f64();
            want += w * xv as f64;
            mag += (w * xv as f64).abs();
        }
        assert!((got - want).abs() <= 1e-6 * mag, "{got} vs {want}");
    }
}
