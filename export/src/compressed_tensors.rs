//! Export to a Hugging Face folder in the compressed-tensors format (vLLM, SGLang).
//!
//! Every quantized codec of cllm whose dequantization compressed-tensors reproduces bit for bit
//! is written in its `pack-quantized` format (weight-only, `input_activations: null`, the form
//! vLLM's and SGLang's `CompressedTensorsWNA16` load with the Marlin and Machete kernels):
//!
//! | cllm | compressed-tensors | its dequantization |
//! |---|---|---|
//! | `int8` (per row) | 8 bits, symmetric, strategy `channel`, f32 `weight_scale [rows, 1]` | `f32(q) * s` |
//! | `int8g` G | 8 bits, symmetric, strategy `group`, `group_size` G, f32 `[rows, cols/G]` | `f32(q) * s` |
//! | `int4` G | 4 bits, strategy `group`, f32 scale, int32-packed `weight_zero_point` | `(q - z) * s` |
//!
//! Those are cllm's own formulas in f32 (sections 4.2-4.4 of spec/FORMAT.md), so the
//! decompressed f32 values are cllm's dequantized f32 values, bit for bit. `int4` is exported
//! only where every group's minimum is minus a whole multiple of its scale (see
//! [`layout::int4_zero_points`]); otherwise it is refused, naming the tensor. Lossless tensors
//! are written in their source dtype, byte for byte.
//!
//! Memory: the data streams go from the container to the file a frame at a time; one tensor's
//! scales (and int4 minimums) are held at once. Files are cut into shards of at most
//! [`Options::shard_bytes`] (a tensor's entries stay together) with an index when there are
//! several.

mod layout;
mod verify;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use cllm_loader::Packed;
use serde_json::{json, Map, Value};

use crate::{ExportError, ExportSummary};

pub use layout::{int4_zero_points, Scheme};
pub use verify::{is_export, verify_against, CtReport};

/// The compressed-tensors version whose format is written (the one vLLM pins at the time of
/// writing; the fields used are read the same way by 0.17 to 0.20).
pub const FORMAT_VERSION: &str = "0.17.0";

/// The largest shard written (a single tensor larger than this gets a shard of its own).
pub const SHARD_BYTES: u64 = 4 << 30;

#[derive(Clone, Debug)]
pub struct Options {
    pub shard_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            shard_bytes: SHARD_BYTES,
        }
    }
}

/// Writes `packed` into the (empty, existing) folder `dir`.
pub fn export(packed: &Packed, dir: &Path) -> Result<ExportSummary, ExportError> {
    export_with(packed, dir, &Options::default())
}

/// The shards: file name and the units (tensor groups) it holds, in order.
fn shards(units: &[layout::Unit], limit: u64) -> Vec<(String, Vec<usize>)> {
    let mut sets: Vec<Vec<usize>> = vec![];
    let mut size = 0u64;
    for (u, unit) in units.iter().enumerate() {
        let b = unit.bytes();
        match sets.last_mut() {
            Some(last) if size + b <= limit || last.is_empty() => {
                last.push(u);
                size += b;
            }
            _ => {
                sets.push(vec![u]);
                size = b;
            }
        }
    }
    if sets.is_empty() {
        sets.push(vec![]);
    }
    let n = sets.len();
    sets.into_iter()
        .enumerate()
        .map(|(k, s)| {
            let name = if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
            };
            (name, s)
        })
        .collect()
}

/// A safetensors header for `entries` in order, padded with spaces to a multiple of 8.
fn header(entries: &[&layout::Entry]) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut off = 0u64;
    for e in entries {
        m.insert(
            e.name.clone(),
            json!({ "dtype": e.dtype, "shape": e.shape, "data_offsets": [off, off + e.len] }),
        );
        off += e.len;
    }
    let mut h = serde_json::to_vec(&Value::Object(m)).expect("a JSON map");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    h
}

