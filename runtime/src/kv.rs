//! The KV cache's storage form (`--kv-cache f32|bf16|int8`) and its rounding, one definition for
//! both backends (the CUDA side, kernels/src/cuda/attention.cu's `kv_round_row` and the
//! attention kernel, computes the same bits).
//!
//! Keys and values are rounded to the storage form when they are written, and every attention
//! read (prefill, decode, a recompute) reads the stored form, so cached decode still gives the
//! bits of a recompute within each setting, and a teacher-forced pass feels the precision too.
//!
//! - `f32`: stored as computed (the default; its bits are those of every earlier release).
//! - `bf16`: round-to-nearest-even of the f32 value (NaN stays NaN).
//! - `int8`: each vector of `head_dim` values is cut into blocks of `B` =
//!   [`int8_block`]`(head_dim)` values (32, or the largest power of two dividing head_dim where
//!   that is smaller; at least 8), and each block is
//!   1. rotated by the unnormalized `B`-point Walsh-Hadamard transform ([`hadamard`]: stages of
//!      butterflies `(a + b, a - b)` at distances 1, 2, 4, ... < B, each an f32 operation),
//!      which spreads a large channel over the block so that it no longer sets the step of the
//!      others;
//!   2. quantized symmetrically with a bf16 scale: `scale = max|y| / 127` (an f32 division)
//!      rounded *up* to bf16, `q = round_ties_even(y / scale)` clamped to [-127, 127] (0 where
//!      the scale is 0), read back as `q * scale` (one f32 product).
//!
//!   The cache then holds rotated keys and values. Attention rotates each query's blocks the
//!   same way and multiplies them by 1/B (exact) before its scores, and rotates each output
//!   block and multiplies it by 1/B after its weighted sum of values: since `H * H = B I`, the
//!   scores and outputs are those of an unrotated cache up to the rounding. 34 bytes per 32
//!   values (q8_0's layout): 0.53x bf16's bytes, 0.27x f32's. docs/decisions/0027 has the
//!   measurements behind the design.

use std::fmt;
use std::str::FromStr;

/// How the KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvPrecision {
    /// f32 as computed (the default).
    #[default]
    F32,
    /// bf16, round-to-nearest-even.
    Bf16,
    /// int8 in Hadamard-rotated blocks of up to 32 values with a bf16 scale each.
    Int8,
}

impl KvPrecision {
    pub const ALL: [KvPrecision; 3] = [KvPrecision::F32, KvPrecision::Bf16, KvPrecision::Int8];

    /// Bytes one cached vector of `head_dim` values takes (scale included).
    pub fn vector_bytes(self, head_dim: usize) -> usize {
        match self {
            KvPrecision::F32 => 4 * head_dim,
            KvPrecision::Bf16 => 2 * head_dim,
            KvPrecision::Int8 => head_dim + int8_scale_bytes(head_dim),
        }
    }

    /// Whether a model with heads of `head_dim` values can store its cache in this form: int8
    /// needs blocks of at least [`INT8_MIN_BLOCK`] (smaller ones would spend more on scales
    /// than bf16 does).
    pub fn check(self, head_dim: usize) -> Result<(), String> {
        if self == KvPrecision::Int8 && (head_dim == 0 || int8_block(head_dim) < INT8_MIN_BLOCK) {
            return Err(format!(
                "--kv-cache int8 needs a head_dim that is a multiple of {INT8_MIN_BLOCK}; this \
                 model's is {head_dim} (use bf16)"
            ));
        }
        Ok(())
    }

    pub fn name(self) -> &'static str {
        match self {
            KvPrecision::F32 => "f32",
            KvPrecision::Bf16 => "bf16",
            KvPrecision::Int8 => "int8",
        }
    }
}

impl FromStr for KvPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<KvPrecision, String> {
        match s {
            "f32" => Ok(KvPrecision::F32),
            "bf16" => Ok(KvPrecision::Bf16),
            "int8" => Ok(KvPrecision::Int8),
            other => Err(format!("{other}: expected f32, bf16 or int8")),
        }
    }
}

