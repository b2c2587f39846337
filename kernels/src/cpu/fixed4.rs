//! Products of int4 weights (a scale and a minimum per group) with an activation row in the
//! exact fixed point of [`fixed`](super::fixed): integer sums of nibbles times X over units of
//! columns, each unit's sums scaled once.
//!
//! The arithmetic, which every instruction set and both layouts perform identically (decision
//! record 0028):
//!
//! - **x in fixed point** exactly as for int8 ([`FixedRow`]): `X[c]`, shift `S`. A row without a
//!   fixed form takes the float path.
//! - **Units.** Group `g` (columns `gG..min(gG + G, cols)`) is cut into units of
//!   [`unit_cols`]`(G)` columns, the largest multiple of 8 up to 64 that divides `G`; the last
//!   unit of a short last group is shorter.
//! - **Exact unit sums.** For each unit, `I = sum n[c] * X[c]` over its nibbles `n`
//!   (`|I| <= 64 * 15 * 2^21 < 2^31`) and `J = sum X[c]`, both exact integers.
//! - **One rounding per term.** Per row, `acc` starts at +0.0 and takes, unit after unit in
//!   column order, `acc += f32(I) * scale + f32(J) * min` (conversions rounded to nearest even;
//!   each product, their sum and the addition to `acc` rounded, never fused) with the group's
//!   f16 scale and minimum widened exactly; then `y = acc * 2^-S`.
//!
//! The fast kernels read [`Int4Blocks`] (sixteen rows, one per lane of a vector): per eight
//! columns one 64-byte load, the nibbles split into even and odd columns, and X's three signed
//! base-256 digits broadcast from [`Fixed4`]; each digit's sum is kept apart over the unit (no
//! dependency from one digit to the next) and the three are joined once per unit in wrapping
//! i32, exact because `I` fits. VNNI's `vpdpbusd` multiplies the unsigned nibbles by the signed
//! digits; AVX2 gets the same integers from `vpmaddubsw` (pairs of at most 2 * 15 * 128, never
//! saturating) and `vpmaddwd` by ones. Row-major int4 weights (not prepared for the CPU) take
//! the plain loops, with the same bits.

use half::f16;

use super::fixed::FixedRow;
use super::int4_blocks::{Int4Blocks, BLOCK_ROWS, PIECE_COLS};
use crate::weights::{int4_nibble, Weight, WeightData};

/// The columns of a unit for groups of `group_size` (a positive multiple of 8).
pub(crate) fn unit_cols(group_size: usize) -> usize {
    (1..=8)
        .rev()
        .map(|k| PIECE_COLS * k)
        .find(|u| group_size.is_multiple_of(*u))
        .unwrap_or(PIECE_COLS)
}

/// Whether an int4 weight of `group_size` takes the fixed-point products.
pub(crate) fn takes_fixed(group_size: usize) -> bool {
    group_size > 0 && group_size.is_multiple_of(PIECE_COLS)
}

/// Eight columns of a fixed-point row as the kernels read them: digit `d` of X at the four even
/// columns (`digits[2d]`, one byte each) and the four odd ones (`digits[2d + 1]`), and the
/// exact `sum X` of the eight.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub(crate) struct Piece {
    digits: [i32; 6],
    sum: i32,
}

/// The int4 layout of a [`FixedRow`]: one [`Piece`] per eight columns.
pub(crate) struct Fixed4 {
    pieces: Vec<Piece>,
}

impl Fixed4 {
    pub(crate) fn new(x: &FixedRow) -> Fixed4 {
        // `ints` is zero-padded to whole steps of 128 columns, so whole pieces.
        let pieces = x
            .ints()
            .chunks_exact(PIECE_COLS)
            .take(x.cols().div_ceil(PIECE_COLS))
            .map(|is| {
                let mut bytes = [[0u8; 4]; 6];
                for (j, pair) in is.chunks_exact(2).enumerate() {
                    for (parity, &xi) in pair.iter().enumerate() {
                        for (d, digit) in FixedRow::digits(xi).into_iter().enumerate() {
                            bytes[2 * d + parity][j] = digit as u8;
                        }
                    }
                }
                Piece {
                    digits: bytes.map(i32::from_le_bytes),
                    sum: is.iter().sum(),
                }
            })
            .collect();
        Fixed4 { pieces }
    }
}

