//! The key/value cache: preallocated f32 storage for every layer's keys and values.
//!
//! Layout: `[layer][kv_head][position][head_dim]`, so the keys one head attends over are one
//! contiguous slice (`0..=t`). The capacity is fixed when the cache is made; appending past it
//! is an error, never a reallocation. The RoPE cos/sin tables live here too (one per distinct
//! RoPE of the model), sized to the same capacity, since positions and cache slots are the same
//! thing; a `longrope` table's factors are chosen by that capacity.

use cllm_kernels::cpu::RopeTable;
use cllm_model::ModelConfig;

use crate::error::ModelError;

/// Preallocated keys and values for `capacity` positions.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    /// The model's rotary tables (`ModelConfig::ropes`) and which one each layer uses.
    ropes: Vec<RopeTable>,
    layer_rope: Vec<usize>,
}

impl KvCache {
    /// A cache for `capacity` positions (at most `max_position_embeddings`).
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Result<KvCache, ModelError> {
        if capacity > cfg.max_position_embeddings {
            return Err(ModelError::CapacityTooLarge {
                capacity,
                max_position_embeddings: cfg.max_position_embeddings,
            });
        }
        let n = cfg
            .num_hidden_layers
            .checked_mul(cfg.num_key_value_heads)
            .and_then(|v| v.checked_mul(capacity))
            .and_then(|v| v.checked_mul(cfg.head_dim))
            .ok_or(ModelError::CapacityTooLarge {
                capacity,
                max_position_embeddings: cfg.max_position_embeddings,
            })?;
        let ropes = cfg
            .ropes()
            .iter()
            .map(|r| {
                RopeTable::new(
                    cfg.head_dim,
                    cfg.rotary_dim,
                    r.theta as f32,
                    &r.scaling,
                    capacity,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let layer_rope = (0..cfg.num_hidden_layers)
            .map(|l| cfg.rope_index(l))
            .collect();
        Ok(KvCache {
            layers: cfg.num_hidden_layers,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            capacity,
            len: 0,
            keys: vec![0.0; n],
            values: vec![0.0; n],
            ropes,
            layer_rope,
        })
    }

    /// The rotary table of decoder layer `layer`.
    pub(crate) fn rope(&self, layer: usize) -> &RopeTable {
        &self.ropes[self.layer_rope[layer]]
    }

    /// Number of decoder layers the cache serves.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Positions filled so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by keys and values.
    pub fn resident_bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * 4
    }

    /// Forgets every position (the storage is kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Fails unless `n` more positions fit.
    pub(crate) fn check_room(&self, n: usize) -> Result<(), ModelError> {
        if self.len + n > self.capacity {
            Err(ModelError::CacheFull {
                capacity: self.capacity,
                position: self.len,
                requested: n,
            })
        } else {
            Ok(())
        }
    }

    fn offset(&self, layer: usize, kv_head: usize, pos: usize) -> usize {
        ((layer * self.kv_heads + kv_head) * self.capacity + pos) * self.head_dim
    }

    /// Stores the keys and values of `n` consecutive positions starting at `start`;
    /// `k` and `v` are `n x (kv_heads * head_dim)` row-major. Does not advance `len`.
    pub(crate) fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        let row = self.kv_heads * hd;
        for (i, (kr, vr)) in k.chunks_exact(row).zip(v.chunks_exact(row)).enumerate() {
            for g in 0..self.kv_heads {
                let o = self.offset(layer, g, start + i);
                self.keys[o..o + hd].copy_from_slice(&kr[g * hd..(g + 1) * hd]);
                self.values[o..o + hd].copy_from_slice(&vr[g * hd..(g + 1) * hd]);
            }
        }
    }

    /// Keys and values of positions `from..to` for one layer and kv head (`(to - from) x head_dim`).
    pub(crate) fn span(
        &self,
        layer: usize,
        kv_head: usize,
        from: usize,
        to: usize,
    ) -> (&[f32], &[f32]) {
        let a = self.offset(layer, kv_head, from);
        let b = self.offset(layer, kv_head, to);
        (&self.keys[a..b], &self.values[a..b])
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
