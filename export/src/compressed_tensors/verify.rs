//! `cllm verify m.cllm --against DIR` where DIR is a compressed-tensors export: the folder must
//! hold exactly what exporting the container writes (packed codes, scales, zero points, shapes,
//! lossless tensors, config and side files), compared bit for bit a frame at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cllm_loader::Packed;
use serde::Serialize;
use serde_json::Value;

use super::layout::{self, Entry};
use crate::ExportError;

/// What comparing a container with an exported folder found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CtReport {
    pub dir: String,
    pub tensors_compared: usize,
    pub lossless_identical: usize,
    pub quantized_identical: usize,
    pub files_identical: usize,
    /// One line per difference, naming the tensor (or file).
    pub failures: Vec<String>,
}

/// Whether `dir` holds a compressed-tensors model (its config.json says so).
pub fn is_export(dir: &Path) -> bool {
    let Ok(bytes) = std::fs::read(dir.join("config.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return false;
    };
    v.get("quantization_config")
        .and_then(|q| q.get("quant_method"))
        .and_then(Value::as_str)
        == Some("compressed-tensors")
}

/// A tensor of the folder: file, dtype, shape, absolute byte range.
struct Found {
    path: PathBuf,
    dtype: String,
    shape: Vec<u64>,
    start: u64,
    end: u64,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> String {
    format!("{}: {msg}", path.display())
}

/// Every tensor of a safetensors file, from its header.
fn read_header(path: &Path, out: &mut BTreeMap<String, Found>) -> Result<(), String> {
    let mut f = File::open(path).map_err(|e| bad(path, e))?;
    let file_len = f.metadata().map_err(|e| bad(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| bad(path, e))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 || 8 + n > file_len {
        return Err(bad(path, "not a safetensors file (header length)"));
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h).map_err(|e| bad(path, e))?;
    let v: Value = serde_json::from_slice(&h).map_err(|e| bad(path, e))?;
    let Some(obj) = v.as_object() else {
        return Err(bad(path, "header is not a JSON object"));
    };
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t.get("dtype").and_then(Value::as_str).unwrap_or("?");
        let shape: Vec<u64> = t
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let offs: Vec<u64> = t
            .get("data_offsets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if offs.len() != 2 || offs[0] > offs[1] || 8 + n + offs[1] > file_len {
            return Err(bad(path, format!("{name}: bad data_offsets")));
        }
        out.insert(
            name.clone(),
            Found {
                path: path.to_path_buf(),
                dtype: dtype.to_string(),
                shape,
                start: 8 + n + offs[0],
                end: 8 + n + offs[1],
            },
        );
    }
    Ok(())
}

/// The safetensors files of `dir`: the index's, or `model.safetensors`.
fn tensor_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let bytes = std::fs::read(&index).map_err(|e| bad(&index, e))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&index, e))?;
        let mut files: Vec<String> = v
            .get("weight_map")
            .and_then(Value::as_object)
            .map(|m| {
                m.values()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        if files.iter().any(|f| f.contains('/') || f.contains('\\')) {
            return Err(bad(&index, "a shard name with a path separator"));
        }
        return Ok(files.iter().map(|f| dir.join(f)).collect());
    }
    Ok(vec![dir.join("model.safetensors")])
}

/// Compares the folder's bytes of `e` with what the export writes; `None` when identical.
fn compare(packed: &Packed, e: &Entry, found: &Found) -> Result<Option<String>, ExportError> {
    if found.dtype != e.dtype || found.shape != e.shape || found.end - found.start != e.len {
        return Ok(Some(format!(
            "{}: {} {:?} in the folder, the export writes {} {:?}",
            e.name, found.dtype, found.shape, e.dtype, e.shape
        )));
    }
    let mut f = File::open(&found.path).map_err(|err| ExportError::io(&found.path, err))?;
    f.seek(SeekFrom::Start(found.start))
        .map_err(|err| ExportError::io(&found.path, err))?;
    let mut at = 0u64;
    let mut differs: Option<u64> = None;
    let mut buf = Vec::new();
    layout::emit(packed, e, &mut |c: &[u8]| {
        if differs.is_some() {
            return Ok(());
        }
        buf.resize(c.len(), 0);
        f.read_exact(&mut buf)
            .map_err(|err| ExportError::io(&found.path, err))?;
        if let Some(k) = c.iter().zip(&buf).position(|(a, b)| a != b) {
            differs = Some(at + k as u64);
        }
        at += c.len() as u64;
        Ok(())
    })?;
    Ok(differs.map(|k| {
        format!(
            "{}: byte {k} (of {}) differs from the export of the container",
            e.name, e.len
        )
    }))
}

/// Compares the exported folder `dir` with the export of `packed`, bit for bit.
pub fn verify_against(packed: &Packed, dir: &Path) -> Result<CtReport, ExportError> {
    let mut rep = CtReport {
        dir: dir.display().to_string(),
        ..CtReport::default()
    };
    let lay = match layout::layout(packed) {
        Ok(l) => l,
        Err(e @ ExportError::Refused { .. }) => {
            rep.failures
                .push(format!("{e} (so no folder can be its export)"));
            return Ok(rep);
        }
        Err(e) => return Err(e),
    };
    for (name, bytes) in super::side_files(packed, &lay)? {
        match std::fs::read(dir.join(&name)) {
            Ok(b) if b == bytes => rep.files_identical += 1,
            Ok(_) => rep
                .failures
                .push(format!("{name}: differs from the export of the container")),
            Err(e) => rep.failures.push(format!("{name}: {e}")),
        }
    }
    let mut found = BTreeMap::new();
    match tensor_files(dir) {
        Ok(files) => {
            for f in files {
                if let Err(msg) = read_header(&f, &mut found) {
                    rep.failures.push(msg);
                }
            }
        }
        Err(msg) => rep.failures.push(msg),
    }
    for u in &lay.units {
        rep.tensors_compared += 1;
        let mut same = true;
        for e in &u.entries {
            let Some(fd) = found.remove(&e.name) else {
                rep.failures.push(format!(
                    "{}: missing from the folder (tensor {})",
                    e.name, u.tensor
                ));
                same = false;
                continue;
            };
            if let Some(msg) = compare(packed, e, &fd)? {
                rep.failures.push(format!("{msg} (tensor {})", u.tensor));
                same = false;
            }
        }
        if same {
            if u.quantized.is_some() {
                rep.quantized_identical += 1;
            } else {
                rep.lossless_identical += 1;
            }
        }
    }
    for name in found.keys() {
        rep.failures.push(format!(
            "{name}: in the folder but not in the container's export"
        ));
    }
    Ok(rep)
}
