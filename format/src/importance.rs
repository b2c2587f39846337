//! Importance vectors from a calibration run (spec section 4.7): one non-negative f32 weight per
//! input column of each tensor whose searched fit (`int4m`, `int4s`) they weighted. They travel in
//! the container as the embedded file [`IMPORTANCE_FILE`] (safetensors, one 1-D F32 tensor per
//! weight, by the weight's name), so `verify --against` re-runs the weighted search bit for bit.

use std::collections::BTreeMap;

use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{FormatError, Result};

/// The embedded file holding the importance vectors.
pub const IMPORTANCE_FILE: &str = "importance.safetensors";

/// Importance vectors by weight name, and what the calibration ran on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Importance {
    pub vectors: BTreeMap<String, Vec<f32>>,
    /// Free-form description of the calibration (text hash, windows, tokens), kept as the
    /// safetensors metadata.
    pub about: BTreeMap<String, String>,
}

impl Importance {
    /// Tensor `name`'s vector.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.vectors.get(name).map(Vec::as_slice)
    }

    /// The embedded file's bytes: safetensors, tensors in name order, little-endian f32.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if !self.about.is_empty() {
            header.insert("__metadata__".into(), serde_json::json!(self.about));
        }
        let mut at = 0usize;
        for (name, v) in &self.vectors {
            let end = at + 4 * v.len();
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": [v.len()], "data_offsets": [at, end]}),
            );
            at = end;
        }
        let mut json = serde_json::to_vec(&header).expect("a map of strings and numbers");
        // The data starts 8-byte aligned, as safetensors writers do.
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let mut out = Vec::with_capacity(8 + json.len() + at);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for v in self.vectors.values() {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Parses and checks the embedded file: every tensor 1-D F32, every value finite and not
    /// negative. Errors name the file and the tensor.
    pub fn from_bytes(bytes: &[u8]) -> Result<Importance> {
        let bad = |msg: String| FormatError::File {
            name: IMPORTANCE_FILE.into(),
            msg,
        };
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let about = meta
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let mut vectors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != StDtype::F32 || view.shape().len() != 1 {
                return Err(bad(format!(
                    "{name}: {:?} of shape {:?}, not a 1-D F32 vector",
                    view.dtype(),
                    view.shape()
                )));
            }
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(j) = v.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
                return Err(bad(format!(
                    "{name}: column {j} has weight {}, not a finite value >= 0",
                    v[j]
                )));
            }
            vectors.insert(name, v);
        }
        Ok(Importance { vectors, about })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_negative_weights() {
        let mut imp = Importance::default();
        imp.vectors.insert("b.weight".into(), vec![0.5, 0.0, 3.25]);
        imp.vectors.insert("a.weight".into(), vec![1.0; 5]);
        imp.about.insert("text_sha256".into(), "ab".into());
        let bytes = imp.to_bytes();
        assert_eq!(Importance::from_bytes(&bytes).unwrap(), imp);
        imp.vectors.insert("c.weight".into(), vec![-1.0]);
        let e = Importance::from_bytes(&imp.to_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(IMPORTANCE_FILE) && e.contains("c.weight"), "{e}");
        assert!(Importance::from_bytes(b"garbage").is_err());
    }
}