/// A row-major int4 weight, as [`WeightData::Int4`](crate::WeightData::Int4) holds it.
#[derive(Clone, Copy)]
pub(crate) struct Int4Rows<'a> {
    pub packed: &'a [u8],
    pub scales: &'a [f16],
    pub mins: &'a [f16],
    pub cols: usize,
    pub group_size: usize,
}

impl<'a> Int4Rows<'a> {
    /// The row-major int4 weight `w` (`None` for any other form).
    pub(crate) fn of(w: &'a Weight) -> Option<Int4Rows<'a>> {
        match &w.data {
            WeightData::Int4 {
                packed,
                scales,
                mins,
                group_size,
            } => Some(Int4Rows {
                packed,
                scales,
                mins,
                cols: w.cols,
                group_size: *group_size,
            }),
            _ => None,
        }
    }
}

/// Where the plain loops read a weight's values: either layout.
pub(crate) trait Int4Values {
    fn group_size(&self) -> usize;
    fn nibble(&self, r: usize, c: usize) -> u8;
    fn params(&self, r: usize, g: usize) -> (f16, f16);
}

impl Int4Values for Int4Rows<'_> {
    fn group_size(&self) -> usize {
        self.group_size
    }
    #[inline(always)]
    fn nibble(&self, r: usize, c: usize) -> u8 {
        int4_nibble(self.packed[(r * self.cols + c) / 2], c)
    }
    #[inline(always)]
    fn params(&self, r: usize, g: usize) -> (f16, f16) {
        let k = r * self.cols.div_ceil(self.group_size) + g;
        (self.scales[k], self.mins[k])
    }
}

impl Int4Values for Int4Blocks {
    fn group_size(&self) -> usize {
        Int4Blocks::group_size(self)
    }
    #[inline(always)]
    fn nibble(&self, r: usize, c: usize) -> u8 {
        Int4Blocks::nibble(self, r, c)
    }
    #[inline(always)]
    fn params(&self, r: usize, g: usize) -> (f16, f16) {
        Int4Blocks::params(self, r, g)
    }
}

/// Row `r` of `w` . x in the module's arithmetic, by plain loops (the baseline path, and the
/// path of row-major weights).
pub(crate) fn dot_portable(w: &impl Int4Values, r: usize, x: &FixedRow) -> f32 {
    let (cols, gs) = (x.cols(), w.group_size());
    let unit = unit_cols(gs);
    let ints = x.ints();
    let mut acc = 0f32;
    for g in 0..cols.div_ceil(gs) {
        let (sc, mn) = w.params(r, g);
        let (sc, mn) = (sc.to_f32(), mn.to_f32());
        let end = (g * gs + gs).min(cols);
        for u0 in (g * gs..end).step_by(unit) {
            let (mut i, mut j) = (0i32, 0i32);
            let u1 = (u0 + unit).min(end);
            for (c, &xi) in (u0..u1).zip(&ints[u0..u1]) {
                i = i.wrapping_add(w.nibble(r, c) as i32 * xi);
                j += xi;
            }
            acc += i as f32 * sc + j as f32 * mn;
        }
    }
    acc * x.unscale()
}

/// The [`BLOCK_ROWS`] rows of block `b` . x by plain loops (rows past the weight give 0).
pub(crate) fn block_portable(w: &Int4Blocks, b: usize, x: &FixedRow) -> [f32; BLOCK_ROWS] {
    std::array::from_fn(|lane| {
        let r = b * BLOCK_ROWS + lane;
        if r < w.rows() {
            dot_portable(w, r, x)
        } else {
            0.0
        }
    })
}

