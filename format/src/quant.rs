//! Quantization exactly as spec/FORMAT.md sections 4.2 (int8), 4.3 (int4), 4.4 (int8g), 4.5
//! (int4m) and 4.6 (int4s) define it.
//!
//! Every step is one IEEE f32 operation in a stated order, so quantizing the same source always
//! gives the same bytes (verify re-quantizes and compares) and another implementation can match it.

use half::{bf16, f16};

use crate::Dtype;

/// Converts little-endian source elements to f32. bf16 and f16 convert exactly.
pub fn to_f32(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        Dtype::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        _ => unreachable!("quantization is only planned for float tensors"),
    }
}

/// Converts f32 values back to a float dtype (unpack of a quantized tensor), little-endian.
pub fn from_f32(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) {
    out.clear();
    match dtype {
        Dtype::Bf16 => {
            for v in values {
                out.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes())
            }
        }
        Dtype::F16 => {
            for v in values {
                out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes())
            }
        }
        Dtype::F32 => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes())
            }
        }
        _ => unreachable!("quantized tensors are float tensors"),
    }
}

/// Why a value cannot be quantized.
#[derive(Debug, PartialEq)]
pub enum QuantError {
    NonFinite { index: usize },
    ScaleOverflow { group: usize },
}

impl std::fmt::Display for QuantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantError::NonFinite { index } => {
                write!(f, "element {index} is NaN or infinite")
            }
            QuantError::ScaleOverflow { group } => {
                write!(f, "group {group}: scale or min overflows f16")
            }
        }
    }
}

/// The int8 scale of one row (`int8`) or one group (`int8g`): `max|x| / 127`; `Err(i)` names
/// the first NaN or infinite element.
pub fn int8_scale(row: &[f32]) -> Result<f32, usize> {
    let mut amax = 0f32;
    let mut finite = true;
    for &x in row {
        finite &= x.is_finite();
        amax = amax.max(x.abs());
    }
    if !finite {
        return Err(row.iter().position(|x| !x.is_finite()).unwrap_or(0));
    }
    Ok(amax / 127.0)
}

/// Quantizes values of one row with its scale into `out`.
pub fn int8_quantize(values: &[f32], scale: f32, out: &mut [u8]) {
    if scale == 0.0 {
        out.fill(0);
        return;
    }
    for (o, &x) in out.iter_mut().zip(values) {
        let q = (x / scale).round_ties_even().clamp(-127.0, 127.0);
        *o = (q as i8) as u8;
    }
}

pub fn int8_dequantize(q: i8, scale: f32) -> f32 {
    q as f32 * scale
}

/// Scale and min of one int4 group, as f16.
pub fn int4_group_params(group: &[f32]) -> Result<(f16, f16), QuantError> {
    // No early exit in the loop (it keeps the pipeline full); the same min/max calls in the same
    // order as ever, so signed zeros resolve as they always have.
    let mut mn = f32::INFINITY;
    let mut mx = f32::NEG_INFINITY;
    let mut finite = true;
    for &x in group {
        finite &= x.is_finite();
        mn = mn.min(x);
        mx = mx.max(x);
    }
    if !finite {
        let index = group.iter().position(|x| !x.is_finite()).unwrap_or(0);
        return Err(QuantError::NonFinite { index });
    }
    let scale = f16::from_f32((mx - mn) / 15.0);
    let min = f16::from_f32(mn);
    if !scale.is_finite() || !min.is_finite() {
        return Err(QuantError::ScaleOverflow { group: 0 });
    }
    Ok((scale, min))
}

/// Steps of the `int4m` search: candidate inverse scales (14 + k / 10) / (max - min), k = 0..=20.
pub const INT4M_STEPS: u32 = 20;

