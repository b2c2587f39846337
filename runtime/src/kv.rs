//! The KV cache's storage form (`--kv-cache f32|bf16|int8`) and its rounding, one definition for
//! both backends (the CUDA side, kernels/src/cuda/attention.cu's `kv_store`, computes the same
//! bits).
//!
//! Keys and values are rounded to the storage form when they are written, and every attention
//! read (prefill, decode, a recompute) reads the stored form, so cached decode still gives the
//! bits of a recompute within each setting, and a teacher-forced pass feels the precision too.
//!
//! - `f32`: stored as computed (the default; its bits are those of every earlier release).
//! - `bf16`: round-to-nearest-even of the f32 value (NaN stays NaN).
//! - `int8`: per (layer, kv head, position) vector of `head_dim` values, symmetric:
//!   `scale = max|x| / 127` (an f32 division), `q = round_ties_even(x / scale)` clamped to
//!   [-127, 127] (0 where `scale` is 0), read back as `q * scale` (one f32 product). The scale is
//!   an f32: 4 bytes per `head_dim` values (6% of the int8 payload at head_dim 64), no f16
//!   underflow of small vectors' scales, and the bytes are still about half of bf16's.

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
    /// int8 with one f32 scale per vector of `head_dim` values.
    Int8,
}

impl KvPrecision {
    pub const ALL: [KvPrecision; 3] = [KvPrecision::F32, KvPrecision::Bf16, KvPrecision::Int8];

    /// Bytes one cached vector of `head_dim` values takes (scale included).
    pub fn vector_bytes(self, head_dim: usize) -> usize {
        match self {
            KvPrecision::F32 => 4 * head_dim,
            KvPrecision::Bf16 => 2 * head_dim,
            KvPrecision::Int8 => head_dim + 4,
        }
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

/// Quantizes one vector to int8 (see the module's definition); returns its scale.
// `max(-127).min(127)`, not `clamp`: a NaN becomes -127, as CUDA's `fminf(fmaxf(r, -127), 127)`.
#[allow(clippy::manual_clamp)]
pub fn int8_quantize(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = if scale == 0.0 {
            0
        } else {
            // max/min first: a NaN becomes -127 here as in CUDA's fmaxf.
            (v / scale).round_ties_even().max(-127.0).min(127.0) as i8
        };
    }
    scale
}

/// Reads an int8 vector back: `q * scale`, one rounded f32 product per value.
pub fn int8_dequantize(q: &[i8], scale: f32, out: &mut [f32]) {
    for (o, &qi) in out.iter_mut().zip(q) {
        *o = qi as f32 * scale;
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

    #[test]
    fn int8_definition() {
        let x = [0.5f32, -1.27, 0.005, 0.0, 1.0, -0.635];
        let mut q = [0i8; 6];
        let s = int8_quantize(&x, &mut q);
        assert_eq!(s, 1.27f32 / 127.0);
        assert_eq!(q[1], -127);
        assert_eq!(q[3], 0);
        for (&qi, &v) in q.iter().zip(&x) {
            assert_eq!(qi as f32, (v / s).round_ties_even());
        }
        let mut back = [0f32; 6];
        int8_dequantize(&q, s, &mut back);
        for (b, v) in back.iter().zip(&x) {
            // Half a step of rounding, plus the product's rounding.
            assert!((b - v).abs() <= 0.5 * s * 1.0001, "{b} vs {v}");
        }
        assert_eq!(back[1], -127.0 * s);
        // Ties go to even: 2.5 steps -> 2, 3.5 -> 4.
        let s2 = int8_quantize(&[127.0, 2.5, 3.5, -2.5], &mut q[..4]);
        assert_eq!(s2, 1.0);
        assert_eq!(&q[..4], &[127, 2, 4, -2]);
        // An all-zero vector has scale 0 and reads back as zeros.
        let s0 = int8_quantize(&[0.0; 4], &mut q[..4]);
        assert_eq!((s0, &q[..4]), (0.0, &[0i8; 4][..]));
    }
}
