//! The one reduction order used by every dot product of the CPU backend.
//!
//! Order, for vectors of length `n`: lane accumulators `acc[l]` (l in 0..16) start at +0.0 and
//! take, chunk after chunk of 16 values, `acc[l] += w[16k + l] * x[16k + l]` (the product
//! rounded to f32, then the sum rounded: never fused). The 16 lanes are then combined by a fixed
//! tree: `acc[l] + acc[l + 8]`, then `+ [l + 4]`, `+ [l + 2]`, `+ [l + 1]`. Finally the tail
//! (`n % 16` values) is added in index order to that sum.
//!
//! `Lanes::dot_row` and `Lanes::dot4_row` implement exactly this order; `dot4_row` runs four
//! independent instances side by side (one weight row against four activation rows) so batched
//! products decode the row once while giving each activation row the bits `dot_row` would.
//! Weight rows come in any storage form through `rows::Row`, decoded exactly in registers.
//!
//! The implementations: `Portable` is plain Rust (the baseline path; LLVM's vectorizer does
//! not reliably keep 16 accumulators in full registers), `Avx2` holds lanes 0..8 and 8..16 in
//! two AVX registers, and `Avx512` all 16 in one. All perform the identical sequence of IEEE
//! operations per lane, hence identical bits (tests compare them).

use super::rows::Row;

/// Number of lane accumulators in the fixed reduction order.
pub const LANES: usize = 16;

/// Half the lane accumulators: lanes `0..8` in one `[f32; 8]` (one AVX register), `8..16` in another.
pub(crate) const HALF: usize = LANES / 2;

/// The fixed tree combine of the 16 lane accumulators, given as lanes `0..8` and `8..16`.
#[inline(always)]
pub(crate) fn combine(lo: [f32; HALF], hi: [f32; HALF]) -> f32 {
    let mut a8 = [0f32; HALF];
    for l in 0..HALF {
        a8[l] = lo[l] + hi[l];
    }
    let a4 = [a8[0] + a8[4], a8[1] + a8[5], a8[2] + a8[6], a8[3] + a8[7]];
    let a2 = [a4[0] + a4[2], a4[1] + a4[3]];
    a2[0] + a2[1]
}

/// [`combine`] of the 16 lane accumulators held in one array.
#[inline(always)]
pub(crate) fn combine_lanes(l: &[f32; LANES]) -> f32 {
    let (lo, hi) = l.split_at(HALF);
    combine(lo.try_into().unwrap(), hi.try_into().unwrap())
}

/// A way to run the fixed-order dot products; see the module documentation.
pub(crate) trait Lanes: Copy + Send + Sync {
    /// `sum(w[i] * x[i])` over `w.len()` values (`x` may be longer; callers pass equal lengths).
    fn dot_row<R: Row>(self, w: R, x: &[f32]) -> f32;
    /// Four [`Lanes::dot_row`]s of `w` against `x[0..4]`, same bits.
    fn dot4_row<R: Row>(self, w: R, x: [&[f32]; 4]) -> [f32; 4];
    /// [`Lanes::dot_row`]s of four rows of one matrix against one `x`, same bits: four
    /// independent accumulations side by side, so a single activation row (decode) is not held
    /// to one addition's latency per chunk.
    #[inline(always)]
    fn dot_rows4<R: Row>(self, w: [R; 4], x: &[f32]) -> [f32; 4] {
        w.map(|w| self.dot_row(w, x))
    }
    /// Widens f16 values to f32 (exact), `dst[i] = src[i]`; `dst.len() >= src.len()`.
    #[inline(always)]
    fn widen_f16(self, src: &[half::f16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

/// The plain-Rust implementation of the fixed order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    fn dot_row<R: Row>(self, w: R, x: &[f32]) -> f32 {
        let n = w.len();
        let x = &x[..n];
        let chunks = n / LANES;
        let mut lo = [0f32; HALF];
        let mut hi = [0f32; HALF];
        for k in 0..chunks {
            let wc = w.chunk(k);
            let xc = &x[k * LANES..(k + 1) * LANES];
            for l in 0..HALF {
                lo[l] += wc[l] * xc[l];
            }
            for l in 0..HALF {
                hi[l] += wc[HALF + l] * xc[HALF + l];
            }
        }
        let mut s = combine(lo, hi);
        for (i, xv) in x.iter().enumerate().skip(chunks * LANES) {
            s += w.get(i) * xv;
        }
        s
    }

    #[inline(always)]
    fn dot4_row<R: Row>(self, w: R, x: [&[f32]; 4]) -> [f32; 4] {
        x.map(|x| self.dot_row(w, x))
    }
}

/// `sum(a[i] * b[i])` over `a.len()` values (`b.len() >= a.len()`), in the fixed order.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    Portable.dot_row(&a[..n], &b[..n])
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{combine, Lanes, Row, HALF, LANES};

