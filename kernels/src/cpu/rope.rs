//! Rotary position embeddings in the Hugging Face layout ("rotate half": element `i` pairs with
//! `i + rotary_dim / 2`, and the dimensions past `rotary_dim` of a partially rotated head pass
//! through), with cos/sin tables precomputed in f32.
//!
//! Frequencies follow transformers' f32 arithmetic step by step:
//! `inv_freq[i] = 1 / theta^((2i as f32) / (d as f32))` where the exponent is an f32 division,
//! the power is computed in f64 from the f32 operands and rounded to f32 (the correctly rounded
//! value, which PyTorch's f32 `pow` matches to within an ulp), and the reciprocal is an f32
//! division. The angle is the f32 product `(pos as f32) * inv_freq[i]` (as transformers' f32
//! matmul of frequencies by positions); `cos`/`sin` are evaluated in f64 on that f32 angle and
//! rounded to f32. Scaling types "linear" and "llama3" are applied to `inv_freq` exactly as
//! transformers' `_compute_linear_scaling_rope_parameters` / `_compute_llama3_parameters` /
//! `_compute_longrope_parameters` do, with PyTorch's f32 semantics (a Python scalar meets an f32
//! tensor as an f32; `s / t` is `t.reciprocal() * s`). "longrope" takes its long factors when
//! the table covers more positions than the original context, else the short ones, and scales
//! cos and sin by its attention factor.

use cllm_model::RopeScaling;

use super::error::{check_len, KernelError};

/// The `head_dim / 2` inverse frequencies, scaling applied (for "longrope", the short factors').
pub fn inv_freq(
    head_dim: usize,
    theta: f32,
    scaling: &RopeScaling,
) -> Result<Vec<f32>, KernelError> {
    Ok(frequencies(head_dim, theta, scaling, 0)?.0)
}

/// The inverse frequencies of a table of `positions` positions, and the factor cos and sin are
/// multiplied by.
fn frequencies(
    head_dim: usize,
    theta: f32,
    scaling: &RopeScaling,
    positions: usize,
) -> Result<(Vec<f32>, f32), KernelError> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(KernelError::RopeHeadDim(head_dim));
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(KernelError::RopeScaling(format!(
            "rope_theta must be positive, got {theta}"
        )));
    }
    let d = head_dim as f32;
    let pows: Vec<f32> = (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / d;
            (theta as f64).powf(exponent as f64) as f32
        })
        .collect();
    let base: Vec<f32> = pows.iter().map(|&p| 1.0f32 / p).collect();
    let unscaled = |v: Vec<f32>| Ok((v, 1.0f32));
    match scaling {
        RopeScaling::None => unscaled(base),
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        } => {
            let ext = if positions > *original_max_position_embeddings {
                long_factor
            } else {
                short_factor
            };
            if ext.len() != pows.len() || !attention_factor.is_finite() {
                return Err(KernelError::RopeScaling(format!(
                    "longrope needs {} factors and a finite attention factor (got {}, {attention_factor})",
                    pows.len(),
                    ext.len()
                )));
            }
            let inv = ext
                .iter()
                .zip(&pows)
                .map(|(&e, &p)| 1.0f32 / (e * p))
                .collect();
            Ok((inv, *attention_factor))
        }
        &RopeScaling::Linear { factor } => {
            if !(factor.is_finite() && factor > 0.0) {
                return Err(KernelError::RopeScaling(format!(
                    "linear factor must be positive, got {factor}"
                )));
            }
            unscaled(base.iter().map(|&f| f / factor).collect())
        }
        &RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            if !(factor.is_finite() && factor > 0.0) || high_freq_factor == low_freq_factor {
                return Err(KernelError::RopeScaling(format!(
                    "llama3 needs factor > 0 and high_freq_factor != low_freq_factor \
                     (factor {factor}, low {low_freq_factor}, high {high_freq_factor})"
                )));
            }
            let old = original_max_position_embeddings as f64;
            // Python-side scalars (f64), met by f32 tensors as f32.
            let low_wavelen = (old / low_freq_factor as f64) as f32;
            let high_wavelen = (old / high_freq_factor as f64) as f32;
            let two_pi = (2.0 * std::f64::consts::PI) as f32;
            let old32 = old as f32;
            let denom = (high_freq_factor as f64 - low_freq_factor as f64) as f32;
            unscaled(
                base.iter()
                    .map(|&f| {
                        let wavelen = (1.0f32 / f) * two_pi;
                        let llama = if wavelen > low_wavelen { f / factor } else { f };
                        let smooth = ((1.0f32 / wavelen) * old32 - low_freq_factor) / denom;
                        let smoothed = (1.0 - smooth) * llama / factor + smooth * llama;
                        // `~(w < high) * ~(w > low)` in transformers; no NaN can occur here.
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            smoothed
                        } else {
                            llama
                        }
                    })
                    .collect(),
            )
        }
    }
}