/// Scale and min of one `int4m` group (spec section 4.5): of the `int4` parameters and one
/// least-squares fit per candidate inverse scale, the pair whose dequantized group is nearest the
/// group in squared error; the earliest candidate wins a tie. Every step is a stated IEEE operation
/// in a stated order, so the result is the same on every machine and `verify` reproduces it.
///
/// `weights` (one per value, from a calibration's importance vector; spec section 4.7) weight
/// each value's squared error and its term in the fits. Without them every weight is 1, which
/// gives the same bits as the unweighted sums.
pub fn int4m_group_params(
    group: &[f32],
    weights: Option<&[f32]>,
) -> Result<(f16, f16), QuantError> {
    let weight = |i: usize| weights.map_or(1.0, |w| w[i] as f64);
    let first = int4_group_params(group)?;
    let mut best = first;
    let mut best_err = int4_squared_error(group, weights, first.0, first.1);
    let mn = group.iter().fold(f32::INFINITY, |a, &x| a.min(x));
    let mx = group.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let range = mx - mn;
    if !(range > 0.0) {
        return Ok(best);
    }
    let n = (0..group.len()).fold(0f64, |a, i| a + weight(i));
    // Neighbouring steps often fit the same pair; a repeat cannot be strictly better.
    let mut last = first;
    for k in 0..=INT4M_STEPS {
        let iscale = (14.0 + k as f32 / 10.0) / range;
        let (mut sl2, mut sl, mut slx, mut sx) = (0f64, 0f64, 0f64, 0f64);
        for (i, &x) in group.iter().enumerate() {
            let l = ((x - mn) * iscale).round_ties_even().clamp(0.0, 15.0) as f64;
            let w = weight(i);
            sl2 += w * (l * l);
            sl += w * l;
            slx += w * (l * x as f64);
            sx += w * x as f64;
        }
        let det = n * sl2 - sl * sl;
        if !(det > 0.0) {
            continue;
        }
        let scale = f16::from_f32(((n * slx - sl * sx) / det) as f32);
        let min = f16::from_f32(((sl2 * sx - sl * slx) / det) as f32);
        if !(scale.to_f32() > 0.0) || !scale.is_finite() || !min.is_finite() {
            continue;
        }
        if (scale, min) == last {
            continue;
        }
        last = (scale, min);
        let err = int4_squared_error(group, weights, scale, min);
        if err < best_err {
            best = (scale, min);
            best_err = err;
        }
    }
    Ok(best)
}

/// Sum over the group, in order, of w (x - x')^2 in f64 (w = 1 without weights), x' the f32
/// dequantization of x's code.
fn int4_squared_error(group: &[f32], weights: Option<&[f32]>, scale: f16, min: f16) -> f64 {
    group
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let d = x as f64 - int4_dequantize(int4_code(x, scale, min), scale, min) as f64;
            weights.map_or(1.0, |w| w[i] as f64) * (d * d)
        })
        .fold(0.0, |a, d| a + d)
}

/// The 4-bit code of one value.
pub fn int4_code(x: f32, scale: f16, min: f16) -> u8 {
    let s = scale.to_f32();
    if s == 0.0 {
        return 0;
    }
    ((x - min.to_f32()) / s).round_ties_even().clamp(0.0, 15.0) as u8
}

pub fn int4_dequantize(q: u8, scale: f16, min: f16) -> f32 {
    (q as f32 * scale.to_f32()) + min.to_f32()
}

/// The largest `int4s` sub-code (6 bits).
pub const INT4S_SUB_MAX: f32 = 63.0;

/// One `int4s` super-block's f16 factors (spec section 4.6): the scale factor `d` and the minimum
/// factor `dmin`, from its groups' searched f16 (scale, min) pairs.
pub fn int4s_factors(pairs: &[(f16, f16)]) -> (f16, f16) {
    let (mut top_scale, mut top_neg_min) = (0f32, 0f32);
    for &(s, m) in pairs {
        top_scale = top_scale.max(s.to_f32());
        top_neg_min = top_neg_min.max((-m.to_f32()).max(0.0));
    }
    (
        f16::from_f32(top_scale / INT4S_SUB_MAX),
        f16::from_f32(top_neg_min / INT4S_SUB_MAX),
    )
}

/// A group's 12-bit `int4s` sub-code `sc | (mc << 6)` under its super-block's factors.
pub fn int4s_sub_code((scale, min): (f16, f16), d: f16, dmin: f16) -> u16 {
    let code = |v: f32, f: f16| {
        let f = f.to_f32();
        if f == 0.0 {
            0
        } else {
            (v / f).round_ties_even().clamp(0.0, INT4S_SUB_MAX) as u16
        }
    };
    code(scale.to_f32(), d) | (code((-min.to_f32()).max(0.0), dmin) << 6)
}