    /// The fixed order with lanes `0..8` and `8..16` in two `__m256` registers. Only
    /// constructed after AVX2 and F16C were detected; its methods are meant to be inlined into
    /// `#[target_feature(enable = "avx2,f16c")]` functions.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2(());

    impl Avx2 {
        /// # Safety
        /// The CPU must support AVX2 and F16C.
        pub(crate) unsafe fn new_unchecked() -> Avx2 {
            Avx2(())
        }
    }

    #[inline(always)]
    fn lanes_of(v: __m256) -> [f32; HALF] {
        let mut out = [0f32; HALF];
        // SAFETY: `out` holds 8 f32; `Avx2` exists only on CPUs with AVX.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    impl Lanes for Avx2 {
        #[inline(always)]
        fn dot_row<R: Row>(self, w: R, x: &[f32]) -> f32 {
            let n = w.len();
            let x = &x[..n];
            let chunks = n / LANES;
            // SAFETY: AVX2/F16C are present (`Avx2` exists); chunks and loads stay below `n`.
            let (lo, hi) = unsafe {
                let mut lo = _mm256_setzero_ps();
                let mut hi = _mm256_setzero_ps();
                for k in 0..chunks {
                    let (wl, wh) = w.chunk_avx2(k);
                    let xp = x[k * LANES..(k + 1) * LANES].as_ptr();
                    lo = _mm256_add_ps(lo, _mm256_mul_ps(wl, _mm256_loadu_ps(xp)));
                    hi = _mm256_add_ps(hi, _mm256_mul_ps(wh, _mm256_loadu_ps(xp.add(HALF))));
                }
                (lo, hi)
            };
            let mut s = combine(lanes_of(lo), lanes_of(hi));
            for (i, xv) in x.iter().enumerate().skip(chunks * LANES) {
                s += w.get(i) * xv;
            }
            s
        }

        #[inline(always)]
        fn dot4_row<R: Row>(self, w: R, x: [&[f32]; 4]) -> [f32; 4] {
            let n = w.len();
            let x = x.map(|v| &v[..n]);
            let chunks = n / LANES;
            // SAFETY: as in `dot_row`.
            let acc = unsafe {
                let mut lo = [_mm256_setzero_ps(); 4];
                let mut hi = [_mm256_setzero_ps(); 4];
                for k in 0..chunks {
                    let (wl, wh) = w.chunk_avx2(k);
                    for j in 0..4 {
                        let xp = x[j][k * LANES..(k + 1) * LANES].as_ptr();
                        lo[j] = _mm256_add_ps(lo[j], _mm256_mul_ps(wl, _mm256_loadu_ps(xp)));
                        hi[j] =
                            _mm256_add_ps(hi[j], _mm256_mul_ps(wh, _mm256_loadu_ps(xp.add(HALF))));
                    }
                }
                [0, 1, 2, 3].map(|j| (lo[j], hi[j]))
            };
            let mut s = [0f32; 4];
            for j in 0..4 {
                s[j] = combine(lanes_of(acc[j].0), lanes_of(acc[j].1));
                for (i, xv) in x[j].iter().enumerate().skip(chunks * LANES) {
                    s[j] += w.get(i) * xv;
                }
            }
            s
        }

        #[inline(always)]
        fn dot_rows4<R: Row>(self, w: [R; 4], x: &[f32]) -> [f32; 4] {
            let n = w[0].len();
            let x = &x[..n];
            let chunks = n / LANES;
            // SAFETY: as in `dot_row`; the four rows have the same length.
            let acc = unsafe {
                let mut lo = [_mm256_setzero_ps(); 4];
                let mut hi = [_mm256_setzero_ps(); 4];
                for k in 0..chunks {
                    let xp = x[k * LANES..(k + 1) * LANES].as_ptr();
                    let (xl, xh) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(HALF)));
                    for j in 0..4 {
                        let (wl, wh) = w[j].chunk_avx2(k);
                        lo[j] = _mm256_add_ps(lo[j], _mm256_mul_ps(wl, xl));
                        hi[j] = _mm256_add_ps(hi[j], _mm256_mul_ps(wh, xh));
                    }
                }
                [0, 1, 2, 3].map(|j| (lo[j], hi[j]))
            };
            let mut s = [0f32; 4];
            for j in 0..4 {
                s[j] = combine(lanes_of(acc[j].0), lanes_of(acc[j].1));
                for (i, xv) in x.iter().enumerate().skip(chunks * LANES) {
                    s[j] += w[j].get(i) * xv;
                }
            }
            s
        }

        #[inline(always)]
        fn widen_f16(self, src: &[half::f16], dst: &mut [f32]) {
            widen_f16_f16c(src, dst)
        }
    }

    /// F16C's exact widening, 8 values at a time, the rest one by one.
    #[inline(always)]
    pub(super) fn widen_f16_f16c(src: &[half::f16], dst: &mut [f32]) {
        let dst = &mut dst[..src.len()];
        let whole = src.len() / 8 * 8;
        for (d, s) in dst[..whole].chunks_exact_mut(8).zip(src.chunks_exact(8)) {
            // SAFETY: F16C is present (`Avx2`/`Avx512` exist); 8 values are read and written.
            unsafe {
                let v = _mm_loadu_si128(s.as_ptr() as *const __m128i);
                _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(v));
            }
        }
        for (d, s) in dst[whole..].iter_mut().zip(&src[whole..]) {
            *d = s.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{combine_lanes, Lanes, Row, LANES};

    /// The fixed order with all 16 lanes in one `__m512` register. Only constructed after
    /// AVX-512 F/BW, AVX2 and F16C were detected; its methods are meant to be inlined into
    /// `#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]` functions.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512(());

    impl Avx512 {
        /// # Safety
        /// The CPU must support AVX-512 F/BW, AVX2 and F16C.
        pub(crate) unsafe fn new_unchecked() -> Avx512 {
            Avx512(())
        }
    }

    #[inline(always)]
    fn combine16(v: __m512) -> f32 {
        let mut l = [0f32; LANES];
        // SAFETY: `l` holds 16 f32; `Avx512` exists only on CPUs with AVX-512 F.
        unsafe { _mm512_storeu_ps(l.as_mut_ptr(), v) };
        combine_lanes(&l)
    }

    impl Lanes for Avx512 {
        #[inline(always)]
        fn dot_row<R: Row>(self, w: R, x: &[f32]) -> f32 {
            let n = w.len();
            let x = &x[..n];
            let chunks = n / LANES;
            let xp = x.as_ptr();
            // SAFETY: AVX-512 is present (`Avx512` exists); chunk loads stay below `n`.
            let acc = unsafe {
                let mut acc = _mm512_setzero_ps();
                w.chunks_avx512(chunks, |k, wv| {
                    let xv = _mm512_loadu_ps(xp.add(k * LANES));
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(wv, xv));
                });
                acc
            };
            let mut s = combine16(acc);
            for (i, xv) in x.iter().enumerate().skip(chunks * LANES) {
                s += w.get(i) * xv;
            }
            s
        }

        #[inline(always)]
        fn dot4_row<R: Row>(self, w: R, x: [&[f32]; 4]) -> [f32; 4] {
            let n = w.len();
            let x = x.map(|v| &v[..n]);
            let chunks = n / LANES;
            let xp = x.map(|v| v.as_ptr());
            // SAFETY: as in `dot_row`.
            let acc = unsafe {
                let mut acc = [_mm512_setzero_ps(); 4];
                w.chunks_avx512(chunks, |k, wv| {
                    for j in 0..4 {
                        let xv = _mm512_loadu_ps(xp[j].add(k * LANES));
                        acc[j] = _mm512_add_ps(acc[j], _mm512_mul_ps(wv, xv));
                    }
                });
                acc
            };
            let mut s = [0f32; 4];
            for j in 0..4 {
                s[j] = combine16(acc[j]);
                for (i, xv) in x[j].iter().enumerate().skip(chunks * LANES) {
                    s[j] += w.get(i) * xv;
                }
            }
            s
        }

        #[inline(always)]
        fn dot_rows4<R: Row>(self, w: [R; 4], x: &[f32]) -> [f32; 4] {
            let n = w[0].len();
            let x = &x[..n];
            let chunks = n / LANES;
            let xp = x.as_ptr();
            // SAFETY: as in `dot_row`; the four rows have the same length.
            let acc = unsafe {
                let mut acc = [_mm512_setzero_ps(); 4];
                R::chunks4_avx512(w, chunks, |k, wv| {
                    let xv = _mm512_loadu_ps(xp.add(k * LANES));
                    for j in 0..4 {
                        acc[j] = _mm512_add_ps(acc[j], _mm512_mul_ps(wv[j], xv));
                    }
                });
                acc
            };
            let mut s = [0f32; 4];
            for j in 0..4 {
                s[j] = combine16(acc[j]);
                for (i, xv) in x.iter().enumerate().skip(chunks * LANES) {
                    s[j] += w[j].get(i) * xv;
                }
            }
            s
        }

        #[inline(always)]
        fn widen_f16(self, src: &[half::f16], dst: &mut [f32]) {
            super::avx2::widen_f16_f16c(src, dst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The documented order, written out naively.
    fn reference(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let full = n - n % 16;
        let mut acc = [0f32; 16];
        for i in 0..full {
            acc[i % 16] += a[i] * b[i];
        }
        let a8: Vec<f32> = (0..8).map(|l| acc[l] + acc[l + 8]).collect();
        let a4: Vec<f32> = (0..4).map(|l| a8[l] + a8[l + 4]).collect();
        let mut s = (a4[0] + a4[2]) + (a4[1] + a4[3]);
        for i in full..n {
            s += a[i] * b[i];
        }
        s
    }

    fn check<L: Lanes>(lanes: L) {
        let mut seed = 7;
        for n in [0, 1, 5, 15, 16, 17, 64, 100, 576, 1537] {
            let w: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let xs: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..n).map(|_| lcg(&mut seed)).collect())
                .collect();
            let four = lanes.dot4_row(&w[..], [&xs[0], &xs[1], &xs[2], &xs[3]]);
            // Four weight rows (the activation rows reused as weights) against one `w`.
            let rows4 = lanes.dot_rows4([&xs[0][..], &xs[1], &xs[2], &xs[3]], &w);
            for k in 0..4 {
                assert_eq!(
                    rows4[k].to_bits(),
                    reference(&xs[k], &w).to_bits(),
                    "n={n} k={k}"
                );
                let r = reference(&w, &xs[k]);
                assert_eq!(
                    lanes.dot_row(&w[..], &xs[k]).to_bits(),
                    r.to_bits(),
                    "n={n}"
                );
                assert_eq!(four[k].to_bits(), r.to_bits(), "n={n} k={k}");
            }
        }
    }

    #[test]
    fn every_implementation_follows_the_documented_order() {
        check(Portable);
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::isa::available().contains(&crate::cpu::isa::Isa::Avx2) {
            // SAFETY: AVX2 and F16C were just detected; the test body runs on this CPU.
            check(unsafe { Avx2::new_unchecked() });
        }
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::isa::available().contains(&crate::cpu::isa::Isa::Avx512) {
            // SAFETY: AVX-512 F/BW, AVX2 and F16C were just detected.
            check(unsafe { Avx512::new_unchecked() });
        }
    }
}