/// Lines prefetched ahead of the one being read (the block is one sequential stream).
#[cfg(target_arch = "x86_64")]
const PREFETCH_LINES: usize = 24;

/// [`block_portable`] with AVX2, the same bits (rows past the weight give unspecified values).
///
/// # Safety
/// The CPU must support AVX2 and F16C; `x` has `w.cols()` columns and `x4` is its layout.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn block_avx2(
    w: &Int4Blocks,
    b: usize,
    x: &FixedRow,
    x4: &Fixed4,
) -> [f32; BLOCK_ROWS] {
    use std::arch::x86_64::*;
    assert!(x.cols() == w.cols() && x4.pieces.len() == w.cols().div_ceil(PIECE_COLS));
    let lines = w.block(b);
    let unit = unit_cols(w.group_size()) / PIECE_COLS;
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut piece = 0;
    for g in 0..w.groups() {
        let at = w.group_line(g);
        let pieces = w.pieces(g);
        let params = lines[at + pieces].0.as_ptr();
        let mut k = 0;
        while k < pieces {
            let n = unit.min(pieces - k);
            let mut d = [[_mm256_setzero_si256(); 3]; 2];
            let mut j = 0i32;
            for line in &lines[at + k..at + k + n] {
                let pc = &x4.pieces[piece];
                let q = line.0.as_ptr();
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(64 * PREFETCH_LINES) as *const i8);
                for (h, d) in d.iter_mut().enumerate() {
                    let v = _mm256_load_si256(q.add(32 * h) as *const __m256i);
                    let even = _mm256_and_si256(v, low);
                    let odd = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                    for (digit, sum) in d.iter_mut().enumerate() {
                        let e = _mm256_set1_epi32(pc.digits[2 * digit]);
                        let o = _mm256_set1_epi32(pc.digits[2 * digit + 1]);
                        let pairs = _mm256_add_epi16(
                            _mm256_maddubs_epi16(even, e),
                            _mm256_maddubs_epi16(odd, o),
                        );
                        *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                    }
                }
                j += pc.sum;
                piece += 1;
            }
            let jf = _mm256_set1_ps(j as f32);
            for (h, (acc, [d0, d1, d2])) in acc.iter_mut().zip(d).enumerate() {
                let ints = _mm256_add_epi32(
                    _mm256_add_epi32(_mm256_slli_epi32::<16>(d2), _mm256_slli_epi32::<8>(d1)),
                    d0,
                );
                let sc = _mm256_cvtph_ps(_mm_loadu_si128(params.add(16 * h) as *const __m128i));
                let mn =
                    _mm256_cvtph_ps(_mm_loadu_si128(params.add(32 + 16 * h) as *const __m128i));
                let t = _mm256_add_ps(
                    _mm256_mul_ps(_mm256_cvtepi32_ps(ints), sc),
                    _mm256_mul_ps(jf, mn),
                );
                *acc = _mm256_add_ps(*acc, t);
            }
            k += n;
        }
    }
    let unscale = _mm256_set1_ps(x.unscale());
    let mut out = [0f32; BLOCK_ROWS];
    for (h, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), _mm256_mul_ps(*acc, unscale));
    }
    out
}

