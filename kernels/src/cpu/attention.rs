//! Scaled dot-product attention of one query head over a contiguous run of cached keys/values.
//!
//! The caller passes exactly the keys a query may see (causal: positions `0..=t`), so a query at
//! position `t` always reduces over the same keys in the same order with the same code, whether
//! it is computed during prefill or decode. Scores are `dot(q, k_j) * scale` (transformers'
//! eager order: product first, then scale), the softmax sums in key order, and the output is
//! accumulated key by key: `out = ((p_0 v_0) + p_1 v_1) + ...`, each lane independently.

use super::activation::softmax_in_place;
use super::dot::Lanes;
use super::error::{check_len, KernelError};
use super::isa::{isa, multiversion};

/// `out = softmax(q . K^T * scale) V` for one head. `keys` and `values` are `len x head_dim`
/// row-major with `len >= 1`; `scores` is scratch space (resized to `len`).
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let hd = q.len();
    if hd == 0 {
        return Err(KernelError::Attention("empty query".into()));
    }
    if keys.is_empty() || !keys.len().is_multiple_of(hd) {
        return Err(KernelError::Attention(format!(
            "keys hold {} values, not a positive multiple of head_dim {hd}",
            keys.len()
        )));
    }
    check_len("attention values", keys.len(), values.len())?;
    check_len("attention output", hd, out.len())?;
    scores.clear();
    scores.resize(keys.len() / hd, 0.0);
    attend_isa(isa(), q, keys, values, scale, scores, out);
    Ok(())
}

multiversion!(fn attend_isa => attend_generic(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
));

#[inline(always)]
fn attend_generic(
    lanes: impl Lanes,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    for (s, k) in scores.iter_mut().zip(keys.chunks_exact(hd)) {
        *s = lanes.dot_row(q, k) * scale;
    }
    softmax_in_place(scores);
    // Each output value is `((0 + p_0 v_0) + p_1 v_1) + ...` in key order. Columns are taken
    // 64, then 16, then one at a time, each run's sums held in registers over all the keys
    // (summed in place, every key's stores waited on the previous key's).
    let mut c = 0;
    c += accumulate::<64>(scores, values, hd, c, out);
    c += accumulate::<16>(scores, values, hd, c, out);
    accumulate::<1>(scores, values, hd, c, out);
}

/// `out[c..]` in runs of `W` columns while whole runs remain; returns the columns done.
#[inline(always)]
fn accumulate<const W: usize>(
    scores: &[f32],
    values: &[f32],
    hd: usize,
    from: usize,
    out: &mut [f32],
) -> usize {
    let runs = (hd - from) / W;
    for r in 0..runs {
        let c = from + r * W;
        let mut acc = [0f32; W];
        for (&p, v) in scores.iter().zip(values.chunks_exact(hd)) {
            for (a, &vv) in acc.iter_mut().zip(&v[c..c + W]) {
                *a += p * vv;
            }
        }
        out[c..c + W].copy_from_slice(&acc);
    }
    runs * W
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_reference() {
        let hd = 8;
        let len = 5;
        let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.3).cos()).collect();
        let k: Vec<f32> = (0..len * hd).map(|i| (i as f32 * 0.17).sin()).collect();
        let v: Vec<f32> = (0..len * hd).map(|i| (i as f32 * 0.11).cos()).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = Vec::new();
        let mut out = vec![0f32; hd];
        attend(&q, &k, &v, scale, &mut scores, &mut out).unwrap();
        let s: Vec<f64> = (0..len)
            .map(|j| {
                (0..hd)
                    .map(|d| q[d] as f64 * k[j * hd + d] as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..hd {
            let want: f64 = (0..len).map(|j| e[j] / z * v[j * hd + d] as f64).sum();
            assert!((out[d] as f64 - want).abs() < 1e-6);
        }
        assert!(attend(&q, &k[..3], &v[..3], scale, &mut scores, &mut out).is_err());
    }

    #[test]
    fn every_isa_gives_the_same_bits_as_key_order_sums() {
        for hd in [64, 96, 136, 8] {
            every_isa_gives_the_same_bits(hd);
        }
    }

    fn every_isa_gives_the_same_bits(hd: usize) {
        let len = 37;
        let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.31).cos()).collect();
        let k: Vec<f32> = (0..len * hd).map(|i| (i as f32 * 0.173).sin()).collect();
        let v: Vec<f32> = (0..len * hd).map(|i| (i as f32 * 0.117).cos()).collect();
        let mut want: Option<Vec<u32>> = None;
        for isa in crate::cpu::isa::available() {
            let mut scores = vec![0f32; len];
            let mut out = vec![0f32; hd];
            attend_isa(isa, &q, &k, &v, 0.125, &mut scores, &mut out);
            // The output is the key-order sum of the softmax weights times the values.
            for (d, o) in out.iter().enumerate() {
                let mut sum = 0f32;
                for (j, p) in scores.iter().enumerate() {
                    sum += p * v[j * hd + d];
                }
                assert_eq!(o.to_bits(), sum.to_bits(), "{isa:?} hd {hd} column {d}");
            }
            let b: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
            match &want {
                None => want = Some(b),
                Some(w) => assert_eq!(&b, w, "{isa:?}"),
            }
        }
    }
}
