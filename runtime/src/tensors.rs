//! Taking a model's tensors out of a loader's map by what they are ([`TensorId`]), each checked
//! against the shape the config gives it: the one way the CPU and GPU models are assembled.

use std::collections::HashMap;

use cllm_model::{ModelConfig, Module, TensorId};

use crate::error::ModelError;

/// A tensor as a loader hands it over, CPU or GPU resident: its `rows x cols`.
pub(crate) trait Shaped {
    fn rows_cols(&self) -> (usize, usize);
}

/// The loader's tensors by transformers name; [`Tensors::take`] removes them one by one.
pub(crate) struct Tensors<'c, W> {
    cfg: &'c ModelConfig,
    map: HashMap<String, W>,
}

impl<'c, W: Shaped> Tensors<'c, W> {
    pub fn new(cfg: &'c ModelConfig, map: HashMap<String, W>) -> Self {
        Tensors { cfg, map }
    }

    /// The config the tensors are checked against.
    pub fn config(&self) -> &'c ModelConfig {
        self.cfg
    }

    /// Removes tensor `id`, checking its shape; names it when missing or misshapen.
    pub fn take(&mut self, id: TensorId) -> Result<(String, W), ModelError> {
        let name = id.hf_name();
        let w = self
            .map
            .remove(&name)
            .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
        let (rows, cols) = match id.part {
            cllm_model::Part::Weight => id.module.rows_cols(self.cfg),
            cllm_model::Part::Bias => (1, id.module.rows_cols(self.cfg).0),
        };
        let (r, c) = w.rows_cols();
        if (r, c) != (rows, cols) {
            return Err(ModelError::Shape {
                name,
                expected_rows: rows,
                expected_cols: cols,
                rows: r,
                cols: c,
            });
        }
        Ok((name, w))
    }

    /// The bias of `module` at `layer`: required where the config gives the module one, taken
    /// where the checkpoint has one anyway.
    pub fn bias(
        &mut self,
        module: Module,
        layer: Option<usize>,
    ) -> Result<Option<(String, W)>, ModelError> {
        let id = TensorId::bias(module, layer);
        if self.cfg.has_bias(module) || self.map.contains_key(&id.hf_name()) {
            self.take(id).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The names left over (tensors the model does not use), sorted.
    pub fn unused(self) -> Vec<String> {
        let mut v: Vec<String> = self.map.into_keys().collect();
        v.sort();
        v
    }
}