/// cos/sin for positions `0..positions`, each `rotary_dim / 2` wide, for heads of `head_dim`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    head_dim: usize,
    half: usize,
    positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// The table for heads of `head_dim` whose first `rotary_dim` dimensions rotate.
    pub fn new(
        head_dim: usize,
        rotary_dim: usize,
        theta: f32,
        scaling: &RopeScaling,
        positions: usize,
    ) -> Result<RopeTable, KernelError> {
        if rotary_dim > head_dim {
            return Err(KernelError::RopeHeadDim(rotary_dim));
        }
        let (inv, attention) = frequencies(rotary_dim, theta, scaling, positions)?;
        let half = rotary_dim / 2;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32 * attention);
                sin.push(angle.sin() as f32 * attention);
            }
        }
        Ok(RopeTable {
            head_dim,
            half,
            positions,
            cos,
            sin,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The dimensions of each head that rotate.
    pub fn rotary_dim(&self) -> usize {
        2 * self.half
    }

    /// Number of positions the table covers.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// The `(cos, sin)` halves for `pos`.
    pub fn cos_sin(&self, pos: usize) -> Result<(&[f32], &[f32]), KernelError> {
        if pos >= self.positions {
            return Err(KernelError::RopePosition {
                pos,
                len: self.positions,
            });
        }
        let r = pos * self.half..(pos + 1) * self.half;
        Ok((&self.cos[r.clone()], &self.sin[r]))
    }

    /// Rotates every head of `x` (`heads x head_dim`) for position `pos`:
    /// `x1' = x1 cos - x2 sin`, `x2' = x2 cos + x1 sin` (transformers' `q * cos + rotate_half(q) * sin`).
    pub fn apply(&self, x: &mut [f32], pos: usize) -> Result<(), KernelError> {
        let hd = self.head_dim();
        if hd == 0 || !x.len().is_multiple_of(hd) {
            return check_len(
                "rope input (whole heads)",
                x.len().div_ceil(hd.max(1)) * hd,
                x.len(),
            );
        }
        let (c, s) = self.cos_sin(pos)?;
        for head in x.chunks_exact_mut(hd) {
            let (x1, x2) = head[..2 * self.half].split_at_mut(self.half);
            for i in 0..self.half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_direct_formula() {
        let (hd, theta) = (16, 10000.0f32);
        let table = RopeTable::new(hd, hd, theta, &RopeScaling::None, 50).unwrap();
        let x: Vec<f32> = (0..2 * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        for pos in [0usize, 1, 7, 49] {
            let mut y = x.clone();
            table.apply(&mut y, pos).unwrap();
            for h in 0..2 {
                for i in 0..hd / 2 {
                    let f = 1.0 / (theta as f64).powf(2.0 * i as f64 / hd as f64);
                    let a = pos as f64 * f;
                    let (x1, x2) = (x[h * hd + i] as f64, x[h * hd + i + hd / 2] as f64);
                    let w1 = x1 * a.cos() - x2 * a.sin();
                    let w2 = x2 * a.cos() + x1 * a.sin();
                    assert!((y[h * hd + i] as f64 - w1).abs() < 1e-5, "pos {pos} i {i}");
                    assert!(
                        (y[h * hd + i + hd / 2] as f64 - w2).abs() < 1e-5,
                        "pos {pos} i {i}"
                    );
                }
            }
        }
        assert!(table.apply(&mut vec![0.0; hd], 50).is_err());
        assert!(table.apply(&mut vec![0.0; hd + 1], 0).is_err());
    }

    #[test]
    fn partial_rotary_passes_the_tail_through_and_longrope_switches_at_the_original_length() {
        let (hd, rd) = (16, 12);
        let t = RopeTable::new(hd, rd, 10000.0, &RopeScaling::None, 8).unwrap();
        let full = RopeTable::new(rd, rd, 10000.0, &RopeScaling::None, 8).unwrap();
        let x: Vec<f32> = (0..2 * hd).map(|i| (i as f32 * 0.61).cos()).collect();
        let mut y = x.clone();
        t.apply(&mut y, 5).unwrap();
        for h in 0..2 {
            // The rotated part is a full rotation of width rd; the tail is untouched.
            let mut want = x[h * hd..h * hd + rd].to_vec();
            full.apply(&mut want, 5).unwrap();
            assert_eq!(&y[h * hd..h * hd + rd], &want[..]);
            assert_eq!(&y[h * hd + rd..(h + 1) * hd], &x[h * hd + rd..(h + 1) * hd]);
        }

        let s = RopeScaling::LongRope {
            short_factor: vec![1.0, 2.0, 4.0],
            long_factor: vec![3.0, 5.0, 7.0],
            original_max_position_embeddings: 10,
            attention_factor: 1.5,
        };
        let base = inv_freq(6, 500.0, &RopeScaling::None).unwrap();
        let short = RopeTable::new(6, 6, 500.0, &s, 10).unwrap();
        let long = RopeTable::new(6, 6, 500.0, &s, 11).unwrap();
        for (i, (&f, (&es, &el))) in base
            .iter()
            .zip([1f32, 2.0, 4.0].iter().zip(&[3f32, 5.0, 7.0]))
            .enumerate()
        {
            let pow = 1.0 / f as f64;
            for (table, e) in [(&short, es), (&long, el)] {
                let want = 1.5 * (3.0 / (e as f64 * pow)).cos();
                let got = table.cos_sin(3).unwrap().0[i] as f64;
                assert!((got - want).abs() < 1e-5, "{i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn llama3_scaling_matches_hand_computed_values() {
        // Llama 3.1 8B: theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192.
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let base = inv_freq(128, 500000.0, &RopeScaling::None).unwrap();
        let scaled = inv_freq(128, 500000.0, &s).unwrap();
        // i = 0: wavelength 2*pi < 2048: unchanged.
        assert_eq!(scaled[0], 1.0);
        // i = 63: 500000^(126/128) -> wavelength ~2.5e6 > 8192: divided by 8.
        let f63 = 1.0 / 500000f64.powf(126.0 / 128.0);
        assert!((scaled[63] as f64 - f63 / 8.0).abs() < 1e-6 * f63);
        // i = 30: inv_freq = 500000^(-60/128) = 2.13112e-3, wavelength 2948.30, between 2048 and
        // 8192: smooth = (8192 / 2948.30 - 1) / 3 = 0.592849; scaled = (1 - s) f / 8 + s f
        // = 1.3718936e-3 (worked by hand, digits from a calculator).
        let f30 = 1.0 / 500000f64.powf(60.0 / 128.0);
        let wl = 2.0 * std::f64::consts::PI / f30;
        assert!(wl > 2048.0 && wl < 8192.0);
        let smooth = (8192.0 / wl - 1.0) / 3.0;
        let want = (1.0 - smooth) * f30 / 8.0 + smooth * f30;
        assert!(
            (scaled[30] as f64 - want).abs() < 1e-6 * want,
            "{} vs {want}",
            scaled[30]
        );
        assert!((want - 1.3718936e-3).abs() < 1e-10, "hand value {want}");
        assert!((scaled[30] as f64 - 1.3718936e-3).abs() < 1e-6 * 1.3718936e-3);
        // i = 40: wavelength 22910.6 > 8192: divided by 8.
        let f40 = 1.0 / 500000f64.powf(80.0 / 128.0);
        assert!((scaled[40] as f64 - f40 / 8.0).abs() < 1e-6 * f40);
        assert_eq!(base[0], 1.0);
    }
}
