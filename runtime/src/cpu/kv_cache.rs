//! The key/value cache: preallocated storage for every layer's keys and values, in the
//! [`KvPrecision`] it was made with (f32, bf16, or int8 in rotated blocks with a scale each).
//!
//! Layout: `[layer][kv_head][position][head_dim]`, so the keys one head attends over are one
//! contiguous slice (`0..=t`). The capacity is fixed when the cache is made; appending past it
//! is an error, never a reallocation. The RoPE cos/sin tables live here too (one per distinct
//! RoPE of the model), sized to the same capacity, since positions and cache slots are the same
//! thing; a `longrope` table's factors are chosen by that capacity.
//!
//! Keys and values are rounded to the storage form when written (`crate::kv`), and attention
//! reads them back through [`KvCache::span_into`], so every read sees the stored form. An int8
//! span is read back still rotated: the forward pass rotates the queries and outputs to match.

use cllm_kernels::cpu::RopeTable;
use cllm_model::ModelConfig;

use crate::error::ModelError;
use crate::kv::{
    bf16_from_f32, bf16_to_f32, int8_block, int8_dequantize_blocks, int8_quantize_blocks,
    KvPrecision,
};

/// The stored keys and values, `[layer][kv_head][position][head_dim]` each.
#[derive(Clone, Debug)]
enum Store {
    F32 {
        keys: Vec<f32>,
        values: Vec<f32>,
    },
    Bf16 {
        keys: Vec<u16>,
        values: Vec<u16>,
    },
    /// The scales (bf16 bits) are `[layer][kv_head][position][block]` (`crate::kv::int8_block`).
    Int8 {
        keys: Vec<i8>,
        values: Vec<i8>,
        key_scales: Vec<u16>,
        value_scales: Vec<u16>,
    },
}

/// Preallocated keys and values for `capacity` positions.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    precision: KvPrecision,
    store: Store,
    /// The model's rotary tables (`ModelConfig::ropes`) and which one each layer uses.
    ropes: Vec<RopeTable>,
    layer_rope: Vec<usize>,
}

impl KvCache {
    /// An f32 cache for `capacity` positions (at most `max_position_embeddings`).
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Result<KvCache, ModelError> {
        KvCache::with_precision(cfg, capacity, KvPrecision::F32)
    }

    /// A cache for `capacity` positions storing keys and values as `precision`.
    pub fn with_precision(
        cfg: &ModelConfig,
        capacity: usize,
        precision: KvPrecision,
    ) -> Result<KvCache, ModelError> {
        precision
            .check(cfg.head_dim)
            .map_err(|reason| ModelError::KvCacheForm { reason })?;
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
            precision,
            store: match precision {
                KvPrecision::F32 => Store::F32 {
                    keys: vec![0.0; n],
                    values: vec![0.0; n],
                },
                KvPrecision::Bf16 => Store::Bf16 {
                    keys: vec![0; n],
                    values: vec![0; n],
                },
                KvPrecision::Int8 => {
                    let blocks = n / int8_block(cfg.head_dim);
                    Store::Int8 {
                        keys: vec![0; n],
                        values: vec![0; n],
                        key_scales: vec![0; blocks],
                        value_scales: vec![0; blocks],
                    }
                }
            },
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

    /// How keys and values are stored.
    pub fn precision(&self) -> KvPrecision {
        self.precision
    }

    /// Bytes held by keys and values (int8's scales included).
    pub fn resident_bytes(&self) -> usize {
        match &self.store {
            Store::F32 { keys, values } => (keys.len() + values.len()) * 4,
            Store::Bf16 { keys, values } => (keys.len() + values.len()) * 2,
            Store::Int8 {
                keys,
                values,
                key_scales,
                value_scales,
            } => keys.len() + values.len() + (key_scales.len() + value_scales.len()) * 2,
        }
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

    /// Stores the keys and values of `n` consecutive positions starting at `start`, rounded to
    /// the cache's storage form; `k` and `v` are `n x (kv_heads * head_dim)` row-major. Does not
    /// advance `len`.
    pub(crate) fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        let row = self.kv_heads * hd;
        for (i, (kr, vr)) in k.chunks_exact(row).zip(v.chunks_exact(row)).enumerate() {
            for g in 0..self.kv_heads {
                let o = self.offset(layer, g, start + i);
                let (ks, vs) = (&kr[g * hd..(g + 1) * hd], &vr[g * hd..(g + 1) * hd]);
                match &mut self.store {
                    Store::F32 { keys, values } => {
                        keys[o..o + hd].copy_from_slice(ks);
                        values[o..o + hd].copy_from_slice(vs);
                    }
                    Store::Bf16 { keys, values } => {
                        for (d, s) in keys[o..o + hd].iter_mut().zip(ks) {
                            *d = bf16_from_f32(*s);
                        }
                        for (d, s) in values[o..o + hd].iter_mut().zip(vs) {
                            *d = bf16_from_f32(*s);
                        }
                    }
                    Store::Int8 {
                        keys,
                        values,
                        key_scales,
                        value_scales,
                    } => {
                        let bl = int8_block(hd);
                        let blocks = o / bl..(o + hd) / bl;
                        let q = o..o + hd;
                        int8_quantize_blocks(
                            ks,
                            &mut keys[q.clone()],
                            &mut key_scales[blocks.clone()],
                            bl,
                        );
                        int8_quantize_blocks(vs, &mut values[q], &mut value_scales[blocks], bl);
                    }
                }
            }
        }
    }

    /// Keys and values of positions `from..to` for one layer and kv head (`(to - from) x
    /// head_dim` f32), as stored: f32 storage is borrowed, other forms are read back into
    /// `keys` and `values`.
    pub(crate) fn span_into<'a>(
        &'a self,
        layer: usize,
        kv_head: usize,
        from: usize,
        to: usize,
        keys: &'a mut Vec<f32>,
        values: &'a mut Vec<f32>,
    ) -> (&'a [f32], &'a [f32]) {
        let a = self.offset(layer, kv_head, from);
        let b = self.offset(layer, kv_head, to);
        match &self.store {
            Store::F32 {
                keys: ks,
                values: vs,
            } => return (&ks[a..b], &vs[a..b]),
            Store::Bf16 {
                keys: ks,
                values: vs,
            } => {
                keys.clear();
                keys.extend(ks[a..b].iter().map(|&x| bf16_to_f32(x)));
                values.clear();
                values.extend(vs[a..b].iter().map(|&x| bf16_to_f32(x)));
            }
            Store::Int8 {
                keys: ks,
                values: vs,
                key_scales,
                value_scales,
            } => {
                keys.resize(b - a, 0.0);
                values.resize(b - a, 0.0);
                let bl = int8_block(self.head_dim);
                let scales = a / bl..b / bl;
                int8_dequantize_blocks(&ks[a..b], &key_scales[scales.clone()], keys, bl);
                int8_dequantize_blocks(&vs[a..b], &value_scales[scales], values, bl);
            }
        }
        (&keys[..b - a], &values[..b - a])
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