impl fmt::Display for KvPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `x` rounded to bf16 (round-to-nearest-even; a NaN stays a quiet NaN), as its bits.
pub fn bf16_from_f32(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The f32 value of bf16 bits (exact).
pub fn bf16_to_f32(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

/// The largest int8 block: one rotation and one scale each.
pub const INT8_MAX_BLOCK: usize = 32;
/// The smallest int8 block [`KvPrecision::check`] accepts.
pub const INT8_MIN_BLOCK: usize = 8;

/// Values per int8 block for heads of `head_dim` values: 32, or the largest power of two
/// dividing `head_dim` where that is smaller.
pub fn int8_block(head_dim: usize) -> usize {
    if head_dim == 0 {
        INT8_MAX_BLOCK
    } else {
        INT8_MAX_BLOCK.min(1 << head_dim.trailing_zeros())
    }
}

/// Bytes of an int8 vector's scales: one bf16 per block.
pub fn int8_scale_bytes(head_dim: usize) -> usize {
    2 * (head_dim / int8_block(head_dim))
}

/// The unnormalized Walsh-Hadamard transform of one block (a power of two long), in place: at
/// distances 1, 2, 4, ... below its length, each pair `(a, b)` (b the one at the higher index)
/// becomes `(a + b, a - b)`. Applying it twice gives the block times its length, up to the
/// rounding of the sums.
pub fn hadamard(x: &mut [f32]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for i in 0..n {
            if i & h == 0 {
                let (a, b) = (x[i], x[i + h]);
                x[i] = a + b;
                x[i + h] = a - b;
            }
        }
        h *= 2;
    }
}

/// Every block of `block` values of `x` rotated by [`hadamard`] and multiplied by `1 / block`
/// (exact): the query side of an int8 cache before its scores, and the output side after its
/// sum of values.
pub fn hadamard_scaled(x: &mut [f32], block: usize) {
    let inv = 1.0 / block as f32;
    for b in x.chunks_exact_mut(block) {
        hadamard(b);
        for v in b.iter_mut() {
            *v *= inv;
        }
    }
}

/// `x` rounded up to the next bf16 (exact when it is one), as its bits; for the non-negative
/// scales of [`int8_quantize`] (a NaN never reaches it: the max skips NaNs).
pub fn bf16_round_up(x: f32) -> u16 {
    let b = x.to_bits();
    let up = if b & 0xffff == 0 {
        b
    } else {
        (b | 0xffff).wrapping_add(1)
    };
    (up >> 16) as u16
}

/// Rotates and quantizes one block (at most [`INT8_MAX_BLOCK`] values, a power of two) to int8
/// (see the module's definition); returns the scale's bf16 bits.
// `max(-127).min(127)`, not `clamp`: a NaN becomes -127, as CUDA's `fminf(fmaxf(r, -127), 127)`.
#[allow(clippy::manual_clamp)]
pub fn int8_quantize(x: &[f32], q: &mut [i8]) -> u16 {
    let mut buf = [0f32; INT8_MAX_BLOCK];
    let y = &mut buf[..x.len()];
    y.copy_from_slice(x);
    hadamard(y);
    let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    let bits = bf16_round_up(amax / 127.0);
    let scale = bf16_to_f32(bits);
    for (qi, &v) in q.iter_mut().zip(y.iter()) {
        *qi = if scale == 0.0 {
            0
        } else {
            // max/min first: a NaN becomes -127 here as in CUDA's fmaxf.
            (v / scale).round_ties_even().max(-127.0).min(127.0) as i8
        };
    }
    bits
}

/// Reads an int8 block back (still rotated): `q * scale`, one rounded f32 product per value.
pub fn int8_dequantize(q: &[i8], scale: u16, out: &mut [f32]) {
    let scale = bf16_to_f32(scale);
    for (o, &qi) in out.iter_mut().zip(q) {
        *o = qi as f32 * scale;
    }
}

/// [`int8_quantize`] over consecutive blocks of `block` values: `x` into `q`, one scale each
/// into `scales`.
pub fn int8_quantize_blocks(x: &[f32], q: &mut [i8], scales: &mut [u16], block: usize) {
    for ((x, q), s) in x
        .chunks_exact(block)
        .zip(q.chunks_exact_mut(block))
        .zip(scales)
    {
        *s = int8_quantize(x, q);
    }
}

/// [`int8_dequantize`] over consecutive blocks of `block` values.
pub fn int8_dequantize_blocks(q: &[i8], scales: &[u16], out: &mut [f32], block: usize) {
    for ((q, &s), out) in q
        .chunks_exact(block)
        .zip(scales)
        .zip(out.chunks_exact_mut(block))
    {
        int8_dequantize(q, s, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names() {
        for p in KvPrecision::ALL {
            assert_eq!(p.name().parse::<KvPrecision>(), Ok(p));
        }
        let e = "int4".parse::<KvPrecision>().unwrap_err();
        assert!(e.contains("int4") && e.contains("f32, bf16 or int8"), "{e}");
        assert_eq!(KvPrecision::default(), KvPrecision::F32);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties to the even (1.0).
        assert_eq!(bf16_from_f32(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even.
        assert_eq!(bf16_from_f32(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        // Just above the halfway point rounds up.
        assert_eq!(bf16_from_f32(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
        assert_eq!(bf16_from_f32(-2.5), 0xc020);
        assert_eq!(bf16_to_f32(bf16_from_f32(3.140625)), 3.140625);
        assert!(bf16_to_f32(bf16_from_f32(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(bf16_from_f32(f32::MAX)), f32::INFINITY);
        // Against an f64 reference: the nearest bf16, ties to even.
        for i in 0..2000 {
            let x = ((i as f32) * 0.7311).sin() * 10f32.powi(i % 7 - 3);
            let got = bf16_to_f32(bf16_from_f32(x)) as f64;
            let b = x.to_bits() & 0xffff_0000;
            let lo = f32::from_bits(b) as f64;
            let hi = f32::from_bits(b + 0x1_0000) as f64;
            let (dl, dh) = ((x as f64 - lo).abs(), (hi - x as f64).abs());
            let want = if dl < dh || (dl == dh && (b >> 16) & 1 == 0) {
                lo
            } else {
                hi
            };
            assert_eq!(got, want, "{x}");
        }
    }

    /// The transform against its matrix: entry (i, j) of H is (-1)^popcount(i & j).
    #[test]
    fn hadamard_is_the_walsh_hadamard_matrix() {
        for n in [8usize, 16, 32] {
            let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 4.0).collect();
            let mut y = x.clone();
            hadamard(&mut y);
            for (i, &yi) in y.iter().enumerate() {
                let want: f64 = (0..n)
                    .map(|j| {
                        let sign = if (i & j).count_ones() % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        };
                        sign * x[j] as f64
                    })
                    .sum();
                assert!((yi as f64 - want).abs() < 1e-4, "{n} {i}: {yi} vs {want}");
            }
            // Twice, then 1/n: the block back.
            hadamard_scaled(&mut y, n);
            for (a, b) in y.iter().zip(&x) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        // Integers stay exact: a lone channel of 1 becomes a row of +-1.
        let mut e = [0f32; 32];
        e[5] = 1.0;
        hadamard(&mut e);
        assert!(e.iter().all(|v| v.abs() == 1.0));
        assert_eq!((e[0], e[1]), (1.0, -1.0));
    }

    #[test]
    fn bf16_scales_round_up() {
        assert_eq!(bf16_round_up(1.0), 0x3f80);
        assert_eq!(bf16_round_up(1.0 + 2f32.powi(-20)), 0x3f81);
        assert_eq!(bf16_round_up(0.0), 0);
        assert_eq!(bf16_round_up(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_round_up(f32::MAX), 0x7f80);
        for i in 1..2000 {
            let x = (i as f32 * 0.913).sin().abs() * 10f32.powi(i % 9 - 4);
            let up = bf16_round_up(x);
            assert!(bf16_to_f32(up) >= x, "{x}");
            // The bf16 below it is below x.
            assert!(f32::from_bits(((up as u32) << 16) - 0x1_0000) < x, "{x}");
        }
    }

    #[test]
    fn int8_definition() {
        // A block with one channel 40 times the rest: the rotation spreads it.
        let x: [f32; 32] = std::array::from_fn(|i| {
            if i == 7 {
                40.0
            } else {
                ((i as f32) * 0.61).cos()
            }
        });
        let mut q = [0i8; 32];
        let bits = int8_quantize(&x, &mut q);
        let s = bf16_to_f32(bits);
        let mut y = x;
        hadamard(&mut y);
        let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(bits, bf16_round_up(amax / 127.0));
        assert!(s >= amax / 127.0);
        for (&qi, &v) in q.iter().zip(&y) {
            assert_eq!(qi as f32, (v / s).round_ties_even().clamp(-127.0, 127.0));
        }
        let mut back = [0f32; 32];
        int8_dequantize(&q, bits, &mut back);
        for (b, v) in back.iter().zip(&y) {
            // Half a step of rounding, plus the product's rounding.
            assert!((b - v).abs() <= 0.5 * s * 1.0001, "{b} vs {v}");
        }
        // Unrotated, every value is within a fraction of the step one scale over the raw
        // block would have (40 / 127).
        hadamard_scaled(&mut back, 32);
        let raw_step = 40.0 / 127.0;
        let worst = back
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.25 * raw_step, "{worst} against {raw_step}");
        // A block of 8 whose transform is 127 everywhere: scale exactly 1.
        let mut e = [0f32; 8];
        e[0] = 127.0;
        let b1 = int8_quantize(&e, &mut q[..8]);
        assert_eq!(bf16_to_f32(b1), 1.0);
        assert!(q[..8].iter().all(|&v| v == 127));
        // An all-zero block has scale 0 and reads back as zeros.
        let b0 = int8_quantize(&[0.0; 32], &mut q);
        assert_eq!((b0, q), (0, [0i8; 32]));
    }

    #[test]
    fn int8_blocks_follow_head_dim() {
        assert_eq!(int8_block(64), 32);
        assert_eq!(int8_block(256), 32);
        assert_eq!(int8_block(96), 32);
        assert_eq!(int8_block(80), 16);
        assert_eq!(int8_block(16), 16);
        assert_eq!(int8_block(24), 8);
        for hd in [8, 16, 24, 64, 80, 96, 128, 256] {
            assert!(KvPrecision::Int8.check(hd).is_ok(), "{hd}");
        }
        let e = KvPrecision::Int8.check(36).unwrap_err();
        assert!(e.contains("36") && e.contains("multiple of 8"), "{e}");
        assert!(KvPrecision::Bf16.check(36).is_ok());
        assert_eq!(KvPrecision::Int8.vector_bytes(256), 256 + 16);
        assert_eq!(KvPrecision::Int8.vector_bytes(80), 80 + 10);
    }
}
