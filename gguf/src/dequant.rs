//! Dequantization of ggml blocks to f32.
//!
//! Block layouts (ggml `ggml-common.h`, all little-endian; `d`, `m`, `dmin`
//! are f16 unless noted). The arithmetic is plain f32 (no fused
//! multiply-add), in the order ggml and gguf-py use, so results are
//! bit-identical to theirs.
//!
//! | type | elems | bytes | layout |
//! |------|-------|-------|--------|
//! | Q4_0 | 32 | 18 | `d`, `qs[16]`: x[j] = (lo(qs[j]) - 8)·d, x[j+16] = (hi(qs[j]) - 8)·d |
//! | Q4_1 | 32 | 20 | `d`, `m`, `qs[16]`: x[j] = d·lo(qs[j]) + m, x[j+16] = d·hi(qs[j]) + m |
//! | Q5_0 | 32 | 22 | `d`, `qh` u32, `qs[16]`: 5th bit of x[j] is bit j of qh, of x[j+16] bit j+16; x = (q - 16)·d |
//! | Q5_1 | 32 | 24 | `d`, `m`, `qh` u32, `qs[16]`: as Q5_0 without the -16, x = d·q + m |
//! | Q8_0 | 32 | 34 | `d`, `qs[32]` i8: x[j] = qs[j]·d |
//! | Q4_K | 256 | 144 | `d`, `dmin`, `scales[12]` (8 x 6-bit scale/min pairs), `qs[128]` |
//! | Q5_K | 256 | 176 | `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]` |
//! | Q6_K | 256 | 210 | `ql[128]`, `qh[64]`, `scales[16]` i8, `d` |

use rayon::prelude::*;

use crate::error::GgufError;
use crate::types::GgmlType;

/// Blocks per parallel task.
const BLOCKS_PER_TASK: usize = 512;

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    match b.get(at..at + 2) {
        Some(&[lo, hi]) => half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32(),
        _ => 0.0,
    }
}

/// Dequantizes `data` (whole blocks of type `ty`) into a new vector of
/// `n_elements` f32 values.
pub fn dequantize(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    check_lengths(ty, data.len(), n_elements)?;
    let mut out = vec![0f32; n_elements];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

fn check_lengths(ty: GgmlType, bytes: usize, elements: usize) -> Result<(), GgufError> {
    let expected = ty.bytes_for(elements as u64);
    if expected != Some(bytes as u64) {
        return Err(GgufError::DataLengthMismatch {
            ty,
            bytes,
            elements,
        });
    }
    Ok(())
}

/// Dequantizes `data` (whole blocks of type `ty`) into `out`, whose length
/// is the number of elements.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    check_lengths(ty, data.len(), out.len())?;
    use GgmlType::*;
    match ty {
        F32 => blocks::<4, 1>(data, out, |b, o| o[0] = f32::from_le_bytes(*b)),
        F16 => blocks::<2, 1>(data, out, |b, o| {
            o[0] = half::f16::from_bits(u16::from_le_bytes(*b)).to_f32()
        }),
        BF16 => blocks::<2, 1>(data, out, |b, o| {
            o[0] = half::bf16::from_bits(u16::from_le_bytes(*b)).to_f32()
        }),
        Q4_0 => blocks::<18, 32>(data, out, q4_0),
        Q4_1 => blocks::<20, 32>(data, out, q4_1),
        Q5_0 => blocks::<22, 32>(data, out, q5_0),
        Q5_1 => blocks::<24, 32>(data, out, q5_1),
        Q8_0 => blocks::<34, 32>(data, out, q8_0),
        Q4_K => blocks::<144, 256>(data, out, q4_k),
        Q5_K => blocks::<176, 256>(data, out, q5_k),
        Q6_K => blocks::<210, 256>(data, out, q6_k),
        other => {
            return Err(GgufError::UnsupportedTensorType {
                tensor: String::new(),
                ty: other,
            })
        }
    }
    Ok(())
}

/// Runs `f` on every (block, output) pair, in parallel over groups of
/// blocks. Lengths were checked by the caller: `data` holds exactly
/// `out.len() / BS` blocks of `TS` bytes.
fn blocks<const TS: usize, const BS: usize>(
    data: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; TS], &mut [f32; BS]) + Sync,
) {
    let run = |data: &[u8], out: &mut [f32]| {
        for (b, o) in data.chunks_exact(TS).zip(out.chunks_exact_mut(BS)) {
            if let (Ok(b), Ok(o)) = (<&[u8; TS]>::try_from(b), <&mut [f32; BS]>::try_from(o)) {
                f(b, o);
            }
        }
    };
    // Plain types have tiny blocks: group more of them per task.
    let per_task = if BS == 1 {
        BLOCKS_PER_TASK * 256
    } else {
        BLOCKS_PER_TASK
    };
    if data.len() <= TS * per_task {
        run(data, out);
    } else {
        data.par_chunks(TS * per_task)
            .zip(out.par_chunks_mut(BS * per_task))
            .for_each(|(d, o)| run(d, o));
    }
}

