//! ggml blocks from cllm's quantized rows, bit-exact where a GGUF type has cllm's arithmetic,
//! and llama.cpp's reference quantizers (`quantize_row_*_ref` in `ggml-quants.c`) for
//! `--requantize`.
//!
//! * `int4` (any group size, a multiple of 32) is Q4_1: per 32 values an f16 scale `d` and f16
//!   minimum `m`, `y = q·d + m` in two f32 operations in ggml's `dequantize_row_q4_1` and in
//!   gguf-py's numpy `(d * qs) + m`, which is cllm's `(f32(q) × s) + m`. A group's (s, m) is
//!   repeated in each of its 32-blocks. Nibbles: cllm puts column 2k in the low nibble of byte
//!   k; Q4_1 puts element j (of 32) in the low nibble of byte j and element j + 16 in its high
//!   nibble.
//! * `int8` / `int8g` (a group size a multiple of 32) is Q8_0 when every scale is an f16 value:
//!   `y = q·d`, one f32 multiplication, as cllm's `f32(q) × scale`.

use half::f16;

/// Q4_1 and Q8_0 block length.
pub const QK: usize = 32;

fn f16_at(b: &[u8], i: usize) -> [u8; 2] {
    [b[2 * i], b[2 * i + 1]]
}

/// One int4 row (`codes`: `cols / 2` bytes; `scales`, `mins`: the row's `cols / g` f16 values,
/// little-endian) as Q4_1 blocks appended to `out`.
pub fn int4_row_to_q4_1(codes: &[u8], scales: &[u8], mins: &[u8], g: usize, out: &mut Vec<u8>) {
    let cols = codes.len() * 2;
    let q = |c: usize| (codes[c / 2] >> ((c & 1) * 4)) & 0x0f;
    for b in 0..cols / QK {
        let group = b * QK / g;
        out.extend_from_slice(&f16_at(scales, group));
        out.extend_from_slice(&f16_at(mins, group));
        let base = b * QK;
        for j in 0..QK / 2 {
            out.push(q(base + j) | (q(base + j + QK / 2) << 4));
        }
    }
}

/// The f16 value equal to `s`, if there is one (every f32 that is one converts back exactly).
pub fn exact_f16(s: f32) -> Option<f16> {
    let h = f16::from_f32(s);
    (h.to_f32().to_bits() == s.to_bits()).then_some(h)
}

/// One int8 row (`codes`: `cols` bytes; `scales`: the row's f16 scales, one per `g` columns)
/// as Q8_0 blocks appended to `out`.
pub fn int8_row_to_q8_0(codes: &[u8], scales: &[f16], g: usize, out: &mut Vec<u8>) {
    for (b, block) in codes.chunks_exact(QK).enumerate() {
        out.extend_from_slice(&scales[b * QK / g].to_bits().to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// The types `--requantize` produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requant {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl Requant {
    pub fn parse(s: &str) -> Option<Requant> {
        match s.to_ascii_uppercase().as_str() {
            "Q8_0" => Some(Requant::Q8_0),
            "Q4_0" => Some(Requant::Q4_0),
            "Q4_1" => Some(Requant::Q4_1),
            _ => None,
        }
    }

    pub fn ggml(self) -> cllm_gguf::GgmlType {
        match self {
            Requant::Q8_0 => cllm_gguf::GgmlType::Q8_0,
            Requant::Q4_0 => cllm_gguf::GgmlType::Q4_0,
            Requant::Q4_1 => cllm_gguf::GgmlType::Q4_1,
        }
    }

    /// `x` (a multiple of 32 values) quantized with llama.cpp's reference algorithm.
    pub fn quantize(self, x: &[f32], out: &mut Vec<u8>) {
        for block in x.chunks_exact(QK) {
            match self {
                Requant::Q8_0 => q8_0_block(block, out),
                Requant::Q4_0 => q4_0_block(block, out),
                Requant::Q4_1 => q4_1_block(block, out),
            }
        }
    }
}

/// C's `roundf`: halfway cases away from zero.
fn roundf(x: f32) -> f32 {
    x.round()
}

/// `quantize_row_q8_0_ref`: d = amax / 127, q = roundf(x · (1/d)).
fn q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    for &v in x {
        out.push(roundf(v * id) as i8 as u8);
    }
}

/// `quantize_row_q4_0_ref`: d = max / -8 (max: the value of largest magnitude, the first
/// one), q = min(15, (int8)(x · (1/d) + 8.5)); element j and j + 16 share byte j.
fn q4_0_block(x: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        out.push(q(x[j]) | (q(x[j + QK / 2]) << 4));
    }
}

/// `quantize_row_q4_1_ref`: d = (max - min) / 15, q = min(15, (int8)((x - min) · (1/d) + 0.5)).
fn q4_1_block(x: &[f32], out: &mut Vec<u8>) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
    let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        out.push(q(x[j]) | (q(x[j + QK / 2]) << 4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cllm_format::quant::int4_dequantize;
    use cllm_gguf::dequant::dequantize;
    use cllm_gguf::GgmlType;

    #[test]
    fn int4_g64_is_q4_1_bit_for_bit() {
        // Two groups of 64: every code, odd scales and negative minimums.
        let cols = 128;
        let codes: Vec<u8> = (0..cols / 2).map(|k| (k * 37 % 256) as u8).collect();
        let s = [f16::from_f32(0.0123), f16::from_f32(3.5e-5)];
        let m = [f16::from_f32(-0.07), f16::from_f32(1.25)];
        let le = |v: &[f16]| v.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect();
        let (sb, mb): (Vec<u8>, Vec<u8>) = (le(&s), le(&m));
        let mut out = Vec::new();
        int4_row_to_q4_1(&codes, &sb, &mb, 64, &mut out);
        assert_eq!(out.len(), 4 * 20);
        let got = dequantize(GgmlType::Q4_1, &out, cols).unwrap();
        for (c, y) in got.iter().enumerate() {
            let q = (codes[c / 2] >> ((c & 1) * 4)) & 15;
            let want = int4_dequantize(q, s[c / 64], m[c / 64]);
            assert_eq!(y.to_bits(), want.to_bits(), "column {c}");
        }
    }

    #[test]
    fn int8_is_q8_0_and_f16_exactness() {
        assert!(exact_f16(0.5).is_some());
        assert!(exact_f16(0.1).is_none());
        let codes: Vec<u8> = (0..64).map(|k| (k as i8 - 30) as u8).collect();
        let scales = [f16::from_f32(0.25), f16::from_f32(0.001)];
        let mut out = Vec::new();
        int8_row_to_q8_0(&codes, &scales, 32, &mut out);
        let got = dequantize(GgmlType::Q8_0, &out, 64).unwrap();
        for (c, y) in got.iter().enumerate() {
            assert_eq!(*y, (codes[c] as i8) as f32 * scales[c / 32].to_f32());
        }
    }

    #[test]
    fn requantized_blocks_come_back_close() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
            .collect();
        for r in [Requant::Q8_0, Requant::Q4_0, Requant::Q4_1] {
            let mut out = Vec::new();
            r.quantize(&x, &mut out);
            let y = dequantize(r.ggml(), &out, 64).unwrap();
            let tol = if r == Requant::Q8_0 { 0.01 } else { 0.15 };
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < tol, "{r:?}: {a} vs {b}");
            }
        }
    }
}
