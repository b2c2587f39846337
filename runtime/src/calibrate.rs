//! Calibration for `cllm pack --calibrate`: runs a model over a text and measures, for every
//! projection, how much energy each of its input columns carries (the mean of x² over the text's
//! positions). A column that carries more moves the output more per unit of weight error, so the
//! searched 4-bit fits weight each value's error by its column's importance (spec section 4.7).
//!
//! The inputs are the values the model description names (`Family::input`): the input norm for
//! q/k/v, the attention output for o, the MLP norm for gate/up, and the activation
//! `act(gate) * up`, formed from the traced gate and up outputs, for down. Sums are f64 in
//! position order, so a run gives the same vectors on any thread count.

use std::collections::{BTreeMap, HashMap};

use cllm_model::{ActivationInputs, Module, Point};

use crate::cpu::forward::{activate, split_rows};
use crate::divergence::{Backend, BackendError};
use crate::trace::TracePoint;

/// The built-in calibration text: the project's decision records 0001 to 0019, frozen. Not the
/// evaluation text, so that a calibrated codec is not scored on what it was fitted to.
pub const CALIBRATION_TEXT: &str = include_str!("calibrate_text.md");

/// Sums of squares of one traced value, per column.
#[derive(Default)]
struct Energy {
    sums: Vec<f64>,
    rows: usize,
}

impl Energy {
    fn add(&mut self, data: &[f32], rows: usize) {
        let width = data.len() / rows.max(1);
        if self.sums.is_empty() {
            self.sums = vec![0.0; width];
        }
        if self.sums.len() != width {
            return;
        }
        for row in data.chunks_exact(width.max(1)).take(rows) {
            for (s, &x) in self.sums.iter_mut().zip(row) {
                *s += x as f64 * x as f64;
            }
        }
        self.rows += rows;
    }

    fn mean(&self) -> Vec<f32> {
        let n = self.rows.max(1) as f64;
        self.sums.iter().map(|&s| (s / n) as f32).collect()
    }
}

/// Importance vectors of every projection the model ran (weight name → one value per input
/// column), from `windows`, each run teacher-forced from a fresh cache. The LM head's needs every
/// position's final norm, and so the full vocabulary's logits (`lm_head`); without it the
/// passes stop at the layers, which on a large vocabulary is most of the work saved.
pub fn importance(
    backend: &dyn Backend,
    windows: &[Vec<u32>],
    lm_head: bool,
) -> Result<BTreeMap<String, Vec<f32>>, BackendError> {
    let cfg = backend.config();
    let (family, act) = (cfg.family, cfg.activation);
    let mut energy: HashMap<String, Energy> = HashMap::new();
    let mut modules: Vec<(Module, usize)> = Vec::new();
    let mut failure: Option<BackendError> = None;
    for tokens in windows {
        // The gate's output of the layer being run, until its up output arrives.
        let mut gate: Option<Vec<f32>> = None;
        let mut record = |p: &TracePoint<'_>| {
            if let (Point::Projection(m), Some(l)) = (p.point, p.layer) {
                if !modules.contains(&(m, l)) {
                    modules.push((m, l));
                }
            }
            let layer = p.layer.unwrap_or(0);
            let act_name = Point::Activation.name(layer);
            match (family.activation_inputs(), p.point) {
                (ActivationInputs::Separate(g, _), Point::Projection(m)) if m == g => {
                    gate = Some(p.data.to_vec());
                }
                (ActivationInputs::Separate(_, u), Point::Projection(m)) if m == u => {
                    if let Some(g) = gate.take() {
                        let mut a = vec![0f32; g.len()];
                        match activate(act, &g, p.data, &mut a) {
                            Ok(()) => energy.entry(act_name).or_default().add(&a, p.rows),
                            Err(e) => failure = Some(e.into()),
                        }
                    }
                }
                (ActivationInputs::Fused(gu), Point::Projection(m)) if m == gu => {
                    let half = p.width() / 2;
                    let (mut g, mut u) = (Vec::new(), Vec::new());
                    split_rows(p.data, p.rows, &mut [&mut g, &mut u], &[half, half]);
                    let mut a = vec![0f32; g.len()];
                    match activate(act, &g, &u, &mut a) {
                        Ok(()) => energy.entry(act_name).or_default().add(&a, p.rows),
                        Err(e) => failure = Some(e.into()),
                    }
                }
                (_, Point::Norm(_) | Point::Attention) => {
                    energy
                        .entry(p.name.to_string())
                        .or_default()
                        .add(p.data, p.rows);
                }
                _ => {}
            }
        };
        if lm_head {
            backend.forward_traced(tokens, &mut record)?;
        } else {
            backend.trace_layers(tokens, &mut record)?;
        }
        if let Some(e) = failure.take() {
            return Err(e);
        }
    }
    if lm_head {
        modules.push((Module::LmHead, 0));
    }
    let mut out = BTreeMap::new();
    for (module, layer) in modules {
        let Some(input) = family.input(module) else {
            continue;
        };
        if let Some(e) = energy.get(&input.name(layer)) {
            out.insert(format!("{}.weight", module.hf_name(layer)), e.mean());
        }
    }
    Ok(out)
}