fn q4_0(b: &[u8; 18], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8; 20], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * (q & 0x0F) as f32 + m;
        o[j + 16] = d * (q >> 4) as f32 + m;
    }
}

fn q5_0(b: &[u8; 22], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let x0 = ((q & 0x0F) as u32 | h0) as i32 - 16;
        let x1 = ((q >> 4) as u32 | h1) as i32 - 16;
        o[j] = x0 as f32 * d;
        o[j + 16] = x1 as f32 * d;
    }
}

fn q5_1(b: &[u8; 24], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let x0 = (q & 0x0F) as u32 | h0;
        let x1 = (q >> 4) as u32 | h1;
        o[j] = x0 as f32 * d + m;
        o[j + 16] = x1 as f32 * d + m;
    }
}

fn q8_0(b: &[u8; 34], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        o[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn k_scales(b: &[u8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    if let Some(src) = b.get(4..16) {
        s.copy_from_slice(src);
    }
    s
}

fn q4_k(b: &[u8; 144], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = k_scales(b);
    let qs = &b[16..144];
    for group in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * group, &scales);
        let (sc2, m2) = scale_min_k4(2 * group + 1, &scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * group..32 * group + 32];
        let y = &mut o[64 * group..64 * group + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8; 176], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = k_scales(b);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for group in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * group, &scales);
        let (sc2, m2) = scale_min_k4(2 * group + 1, &scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let u1 = 1u8 << (2 * group);
        let u2 = 2u8 << (2 * group);
        let q = &qs[32 * group..32 * group + 32];
        let y = &mut o[64 * group..64 * group + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8; 210], o: &mut [f32; 256]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut o[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| (sc[is + k] as i8) as f32;
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // indices mirror the block layouts
mod tests {
    use super::*;
    use half::f16;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn f32_f16_bf16() {
        let data: Vec<u8> = [1.5f32, -2.25, 0.0, 1e-3]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize(GgmlType::F32, &data, 4).unwrap(),
            vec![1.5, -2.25, 0.0, 1e-3]
        );
        let data: Vec<u8> = [1.5f32, -2.25, 65504.0]
            .iter()
            .flat_map(|&x| h(x))
            .collect();
        assert_eq!(
            dequantize(GgmlType::F16, &data, 3).unwrap(),
            vec![1.5, -2.25, 65504.0]
        );
        // bf16 is the top half of an f32.
        let data: Vec<u8> = [1.5f32, -3.0, 1e30]
            .iter()
            .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let out = dequantize(GgmlType::BF16, &data, 3).unwrap();
        assert_eq!(out[0], 1.5);
        assert_eq!(out[1], -3.0);
        assert_eq!(out[2].to_bits(), 1e30f32.to_bits() & 0xFFFF_0000);
    }

    #[test]
    fn q8_0_block() {
        let mut b = Vec::new();
        b.extend(h(0.5));
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let out = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
        // extremes
        let mut b = Vec::new();
        b.extend(h(2.0));
        b.extend([0x80u8, 0x7F].repeat(16));
        let out = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(&out[..2], &[-256.0, 254.0]);
    }

    #[test]
    fn q4_0_block() {
        let mut b = Vec::new();
        b.extend(h(0.25));
        // qs[j] = low nibble j, high nibble 15 - j
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.25, "x[{j}]");
            assert_eq!(out[j + 16], ((15 - j) as f32 - 8.0) * 0.25, "x[{}]", j + 16);
        }
    }

    #[test]
    fn q4_1_block() {
        let mut b = Vec::new();
        b.extend(h(0.5));
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q5_0_and_q5_1_blocks() {
        // Element k has 5-bit value k (k < 32): low nibble k & 15 in qs,
        // high bit (k >> 4) in qh bit k.
        let mut qh = 0u32;
        let mut qs = [0u8; 16];
        for k in 0..32u32 {
            let v = k;
            if v & 0x10 != 0 {
                qh |= 1 << k;
            }
            let j = (k % 16) as usize;
            if k < 16 {
                qs[j] |= (v & 0xF) as u8;
            } else {
                qs[j] |= ((v & 0xF) as u8) << 4;
            }
        }
        let mut b = Vec::new();
        b.extend(h(0.5));
        b.extend(qh.to_le_bytes());
        b.extend(qs);
        let out = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        for k in 0..32 {
            assert_eq!(out[k], (k as f32 - 16.0) * 0.5, "q5_0 x[{k}]");
        }
        let mut b = Vec::new();
        b.extend(h(0.5));
        b.extend(h(3.0));
        b.extend(qh.to_le_bytes());
        b.extend(qs);
        let out = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        for k in 0..32 {
            assert_eq!(out[k], k as f32 * 0.5 + 3.0, "q5_1 x[{k}]");
        }
    }

    /// Packs 8 (scale, min) 6-bit pairs the way ggml's k-quants do.
    fn pack_k4(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        s
    }

    #[test]
    fn k4_scale_packing() {
        let sc = [1, 63, 17, 32, 45, 5, 60, 33];
        let mn = [0, 7, 63, 21, 16, 62, 3, 48];
        let s = pack_k4(sc, mn);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], mn[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q4_k_block() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 63];
        let mn = [0, 1, 2, 3, 40, 50, 60, 63];
        let (d, dmin) = (0.5f32, 0.25f32);
        // element i (0..256): sub-block s = i / 32, value q = (i * 7) % 16
        let q = |i: usize| ((i * 7) % 16) as u8;
        let mut qs = [0u8; 128];
        for i in 0..256 {
            let group = i / 64;
            let l = i % 32;
            let hi = (i % 64) >= 32;
            let byte = &mut qs[32 * group + l];
            if hi {
                *byte |= q(i) << 4;
            } else {
                *byte |= q(i);
            }
        }
        let mut b = Vec::new();
        b.extend(h(d));
        b.extend(h(dmin));
        b.extend(pack_k4(sc, mn));
        b.extend(qs);
        let out = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
        for i in 0..256 {
            let s = i / 32;
            let want = d * sc[s] as f32 * q(i) as f32 - dmin * mn[s] as f32;
            assert_eq!(out[i], want, "x[{i}]");
        }
    }

    #[test]
    fn q5_k_block() {
        let sc = [9, 2, 33, 4, 5, 6, 7, 63];
        let mn = [0, 1, 2, 3, 40, 50, 60, 17];
        let (d, dmin) = (0.125f32, 0.5f32);
        let q = |i: usize| ((i * 13) % 32) as u8; // 5-bit values
        let mut qs = [0u8; 128];
        let mut qh = [0u8; 32];
        for i in 0..256 {
            let s = i / 32; // sub-block 0..8
            let group = i / 64;
            let l = i % 32;
            let hi = s % 2 == 1;
            let v = q(i);
            if hi {
                qs[32 * group + l] |= (v & 0xF) << 4;
            } else {
                qs[32 * group + l] |= v & 0xF;
            }
            if v & 0x10 != 0 {
                qh[l] |= 1 << s;
            }
        }
        let mut b = Vec::new();
        b.extend(h(d));
        b.extend(h(dmin));
        b.extend(pack_k4(sc, mn));
        b.extend(qh);
        b.extend(qs);
        let out = dequantize(GgmlType::Q5_K, &b, 256).unwrap();
        for i in 0..256 {
            let s = i / 32;
            let want = d * sc[s] as f32 * q(i) as f32 - dmin * mn[s] as f32;
            assert_eq!(out[i], want, "x[{i}]");
        }
    }

    #[test]
    fn q6_k_block() {
        let d = 0.25f32;
        let scales: [i8; 16] = [
            1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 127, -128,
        ];
        let q = |i: usize| ((i * 11) % 64) as u8; // 6-bit unsigned, value - 32
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for i in 0..256 {
            let half = i / 128;
            let r = i % 128;
            let quarter = r / 32; // which of the four 32-element runs
            let l = r % 32;
            let v = q(i);
            let ql_idx = 64 * half + l + if quarter % 2 == 1 { 32 } else { 0 };
            if quarter >= 2 {
                ql[ql_idx] |= (v & 0xF) << 4;
            } else {
                ql[ql_idx] |= v & 0xF;
            }
            qh[32 * half + l] |= (v >> 4) << (2 * quarter);
        }
        let mut b = Vec::new();
        b.extend(ql);
        b.extend(qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend(h(d));
        assert_eq!(b.len(), 210);
        let out = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        for i in 0..256 {
            let s = scales[i / 16] as f32;
            let want = d * s * (q(i) as i32 - 32) as f32;
            assert_eq!(out[i], want, "x[{i}]");
        }
    }

    #[test]
    fn length_checks() {
        assert!(matches!(
            dequantize(GgmlType::Q4_1, &[0u8; 19], 32),
            Err(GgufError::DataLengthMismatch { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q4_1, &[0u8; 20], 31),
            Err(GgufError::DataLengthMismatch { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::IQ2_XXS, &[0u8; 66], 256),
            Err(GgufError::UnsupportedTensorType { .. })
        ));
    }

    #[test]
    fn parallel_path_matches_serial() {
        // More than one task's worth of Q8_0 blocks.
        let n_blocks = BLOCKS_PER_TASK * 3 + 7;
        let mut data = Vec::new();
        for i in 0..n_blocks {
            data.extend(h((i % 13) as f32 * 0.125));
            data.extend((0..32).map(|j| ((i * 31 + j) % 256) as u8));
        }
        let out = dequantize(GgmlType::Q8_0, &data, n_blocks * 32).unwrap();
        for (i, chunk) in data.chunks_exact(34).enumerate() {
            let mut o = [0f32; 32];
            q8_0(chunk.try_into().unwrap(), &mut o);
            assert_eq!(&out[i * 32..i * 32 + 32], &o);
        }
    }
}
