//! The arithmetic of divergence reports: error sums over rows, KL divergence of two logit rows,
//! and the small statistics (means, nearest-rank percentiles, first divergences).

use rayon::prelude::*;
use serde::Serialize;

/// Error of one traced tensor, summed over every position of every stream.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorFigures {
    /// ‖test − ref‖ / ‖ref‖ over all values.
    pub rel_err: f64,
    /// Mean over positions of the cosine similarity of the two rows.
    pub cosine: f64,
    pub max_abs: f64,
}

/// Sums behind [`ErrorFigures`].
#[derive(Clone, Debug, Default)]
pub(super) struct Acc {
    diff2: f64,
    ref2: f64,
    cos_sum: f64,
    rows: usize,
    max_abs: f64,
}

impl Acc {
    /// Adds `rows` rows of `width` values; mismatched lengths (models of different shapes) are skipped.
    pub(super) fn add(&mut self, r: &[f32], t: &[f32], width: usize) {
        if r.len() != t.len() || width == 0 || !r.len().is_multiple_of(width) {
            return;
        }
        let parts: Vec<(f64, f64, f64, f64)> = r
            .par_chunks(width)
            .zip(t.par_chunks(width))
            .map(|(rr, tr)| {
                let Moments {
                    diff2,
                    ref2,
                    test2,
                    dot,
                    max_abs,
                } = Moments::of(rr, tr);
                let cos = if ref2 == 0.0 && test2 == 0.0 {
                    1.0
                } else if ref2 == 0.0 || test2 == 0.0 {
                    0.0
                } else {
                    dot / (ref2.sqrt() * test2.sqrt())
                };
                (
                    diff2,
                    ref2,
                    cos,
                    if diff2.is_nan() { f64::NAN } else { max_abs },
                )
            })
            .collect();
        for (d2, n2, cos, mx) in parts {
            self.diff2 += d2;
            self.ref2 += n2;
            self.cos_sum += cos;
            self.max_abs = if mx.is_nan() {
                f64::NAN
            } else {
                self.max_abs.max(mx)
            };
            self.rows += 1;
        }
    }

    pub(super) fn figures(&self) -> ErrorFigures {
        ErrorFigures {
            rel_err: rel_rms(self.diff2, self.ref2),
            cosine: if self.rows > 0 {
                self.cos_sum / self.rows as f64
            } else {
                1.0
            },
            max_abs: self.max_abs,
        }
    }
}

/// Sums over a pair of rows (reference, test), in f64: squares of the difference and of each
/// side, their dot product, and the largest |difference| (`f64::max` skips NaN differences).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Moments {
    pub diff2: f64,
    pub ref2: f64,
    pub test2: f64,
    pub dot: f64,
    pub max_abs: f64,
}

impl Moments {
    pub(super) fn of(r: &[f32], t: &[f32]) -> Moments {
        let mut m = Moments::default();
        for (&a, &b) in r.iter().zip(t) {
            let (a, b) = (a as f64, b as f64);
            let d = b - a;
            m.diff2 += d * d;
            m.ref2 += a * a;
            m.test2 += b * b;
            m.dot += a * b;
            m.max_abs = m.max_abs.max(d.abs());
        }
        m
    }
}

/// ‖test − ref‖ / ‖ref‖ from the sums of squares: zero for two zero tensors, infinite when
/// only the reference is zero.
pub(super) fn rel_rms(diff2: f64, ref2: f64) -> f64 {
    if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else if diff2 == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// `max` and `log Σ exp(l − max)` of a row, in f64.
pub(super) fn log_norm(l: &[f32]) -> (f64, f64) {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let s: f64 = l.iter().map(|&v| ((v as f64) - m).exp()).sum();
    (m, s.ln())
}

/// KL(P || Q) in nats, and the log-probabilities of `next` under both.
pub(super) fn kl_row(p: &[f32], q: &[f32], next: Option<u32>) -> (f64, Option<(f64, f64)>) {
    let (mp, lp) = log_norm(p);
    let (mq, lq) = log_norm(q);
    let mut kl = 0f64;
    for (&a, &b) in p.iter().zip(q) {
        let la = a as f64 - mp - lp;
        let lb = b as f64 - mq - lq;
        let pa = la.exp();
        if pa > 0.0 {
            kl += pa * (la - lb);
        }
    }
    let next = next.and_then(|t| {
        let t = t as usize;
        (t < p.len() && t < q.len()).then(|| (p[t] as f64 - mp - lp, q[t] as f64 - mq - lq))
    });
    // Rounding can leave a tiny negative sum for identical rows; KL is never below zero.
    (kl.max(0.0), next)
}

pub(super) fn bit_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

pub(super) fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

pub(super) fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| nan_max(m, (x as f64 - y as f64).abs()))
}

pub(super) fn first_divergence(a: &[u32], b: &[u32]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

pub(super) fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0f64, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// Nearest-rank percentile of sorted values.
pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_identical_rows_is_zero_and_of_different_rows_positive() {
        let p = [1.0f32, 2.0, 3.0, -1.0];
        let (k, n) = kl_row(&p, &p, Some(2));
        assert_eq!(k, 0.0);
        let (a, b) = n.unwrap();
        assert_eq!(a, b);
        let q = [3.0f32, 2.0, 1.0, -1.0];
        assert!(kl_row(&p, &q, None).0 > 0.1);
        // P = (1/4, 3/4), Q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2).
        let (k, _) = kl_row(&[0.0, 3f32.ln()], &[5.0, 5.0], None);
        let want = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
        assert!((k - want).abs() < 1e-7, "{k} vs {want}");
    }

    #[test]
    fn errors_and_percentiles() {
        let mut a = Acc::default();
        a.add(&[1.0, 0.0, 0.0, 2.0], &[1.0, 0.0, 0.0, 2.0], 2);
        assert_eq!(a.figures().rel_err, 0.0);
        assert_eq!(a.figures().cosine, 1.0);
        a.add(&[1.0, 0.0], &[0.0, 1.0], 2);
        assert!(a.figures().rel_err > 0.0);
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&s, 0.5), 2.0);
        assert_eq!(percentile(&s, 0.99), 4.0);
        assert_eq!(first_divergence(&[1, 2, 3], &[1, 2, 4]), Some(2));
        assert_eq!(first_divergence(&[1, 2], &[1, 2, 4]), Some(2));
        assert_eq!(first_divergence(&[1, 2], &[1, 2]), None);
    }
}