/// `config.json` with the `quantization_config` of `layout` (none when nothing is quantized:
/// then the folder is a plain Hugging Face one).
fn config_json(packed: &Packed, lay: &layout::Layout) -> Result<Vec<u8>, ExportError> {
    let raw = packed
        .read_file("config.json")?
        .ok_or_else(|| ExportError::Unsupported("the container has no config.json".into()))?;
    let mut config: Value = serde_json::from_slice(&raw)
        .map_err(|e| ExportError::Unsupported(format!("config.json: {e}")))?;
    let Some(obj) = config.as_object_mut() else {
        return Err(ExportError::Unsupported(
            "config.json is not a JSON object".into(),
        ));
    };
    if let Some(q) = obj.get("quantization_config") {
        return Err(ExportError::Unsupported(format!(
            "config.json already has a quantization_config ({})",
            q.get("quant_method").unwrap_or(&Value::Null)
        )));
    }
    let mut groups: BTreeMap<Scheme, Vec<String>> = BTreeMap::new();
    for u in &lay.units {
        if let Some((module, scheme)) = &u.quantized {
            groups.entry(*scheme).or_default().push(module.clone());
        }
    }
    if !groups.is_empty() {
        let mut cg = Map::new();
        for (k, (scheme, targets)) in groups.iter().enumerate() {
            cg.insert(
                format!("group_{k}"),
                json!({
                    "targets": targets,
                    "weights": scheme.weights_json(),
                    "input_activations": null,
                    "output_activations": null,
                    "format": "pack-quantized",
                }),
            );
        }
        obj.insert(
            "quantization_config".into(),
            json!({
                "quant_method": "compressed-tensors",
                "format": "pack-quantized",
                "quantization_status": "compressed",
                "config_groups": cg,
                "ignore": lay.ignore,
                "kv_cache_scheme": null,
                "global_compression_ratio": null,
                "sparsity_config": {},
                "transform_config": {},
                "version": FORMAT_VERSION,
            }),
        );
    }
    let mut out = serde_json::to_vec_pretty(&config).expect("JSON");
    out.push(b'\n');
    Ok(out)
}

/// What the folder must hold besides the tensors: every embedded file, config.json with the
/// quantization config. (name, bytes), in name order.
fn side_files(
    packed: &Packed,
    lay: &layout::Layout,
) -> Result<Vec<(String, Vec<u8>)>, ExportError> {
    let mut files = Vec::new();
    for f in &packed.index().files {
        let bytes = if f.name == "config.json" {
            config_json(packed, lay)?
        } else {
            packed.read_file(&f.name)?.unwrap_or_default()
        };
        files.push((f.name.clone(), bytes));
    }
    if !files.iter().any(|(n, _)| n == "config.json") {
        files.push(("config.json".into(), config_json(packed, lay)?));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// The index of a sharded export.
fn index_json(lay: &layout::Layout, shards: &[(String, Vec<usize>)]) -> Vec<u8> {
    let mut map = Map::new();
    let mut total = 0u64;
    for (file, units) in shards {
        for &u in units {
            for e in &lay.units[u].entries {
                map.insert(e.name.clone(), Value::String(file.clone()));
                total += e.len;
            }
        }
    }
    let v = json!({ "metadata": { "total_size": total }, "weight_map": map });
    let mut out = serde_json::to_vec_pretty(&v).expect("JSON");
    out.push(b'\n');
    out
}

/// [`export`] with explicit options (a smaller shard size, in tests).
pub fn export_with(
    packed: &Packed,
    dir: &Path,
    opts: &Options,
) -> Result<ExportSummary, ExportError> {
    let lay = layout::layout(packed)?;
    let files = side_files(packed, &lay)?;
    let shards = shards(&lay.units, opts.shard_bytes.max(1));
    let mut summary = ExportSummary::default();
    let write_file = |name: &str, bytes: &[u8]| -> Result<u64, ExportError> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| ExportError::io(&p, e))?;
        Ok(bytes.len() as u64)
    };
    for (name, bytes) in &files {
        summary.bytes += write_file(name, bytes)?;
    }
    if shards.len() > 1 {
        summary.bytes += write_file("model.safetensors.index.json", &index_json(&lay, &shards))?;
    }
    for (file, units) in &shards {
        let path = dir.join(file);
        let entries: Vec<&layout::Entry> = units
            .iter()
            .flat_map(|&u| lay.units[u].entries.iter())
            .collect();
        let h = header(&entries);
        let f = File::create(&path).map_err(|e| ExportError::io(&path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let io = |e| ExportError::io(&path, e);
        w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&h).map_err(io)?;
        summary.bytes += 8 + h.len() as u64;
        for e in entries {
            let mut n = 0u64;
            layout::emit(packed, e, &mut |c: &[u8]| {
                n += c.len() as u64;
                w.write_all(c).map_err(|err| ExportError::io(&path, err))
            })?;
            if n != e.len {
                return Err(ExportError::Unsupported(format!(
                    "{}: wrote {n} bytes where {} were announced",
                    e.name, e.len
                )));
            }
            summary.bytes += n;
        }
        w.flush().map_err(io)?;
    }
    summary.tensors = lay.units.len();
    let quantized = lay.units.iter().filter(|u| u.quantized.is_some()).count();
    if quantized > 0 {
        summary.notes.push(format!(
            "{quantized} quantized tensors written as pack-quantized with float32 scales: the \
             compressed-tensors package decompresses them to cllm's dequantized values bit for \
             bit; vLLM and SGLang cast the scales to the model dtype when loading, so the \
             weights they serve may differ from cllm's in the last bits"
        ));
    }
    if shards.len() > 1 {
        summary
            .notes
            .push(format!("{} safetensors shards with an index", shards.len()));
    }
    Ok(summary)
}
