//! The one reduction order used by every dot product of the CPU backend.
//!
//! Order, for vectors of length `n`: lane accumulators `acc[l]` (l in 0..16) start at +0.0 and
//! take, chunk after chunk of `chunks_exact(16)`, `acc[l] += a[16k + l] * b[16k + l]` (the product
//! rounded to f32, then the sum rounded: never fused). The 16 lanes are then combined by a fixed
//! tree: `acc[l] + acc[l + 8]`, then `+ [l + 4]`, `+ [l + 2]`, `+ [l + 1]`. Finally the tail
//! (`n % 16` elements) is added in index order to that sum.
//!
//! [`dot`] and [`dot4`] implement exactly this order; `dot4` runs four independent instances
//! side by side (one weight row against four activation rows) so batched products reuse the row
//! while giving each activation row the bits `dot` would.
//!
//! The hot kernels are generic over [`Lanes`]: [`Portable`] is plain Rust (LLVM's vectorizer
//! does not reliably keep 16 accumulators in full registers, so this is the baseline path), and
//! `Avx2` holds lanes 0..8 and 8..16 in two AVX registers. Both perform the identical sequence
//! of IEEE operations per lane, hence identical bits (tests compare them).

use half::bf16;

/// Number of lane accumulators in the fixed reduction order.
pub const LANES: usize = 16;

/// A way to run the fixed-order dot products; see the module documentation.
///
/// The `_bf16` forms take the weight row as bf16 and widen it in registers (exact: a bf16 is the
/// high half of an f32), so they give the bits of the f32 forms on the widened row while reading
/// half the bytes: GEMV is memory-bound.
pub(crate) trait Lanes: Copy + Send + Sync {
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
    fn dot4(self, w: &[f32], x: [&[f32]; 4]) -> [f32; 4];
    fn dot_bf16(self, w: &[bf16], x: &[f32]) -> f32;
    fn dot4_bf16(self, w: &[bf16], x: [&[f32]; 4]) -> [f32; 4];
}

/// Exact bf16 -> f32.
#[inline(always)]
fn widen(b: bf16) -> f32 {
    f32::from_bits((b.to_bits() as u32) << 16)
}

