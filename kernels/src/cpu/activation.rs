//! Elementwise activations and softmax, in f32 with a fixed order for the softmax sum.

use super::error::{check_len, KernelError};

/// SiLU: `x / (1 + exp(-x))` (the form PyTorch computes in f32).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU: `out[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    check_len("swiglu up", gate.len(), up.len())?;
    check_len("swiglu output", gate.len(), out.len())?;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
    Ok(())
}

/// GELU, tanh approximation (PyTorch's `gelu(approximate="tanh")`, in its f32 order):
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const BETA: f32 = (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32;
    const KAPPA: f32 = 0.044715;
    let cube = x * x * x;
    let inner = BETA * (x + KAPPA * cube);
    0.5 * x * (1.0 + inner.tanh())
}

/// GeGLU: `out[i] = gelu_tanh(gate[i]) * up[i]`.
pub fn geglu_tanh(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    check_len("geglu up", gate.len(), up.len())?;
    check_len("geglu output", gate.len(), out.len())?;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = gelu_tanh(g) * u;
    }
    Ok(())
}

/// Softmax in place: `exp(x - max) / sum`, the sum taken in index order. An empty slice is left
/// alone; a slice of all `-inf` becomes NaN, as in PyTorch.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut v = vec![1.0, 2.0, 3.0, -1.0];
        softmax_in_place(&mut v);
        let s: f32 = v.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(v[2] > v[1] && v[1] > v[0] && v[0] > v[3]);
        let want = (3f64).exp() / [1f64, 2.0, 3.0, -1.0].iter().map(|x| x.exp()).sum::<f64>();
        assert!((v[2] as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn gelu_tanh_values() {
        assert_eq!(gelu_tanh(0.0), 0.0);
        for x in [-3.0f64, -0.5, 0.7, 2.5] {
            let want = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            assert!((gelu_tanh(x as f32) as f64 - want).abs() < 1e-6, "{x}");
        }
        assert!(geglu_tanh(&[1.0], &[1.0, 2.0], &mut [0.0]).is_err());
    }

    #[test]
    fn silu_values() {
        assert_eq!(silu(0.0), 0.0);
        let x = 1.5f64;
        assert!((silu(1.5) as f64 - x / (1.0 + (-x).exp())).abs() < 1e-6);
        assert!(swiglu(&[1.0], &[1.0, 2.0], &mut [0.0]).is_err());
    }
}