/// The f16 (scale, min) a group's sub-code stands for: `int4`'s parameters, exactly.
pub fn int4s_group_params(code: u16, d: f16, dmin: f16) -> (f16, f16) {
    let (sc, mc) = ((code & 63) as f32, ((code >> 6) & 63) as f32);
    (
        f16::from_f32(d.to_f32() * sc),
        f16::from_f32(-(dmin.to_f32() * mc)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_extremes_map_to_127() {
        let row = [0.5f32, -1.27, 0.0, 1.0];
        let s = int8_scale(&row).unwrap();
        let mut q = [0u8; 4];
        int8_quantize(&row, s, &mut q);
        assert_eq!(q[1] as i8, -127);
        assert_eq!(q[2], 0);
        assert!((int8_dequantize(q[3] as i8, s) - 1.0).abs() <= s / 2.0);
    }

    #[test]
    fn int8_zero_row_has_zero_scale() {
        let s = int8_scale(&[0.0; 8]).unwrap();
        assert_eq!(s, 0.0);
        let mut q = [9u8; 8];
        int8_quantize(&[0.0; 8], s, &mut q);
        assert_eq!(q, [0; 8]);
    }

    #[test]
    fn int8_rejects_nan() {
        assert_eq!(int8_scale(&[1.0, f32::NAN]), Err(1));
    }

    #[test]
    fn int4_error_is_within_half_a_step() {
        let g: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin() * 0.05).collect();
        let (s, m) = int4_group_params(&g).unwrap();
        for &x in &g {
            let q = int4_code(x, s, m);
            assert!(q <= 15);
            let back = int4_dequantize(q, s, m);
            // Half a step, plus what rounding scale and min to f16 can add.
            assert!(
                (back - x).abs() <= s.to_f32() * 0.5 + 1e-3 * 0.05,
                "{x} {back}"
            );
        }
    }

    #[test]
    fn int4m_is_never_worse_than_int4_and_usually_better() {
        // Seeded groups of several shapes: normal-ish, with an outlier, constant, two-valued.
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let (mut better, mut total) = (0, 0);
        for g in 0..200 {
            let mut x: Vec<f32> = (0..64).map(|_| next() * 0.1).collect();
            if g % 5 == 0 {
                x[7] = 0.9;
            }
            let (s0, m0) = int4_group_params(&x).unwrap();
            let (s1, m1) = int4m_group_params(&x, None).unwrap();
            let (e0, e1) = (
                int4_squared_error(&x, None, s0, m0),
                int4_squared_error(&x, None, s1, m1),
            );
            assert!(e1 <= e0, "group {g}: {e1} > {e0}");
            better += usize::from(e1 < e0);
            total += 1;
            assert_eq!(
                int4m_group_params(&x, None).unwrap(),
                (s1, m1),
                "deterministic"
            );
        }
        assert!(better * 2 > total, "{better} of {total} improved");
        let flat = [0.25f32; 32];
        assert_eq!(
            int4m_group_params(&flat, None).unwrap(),
            int4_group_params(&flat).unwrap()
        );
        let mut nan = [0.0f32; 32];
        nan[3] = f32::NAN;
        assert_eq!(
            int4m_group_params(&nan, None),
            Err(QuantError::NonFinite { index: 3 })
        );
    }

    #[test]
    fn importance_weights_steer_the_search_and_unit_weights_change_nothing() {
        // Groups whose columns matter unequally: the weighted search lowers the weighted error
        // it is asked to lower, in total and never above int4's own pair.
        let (mut e_weighted, mut e_plain, mut moved) = (0.0, 0.0, 0);
        for seed in 0..50u32 {
            let g: Vec<f32> = (0..32)
                .map(|i| ((i as f32 * 1.7 + seed as f32) * 0.37).sin() * 0.1)
                .collect();
            let w: Vec<f32> = (0..32)
                .map(|i| if (i + seed) % 5 == 0 { 20.0 } else { 0.05 })
                .collect();
            let plain = int4m_group_params(&g, None).unwrap();
            let weighted = int4m_group_params(&g, Some(&w)).unwrap();
            let err = |(s, m): (f16, f16)| int4_squared_error(&g, Some(&w), s, m);
            let minmax = int4_group_params(&g).unwrap();
            assert!(err(weighted) <= err(minmax));
            e_weighted += err(weighted);
            e_plain += err(plain);
            moved += usize::from(weighted != plain);
        }
        assert!(moved > 10, "{moved} of 50 groups moved");
        assert!(e_weighted < 0.9 * e_plain, "{e_weighted} vs {e_plain}");
        // Weights of 1 are the unweighted search, bit for bit.
        for seed in 0..50u32 {
            let g: Vec<f32> = (0..64)
                .map(|i| ((i as f32 + seed as f32 * 3.1) * 0.37).sin() * (1.0 + seed as f32))
                .collect();
            assert_eq!(
                int4m_group_params(&g, Some(&[1.0; 64])).unwrap(),
                int4m_group_params(&g, None).unwrap()
            );
        }
    }

    #[test]
    fn int4_overflowing_scale_is_an_error() {
        assert!(int4_group_params(&[-1e6, 1e6]).is_err());
    }
}