/// The plain-Rust implementation of the fixed order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }
    #[inline(always)]
    fn dot4(self, w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
        dot4(w, x)
    }
    #[inline(always)]
    fn dot_bf16(self, w: &[bf16], x: &[f32]) -> f32 {
        // Widening chunk by chunk keeps the row out of memory as f32; the arithmetic is `dot`'s.
        let n = w.len().min(x.len());
        let (cw, tw) = w[..n].as_chunks::<LANES>();
        let (cx, tx) = x[..n].as_chunks::<LANES>();
        let mut lo = [0f32; HALF];
        let mut hi = [0f32; HALF];
        for (wc, xc) in cw.iter().zip(cx) {
            let wf = wc.map(widen);
            for l in 0..HALF {
                lo[l] += wf[l] * xc[l];
            }
            for l in 0..HALF {
                hi[l] += wf[HALF + l] * xc[HALF + l];
            }
        }
        let mut s = combine(lo, hi);
        for (w, x) in tw.iter().zip(tx) {
            s += widen(*w) * x;
        }
        s
    }
    #[inline(always)]
    fn dot4_bf16(self, w: &[bf16], x: [&[f32]; 4]) -> [f32; 4] {
        x.map(|x| self.dot_bf16(w, x))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::{combine, widen, Lanes, HALF, LANES};

    /// Loads 8 bf16 and widens them exactly to 8 f32.
    ///
    /// # Safety
    /// `p` must point to 8 readable bf16; the CPU must support AVX2.
    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    /// The fixed order with lanes `0..8` and `8..16` in two `__m256` registers. Only
    /// constructed after AVX2 was detected; its methods are meant to be inlined into
    /// `#[target_feature(enable = "avx2")]` functions.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2(());

    impl Avx2 {
        /// # Safety
        /// The CPU must support AVX2.
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
        fn dot(self, a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len());
            let (ca, ta) = a[..n].as_chunks::<LANES>();
            let (cb, tb) = b[..n].as_chunks::<LANES>();
            // SAFETY: every load reads 8 f32 inside a 16-element chunk; AVX is present.
            let (lo, hi) = unsafe {
                let mut lo = _mm256_setzero_ps();
                let mut hi = _mm256_setzero_ps();
                for (x, y) in ca.iter().zip(cb) {
                    let (x, y) = (x.as_ptr(), y.as_ptr());
                    lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(y)));
                    hi = _mm256_add_ps(
                        hi,
                        _mm256_mul_ps(_mm256_loadu_ps(x.add(HALF)), _mm256_loadu_ps(y.add(HALF))),
                    );
                }
                (lo, hi)
            };
            let mut s = combine(lanes_of(lo), lanes_of(hi));
            for (x, y) in ta.iter().zip(tb) {
                s += x * y;
            }
            s
        }

        #[inline(always)]
        fn dot4(self, w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
            let n = x.iter().fold(w.len(), |n, v| n.min(v.len()));
            let (cw, tw) = w[..n].as_chunks::<LANES>();
            let xs = x.map(|v| v[..n].as_chunks::<LANES>());
            // SAFETY: as in `dot`.
            let acc = unsafe {
                let mut lo = [_mm256_setzero_ps(); 4];
                let mut hi = [_mm256_setzero_ps(); 4];
                for (k, wc) in cw.iter().enumerate() {
                    let wl = _mm256_loadu_ps(wc.as_ptr());
                    let wh = _mm256_loadu_ps(wc.as_ptr().add(HALF));
                    for j in 0..4 {
                        let xc = xs[j].0[k].as_ptr();
                        lo[j] = _mm256_add_ps(lo[j], _mm256_mul_ps(wl, _mm256_loadu_ps(xc)));
                        hi[j] =
                            _mm256_add_ps(hi[j], _mm256_mul_ps(wh, _mm256_loadu_ps(xc.add(HALF))));
                    }
                }
                [0, 1, 2, 3].map(|j| (lo[j], hi[j]))
            };
            let mut s = [0f32; 4];
            for j in 0..4 {
                s[j] = combine(lanes_of(acc[j].0), lanes_of(acc[j].1));
                for (w, x) in tw.iter().zip(xs[j].1) {
                    s[j] += w * x;
                }
            }
            s
        }

        #[inline(always)]
        fn dot_bf16(self, w: &[bf16], x: &[f32]) -> f32 {
            let n = w.len().min(x.len());
            let (cw, tw) = w[..n].as_chunks::<LANES>();
            let (cx, tx) = x[..n].as_chunks::<LANES>();
            // SAFETY: every load reads 8 values inside a 16-element chunk; AVX2 is present.
            let (lo, hi) = unsafe {
                let mut lo = _mm256_setzero_ps();
                let mut hi = _mm256_setzero_ps();
                for (wc, xc) in cw.iter().zip(cx) {
                    let (wp, xp) = (wc.as_ptr(), xc.as_ptr());
                    lo = _mm256_add_ps(lo, _mm256_mul_ps(load_bf16(wp), _mm256_loadu_ps(xp)));
                    hi = _mm256_add_ps(
                        hi,
                        _mm256_mul_ps(load_bf16(wp.add(HALF)), _mm256_loadu_ps(xp.add(HALF))),
                    );
                }
                (lo, hi)
            };
            let mut s = combine(lanes_of(lo), lanes_of(hi));
            for (w, x) in tw.iter().zip(tx) {
                s += widen(*w) * x;
            }
            s
        }

        #[inline(always)]
        fn dot4_bf16(self, w: &[bf16], x: [&[f32]; 4]) -> [f32; 4] {
            let n = x.iter().fold(w.len(), |n, v| n.min(v.len()));
            let (cw, tw) = w[..n].as_chunks::<LANES>();
            let xs = x.map(|v| v[..n].as_chunks::<LANES>());
            // SAFETY: as in `dot_bf16`.
            let acc = unsafe {
                let mut lo = [_mm256_setzero_ps(); 4];
                let mut hi = [_mm256_setzero_ps(); 4];
                for (k, wc) in cw.iter().enumerate() {
                    let wl = load_bf16(wc.as_ptr());
                    let wh = load_bf16(wc.as_ptr().add(HALF));
                    for j in 0..4 {
                        let xc = xs[j].0[k].as_ptr();
                        lo[j] = _mm256_add_ps(lo[j], _mm256_mul_ps(wl, _mm256_loadu_ps(xc)));
                        hi[j] =
                            _mm256_add_ps(hi[j], _mm256_mul_ps(wh, _mm256_loadu_ps(xc.add(HALF))));
                    }
                }
                [0, 1, 2, 3].map(|j| (lo[j], hi[j]))
            };
            let mut s = [0f32; 4];
            for j in 0..4 {
                s[j] = combine(lanes_of(acc[j].0), lanes_of(acc[j].1));
                for (w, x) in tw.iter().zip(xs[j].1) {
                    s[j] += widen(*w) * x;
                }
            }
            s
        }
    }
}

