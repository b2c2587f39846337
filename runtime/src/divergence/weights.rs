//! Static comparison of two models' weights, tensor by tensor, as the runtime holds them
//! (quantized tensors dequantized to f32): which tensors differ, and by how much.

use std::collections::HashMap;

use cllm_kernels::Weight;
use cllm_model::TensorId;
use rayon::prelude::*;
use serde::Serialize;

use super::figures::{bit_equal, rel_rms, Moments};

/// One tensor present in both models with the same shape.
#[derive(Clone, Debug, Serialize)]
pub struct WeightRow {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Every element has the same value (as f32) in both.
    pub identical: bool,
    /// ‖b − a‖ / ‖a‖.
    pub rel_rms: f64,
    pub max_abs: f64,
    pub cosine: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WeightDiff {
    pub compared: usize,
    pub identical: usize,
    pub only_in_reference: Vec<String>,
    pub only_in_test: Vec<String>,
    /// `name: RxC vs RxC`.
    pub shape_mismatch: Vec<String>,
    /// `name: why` for tensors that could not be decoded.
    pub undecodable: Vec<String>,
    /// Largest `rel_rms` first.
    pub tensors: Vec<WeightRow>,
}

impl WeightDiff {
    pub fn structure_failures(&self) -> Vec<String> {
        let mut f: Vec<String> = Vec::new();
        f.extend(
            self.only_in_reference
                .iter()
                .map(|n| format!("tensor {n}: only in the reference")),
        );
        f.extend(
            self.only_in_test
                .iter()
                .map(|n| format!("tensor {n}: only in the test model")),
        );
        f.extend(self.shape_mismatch.iter().map(|m| format!("tensor {m}")));
        f.extend(self.undecodable.iter().map(|m| format!("tensor {m}")));
        f
    }

    pub fn get(&self, name: &str) -> Option<&WeightRow> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The weight of decoder layer `layer` that differs most from the reference's, if any does:
    /// where a backend cannot attribute a layer's error to a tensor, the weights still hint.
    pub fn most_changed_in_layer(&self, layer: usize) -> Option<&WeightRow> {
        self.tensors.iter().find(|t| {
            !t.identical && TensorId::parse_hf(&t.name).is_some_and(|id| id.layer == Some(layer))
        })
    }
}

fn row(name: &str, a: &Weight, b: &Weight) -> Result<WeightRow, String> {
    let x = a
        .to_f32_vec()
        .map_err(|e| format!("{name}: reference: {e}"))?;
    let y = b.to_f32_vec().map_err(|e| format!("{name}: test: {e}"))?;
    let m = Moments::of(&x, &y);
    Ok(WeightRow {
        name: name.to_string(),
        rows: a.rows,
        cols: a.cols,
        identical: bit_equal(&x, &y),
        rel_rms: rel_rms(m.diff2, m.ref2),
        max_abs: m.max_abs,
        cosine: if m.ref2 > 0.0 && m.test2 > 0.0 {
            m.dot / (m.ref2.sqrt() * m.test2.sqrt())
        } else {
            f64::from(u8::from(m.ref2 == m.test2))
        },
    })
}

/// Compares every tensor of `a` (the reference) with the same-named tensor of `b`.
pub fn compare(a: &HashMap<String, Weight>, b: &HashMap<String, Weight>) -> WeightDiff {
    let mut d = WeightDiff::default();
    let mut names: Vec<&String> = a.keys().collect();
    names.sort();
    d.only_in_test = b.keys().filter(|n| !a.contains_key(*n)).cloned().collect();
    d.only_in_test.sort();
    let mut pairs = Vec::new();
    for n in names {
        match b.get(n) {
            None => d.only_in_reference.push(n.clone()),
            Some(wb) => {
                let wa = &a[n];
                if (wa.rows, wa.cols) != (wb.rows, wb.cols) {
                    d.shape_mismatch.push(format!(
                        "{n}: {}x{} vs {}x{}",
                        wa.rows, wa.cols, wb.rows, wb.cols
                    ));
                } else {
                    pairs.push((n, wa, wb));
                }
            }
        }
    }
    let rows: Vec<Result<WeightRow, String>> =
        pairs.par_iter().map(|(n, wa, wb)| row(n, wa, wb)).collect();
    for r in rows {
        match r {
            Ok(r) => {
                d.compared += 1;
                d.identical += usize::from(r.identical);
                d.tensors.push(r);
            }
            Err(e) => d.undecodable.push(e),
        }
    }
    d.tensors
        .sort_by(|x, y| y.rel_rms.total_cmp(&x.rel_rms).then(x.name.cmp(&y.name)));
    d
}
