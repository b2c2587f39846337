//! RMSNorm as Llama defines it: `w * (x * (1 / sqrt(mean(x^2) + eps)))`, all in f32.
//!
//! The sum of squares uses the fixed-order [`dot`](fn@super::dot), so a row normalizes to the same
//! bits whether it comes alone (decode) or in a batch (prefill).

use super::dot::dot;
use super::error::{check_len, KernelError};
use crate::weights::Weight;

/// An RMSNorm with its weight dequantized once (norm weights are a single short row).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// `weight` must have `rows == 1`; any storage form is accepted.
    pub fn new(weight: &Weight, eps: f32) -> Result<RmsNorm, KernelError> {
        if weight.rows != 1 {
            return Err(KernelError::NormWeightShape {
                rows: weight.rows,
                cols: weight.cols,
            });
        }
        Ok(RmsNorm {
            weight: weight.to_f32_vec()?,
            eps,
        })
    }

    /// A norm whose weight acts as `1 + w` (Gemma): the sum is formed once in f32, as
    /// transformers' `1.0 + weight.float()` is.
    pub fn with_unit_offset(weight: &Weight, eps: f32) -> Result<RmsNorm, KernelError> {
        let mut n = RmsNorm::new(weight, eps)?;
        for w in &mut n.weight {
            *w += 1.0;
        }
        Ok(n)
    }

    /// Width of the rows this norm applies to.
    pub fn dim(&self) -> usize {
        self.weight.len()
    }

    /// Normalizes each row of `x` (`n x dim`) into `out` (same shape).
    pub fn apply(&self, x: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        let d = self.dim();
        check_len("rms_norm output", x.len(), out.len())?;
        if d == 0 {
            return check_len("rms_norm input", 0, x.len());
        }
        if !x.len().is_multiple_of(d) {
            return Err(KernelError::BufferLength {
                what: "rms_norm input (a whole number of rows)",
                expected: (x.len() / d + 1) * d,
                actual: x.len(),
            });
        }
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            rms_norm_row(xr, &self.weight, self.eps, or);
        }
        Ok(())
    }

    /// [`RmsNorm::apply`] with the output over the input (the same bits: each row's sum is
    /// taken before any of it is written).
    pub fn apply_in_place(&self, x: &mut [f32]) -> Result<(), KernelError> {
        let d = self.dim();
        if d == 0 || !x.len().is_multiple_of(d) {
            return Err(KernelError::BufferLength {
                what: "rms_norm input (a whole number of rows)",
                expected: (x.len() / d.max(1) + 1) * d,
                actual: x.len(),
            });
        }
        for row in x.chunks_exact_mut(d) {
            let inv = inv_rms(row, self.eps);
            for (v, &wv) in row.iter_mut().zip(&self.weight) {
                *v = wv * (*v * inv);
            }
        }
        Ok(())
    }
}

/// One row: `out = w * (x * inv_rms)`, with `inv_rms = 1 / sqrt(sum(x^2) / d + eps)`.
fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let inv = inv_rms(x, eps);
    for ((o, &xv), &wv) in out.iter_mut().zip(x).zip(w) {
        *o = wv * (xv * inv);
    }
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean = dot(x, x) / x.len() as f32;
    1.0 / (mean + eps).sqrt()
}

/// Normalizes rows of `x` with a norm weight given as a [`Weight`] (see [`RmsNorm`]).
pub fn rms_norm(x: &[f32], weight: &Weight, eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    RmsNorm::new(weight, eps)?.apply(x, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightData;
    use half::bf16;

    #[test]
    fn matches_f64_reference() {
        let d = 70;
        let x: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let wv: Vec<f32> = (0..d).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
        let weight = Weight {
            rows: 1,
            cols: d,
            data: WeightData::Bf16(wv.iter().map(|&v| bf16::from_f32(v)).collect()),
        };
        let eps = 1e-5;
        let mut out = vec![0f32; 2 * d];
        rms_norm(&x, &weight, eps, &mut out).unwrap();
        for r in 0..2 {
            let xr = &x[r * d..(r + 1) * d];
            let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            for c in 0..d {
                let w = bf16::from_f32(wv[c]).to_f64();
                let want = w * xr[c] as f64 * inv;
                let got = out[r * d + c] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn in_place_gives_the_same_bits() {
        let d = 24;
        let x: Vec<f32> = (0..3 * d)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.25 + i as f32 / 9.0).collect();
        let weight = Weight {
            rows: 1,
            cols: d,
            data: WeightData::F32(w),
        };
        let n = RmsNorm::new(&weight, 1e-6).unwrap();
        let mut out = vec![0f32; x.len()];
        n.apply(&x, &mut out).unwrap();
        let mut y = x.clone();
        n.apply_in_place(&mut y).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&out));
        assert!(n.apply_in_place(&mut vec![0.0; d + 1]).is_err());
    }

    #[test]
    fn rejects_matrix_weight_and_ragged_input() {
        let w = Weight {
            rows: 2,
            cols: 2,
            data: WeightData::F32(vec![1.0; 4]),
        };
        assert!(matches!(
            RmsNorm::new(&w, 1e-5),
            Err(KernelError::NormWeightShape { rows: 2, cols: 2 })
        ));
        let w = Weight {
            rows: 1,
            cols: 4,
            data: WeightData::F32(vec![1.0; 4]),
        };
        let n = RmsNorm::new(&w, 1e-5).unwrap();
        assert!(n.apply(&[1.0; 6], &mut [0.0; 6]).is_err());
    }
}