/// Half the lane accumulators: lanes `0..8` live in one `[f32; 8]`, lanes `8..16` in another,
/// which maps onto whole vector registers (one AVX2 register, or two SSE registers, each).
const HALF: usize = LANES / 2;

/// The fixed tree combine of the 16 lane accumulators, given as lanes `0..8` and `8..16`.
#[inline(always)]
fn combine(lo: [f32; HALF], hi: [f32; HALF]) -> f32 {
    let mut a8 = [0f32; HALF];
    for l in 0..HALF {
        a8[l] = lo[l] + hi[l];
    }
    let a4 = [a8[0] + a8[4], a8[1] + a8[5], a8[2] + a8[6], a8[3] + a8[7]];
    let a2 = [a4[0] + a4[2], a4[1] + a4[3]];
    a2[0] + a2[1]
}

/// `sum(a[i] * b[i])` over the common length of `a` and `b`, in the fixed order described above.
/// Callers pass equal lengths; the kernels check shapes before calling.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // Fixed-size chunks (`&[f32; 16]`) and accumulators in register-sized halves are what lets
    // LLVM keep the lanes in full vector registers.
    let (ca, ta) = a[..n].as_chunks::<LANES>();
    let (cb, tb) = b[..n].as_chunks::<LANES>();
    let mut lo = [0f32; HALF];
    let mut hi = [0f32; HALF];
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..HALF {
            lo[l] += x[l] * y[l];
        }
        for l in 0..HALF {
            hi[l] += x[HALF + l] * y[HALF + l];
        }
    }
    let mut s = combine(lo, hi);
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// Four dot products of `w` against `x0..x3`, each in exactly the order of [`dot`].
#[inline(always)]
pub fn dot4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    let n = x.iter().fold(w.len(), |n, v| n.min(v.len()));
    let (cw, tw) = w[..n].as_chunks::<LANES>();
    let xs = x.map(|v| v[..n].as_chunks::<LANES>());
    let mut lo = [[0f32; HALF]; 4];
    let mut hi = [[0f32; HALF]; 4];
    for (k, wc) in cw.iter().enumerate() {
        for j in 0..4 {
            let xc = &xs[j].0[k];
            for l in 0..HALF {
                lo[j][l] += wc[l] * xc[l];
            }
            for l in 0..HALF {
                hi[j][l] += wc[HALF + l] * xc[HALF + l];
            }
        }
    }
    let mut s = [0f32; 4];
    for j in 0..4 {
        s[j] = combine(lo[j], hi[j]);
        for (w, x) in tw.iter().zip(xs[j].1) {
            s[j] += w * x;
        }
    }
    s
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

    #[test]
    fn dot_and_dot4_follow_the_documented_order() {
        let mut seed = 7;
        for n in [0, 1, 5, 15, 16, 17, 64, 100, 576, 1537] {
            let w: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let xs: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..n).map(|_| lcg(&mut seed)).collect())
                .collect();
            let four = dot4(&w, [&xs[0], &xs[1], &xs[2], &xs[3]]);
            for k in 0..4 {
                let r = reference(&w, &xs[k]);
                assert_eq!(dot(&w, &xs[k]).to_bits(), r.to_bits(), "n={n}");
                assert_eq!(four[k].to_bits(), r.to_bits(), "n={n} k={k}");
            }
        }
    }
}
