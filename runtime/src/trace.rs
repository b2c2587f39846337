//! Traces of a forward pass: every intermediate value a backend hands out, named by the model
//! description's [`Point`]s, for divergence reports.

use cllm_model::Point;

/// One intermediate tensor of a forward pass.
#[derive(Debug)]
pub struct TracePoint<'a> {
    /// What the value is.
    pub point: Point,
    /// Decoder layer, or `None` for values outside the layers (embeddings, final norm, logits).
    pub layer: Option<usize>,
    /// The value's name ([`Point::name`]): `model.layers.3.self_attn.q_proj`,
    /// `model.layers.3`, `model.layers.3.self_attn.attention`, `lm_head`, ...
    pub name: &'a str,
    /// Position of the first row.
    pub start_position: usize,
    /// Number of rows (tokens).
    pub rows: usize,
    /// `rows x width` values, row-major.
    pub data: &'a [f32],
}

impl TracePoint<'_> {
    pub fn width(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// Row `i` (position `start_position + i`).
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.width();
        &self.data[i * w..(i + 1) * w]
    }
}

/// A callback receiving every [`TracePoint`] of a forward pass.
pub type Tracer<'t> = dyn FnMut(&TracePoint<'_>) + 't;

/// Hidden states by layer, then position: `hidden[layer][position]` has `hidden_size` values.
pub type HiddenStates = Vec<Vec<Vec<f32>>>;