/// [`block_portable`] with AVX-512 VNNI, the same bits (rows past the weight give unspecified
/// values). One block at a time: two side by side measured slower in decode (two streams).
///
/// # Safety
/// The CPU must support AVX-512 F/BW and VNNI ([`has_vnni`](super::fixed::has_vnni)); `x` has
/// `w.cols()` columns and `x4` is its layout.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn block_vnni(
    w: &Int4Blocks,
    b: usize,
    x: &FixedRow,
    x4: &Fixed4,
) -> [f32; BLOCK_ROWS] {
    use std::arch::x86_64::*;
    assert!(x.cols() == w.cols() && x4.pieces.len() == w.cols().div_ceil(PIECE_COLS));
    let lines = w.block(b);
    let unit = unit_cols(w.group_size()) / PIECE_COLS;
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = _mm512_setzero_ps();
    let mut piece = 0;
    for g in 0..w.groups() {
        let at = w.group_line(g);
        let pieces = w.pieces(g);
        let params = lines[at + pieces].0.as_ptr();
        let sc = _mm512_cvtph_ps(_mm256_load_si256(params as *const __m256i));
        let mn = _mm512_cvtph_ps(_mm256_load_si256(params.add(32) as *const __m256i));
        let mut k = 0;
        while k < pieces {
            let n = unit.min(pieces - k);
            let [mut d0, mut d1, mut d2] = [_mm512_setzero_si512(); 3];
            let mut j = 0i32;
            for line in &lines[at + k..at + k + n] {
                let pc = &x4.pieces[piece];
                let q = line.0.as_ptr();
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(64 * PREFETCH_LINES) as *const i8);
                let v = _mm512_load_si512(q as *const __m512i);
                let even = _mm512_and_si512(v, low);
                let odd = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                let x = |i: usize| _mm512_set1_epi32(pc.digits[i]);
                d0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(d0, even, x(0)), odd, x(1));
                d1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(d1, even, x(2)), odd, x(3));
                d2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(d2, even, x(4)), odd, x(5));
                j += pc.sum;
                piece += 1;
            }
            let ints = _mm512_add_epi32(
                _mm512_add_epi32(_mm512_slli_epi32::<16>(d2), _mm512_slli_epi32::<8>(d1)),
                d0,
            );
            let t = _mm512_add_ps(
                _mm512_mul_ps(_mm512_cvtepi32_ps(ints), sc),
                _mm512_mul_ps(_mm512_set1_ps(j as f32), mn),
            );
            acc = _mm512_add_ps(acc, t);
            k += n;
        }
    }
    let mut out = [0f32; BLOCK_ROWS];
    _mm512_storeu_ps(
        out.as_mut_ptr(),
        _mm512_mul_ps(acc, _mm512_set1_ps(x.unscale())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{reference_fixed_point, Rng};

    /// The module's arithmetic written out from its documentation, with i64 sums, on the
    /// row-major values.
    fn reference(w: &Int4Rows<'_>, r: usize, x: &[f32]) -> Option<f32> {
        let (s, xi) = reference_fixed_point(x)?;
        let gs = w.group_size;
        let unit = unit_cols(gs);
        assert!(unit.is_multiple_of(8) && unit <= 64 && gs.is_multiple_of(unit));
        let mut acc = 0f32;
        for g in 0..x.len().div_ceil(gs) {
            let (sc, mn) = w.params(r, g);
            let end = (g * gs + gs).min(x.len());
            for u0 in (g * gs..end).step_by(unit) {
                let cs = u0..(u0 + unit).min(end);
                let i: i64 = cs.clone().map(|c| w.nibble(r, c) as i64 * xi[c]).sum();
                let j: i64 = cs.map(|c| xi[c]).sum();
                assert!(i.abs() < 1 << 31 && j.abs() < 1 << 28);
                acc += i as f32 * sc.to_f32() + j as f32 * mn.to_f32();
            }
        }
        Some(acc * 2f32.powi(-s))
    }

    struct Rows {
        packed: Vec<u8>,
        scales: Vec<f16>,
        mins: Vec<f16>,
        rows: usize,
        cols: usize,
        gs: usize,
    }

    impl Rows {
        fn random(rng: &mut Rng, rows: usize, cols: usize, gs: usize) -> Rows {
            let groups = cols.div_ceil(gs);
            Rows {
                packed: (0..rows * cols / 2).map(|_| rng.next_u64() as u8).collect(),
                scales: (0..rows * groups)
                    .map(|_| f16::from_f32(rng.f32() * 0.02))
                    .collect(),
                mins: (0..rows * groups)
                    .map(|_| f16::from_f32(rng.f32() * -0.1))
                    .collect(),
                rows,
                cols,
                gs,
            }
        }
        fn view(&self) -> Int4Rows<'_> {
            Int4Rows {
                packed: &self.packed,
                scales: &self.scales,
                mins: &self.mins,
                cols: self.cols,
                group_size: self.gs,
            }
        }
        fn blocks(&self) -> Int4Blocks {
            let (r, c) = (self.rows, self.cols);
            Int4Blocks::from_rows(r, c, &self.packed, &self.scales, &self.mins, self.gs).unwrap()
        }
    }

    #[test]
    fn units_divide_their_groups_and_fit_an_i32() {
        for (gs, unit) in [
            (8, 8),
            (32, 32),
            (40, 40),
            (64, 64),
            (72, 24),
            (96, 48),
            (128, 64),
        ] {
            assert_eq!(unit_cols(gs), unit, "group {gs}");
        }
        // The largest unit's nibble sum at the largest |X|.
        assert!(64 * 15 * (1i64 << 21) < i32::MAX as i64);
    }

    #[test]
    fn every_path_gives_the_bits_of_the_definition() {
        let mut rng = Rng(41);
        for (rows, cols, gs) in [
            (16, 576, 32),
            (20, 576, 64),
            (16, 1536, 128),
            (16, 384, 16),
            (3, 200, 8),
            (17, 250, 40),
            (16, 300, 256),
            (16, 96, 48),
            (16, 130, 32),
            (33, 2304, 72),
            (16, 2200, 64),
        ] {
            let w = Rows::random(&mut rng, rows, cols, gs);
            let blocks = w.blocks();
            for scale in [1.0f32, 1e-20, 3e25] {
                let mut x: Vec<f32> = rng.vec(cols).iter().map(|v| v * scale).collect();
                if scale == 1.0 {
                    x[cols / 3] = 4.0; // the largest |x|, whose X is +2^20
                }
                let want: Vec<u32> = (0..rows)
                    .map(|r| reference(&w.view(), r, &x).unwrap().to_bits())
                    .collect();
                let fx = FixedRow::new(&x).unwrap();
                let f4 = Fixed4::new(&fx);
                let what = format!("{rows} x {cols}, group {gs}, scale {scale}");
                let rows_major: Vec<u32> = (0..rows)
                    .map(|r| dot_portable(&w.view(), r, &fx).to_bits())
                    .collect();
                assert_eq!(rows_major, want, "row-major, {what}");
                let by_blocks = |f: &dyn Fn(usize) -> [f32; BLOCK_ROWS]| -> Vec<u32> {
                    (0..blocks.blocks())
                        .flat_map(f)
                        .take(rows)
                        .map(f32::to_bits)
                        .collect()
                };
                assert_eq!(
                    by_blocks(&|b| block_portable(&blocks, b, &fx)),
                    want,
                    "blocks, {what}"
                );
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    // SAFETY: AVX2 and F16C were detected; x has the weight's columns.
                    let got = by_blocks(&|b| unsafe { block_avx2(&blocks, b, &fx, &f4) });
                    assert_eq!(got, want, "avx2, {what}");
                }
                #[cfg(target_arch = "x86_64")]
                if crate::cpu::fixed::has_vnni() {
                    // SAFETY: VNNI was detected; x has the weight's columns.
                    let got = by_blocks(&|b| unsafe { block_vnni(&blocks, b, &fx, &f4) });
                    assert_eq!(got, want, "vnni, {what}");
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
        let w = Rows::random(&mut rng, 1, cols, gs);
        let x = rng.vec(cols);
        let fx = FixedRow::new(&x).unwrap();
        let got = dot_portable(&w.view(), 0, &fx) as f64;
        let (mut want, mut mag) = (0f64, 0f64);
        for (c, &xv) in x.iter().enumerate() {
            let (s, m) = w.view().params(0, c / gs);
            let v = w.view().nibble(0, c) as f64 * s.to_f64() + m.to_f64();
            want += v * xv as f64;
            mag += (v * xv as f64).abs();
        }
        assert!((got - want).abs() <= 1e-6 * mag, "{got} vs {want}");
    }
}
