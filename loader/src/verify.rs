//! The proof behind "quantized means measured": a container checked byte by byte, and against the
//! Hugging Face folder it was packed from: lossless tensors byte-identical to the source,
//! quantized ones re-quantized from the source bit for bit, each quantized tensor's error
//! measured.
//!
//! [`verify_file`] streams the container's frames in a bounded window (`cllm verify`);
//! [`verify_and_load`] decodes each tensor once, checks it and keeps it as a CPU weight, so
//! `cllm verify --run` runs the very bytes it verified.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cllm_format::index::TensorEntry;
use cllm_format::SourceBytes;
use cllm_format::{
    lossless_source_failure, quant, tensor, verify, verify_except_tensors, Codec, FormatError,
    VerifyReport,
};
use cllm_kernels::Weight;
use rayon::prelude::*;
use serde::Serialize;

use crate::cllm::weight_from_streams;
use crate::error::LoadError;
use crate::hf::{HfFolder, HfTensor};
use crate::model::{LoadedModel, ModelFiles, SourceKind};
use crate::packed::Packed;

/// Decoded bytes in flight while streaming a container's frames.
const WINDOW_BYTES: usize = 64 << 20;

/// Bytes of a scale or minimum stream re-computed and compared at a time.
const PARAMS_WINDOW_BYTES: usize = 1 << 20;

/// Why a container could not be verified at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The container's structure is broken: a verification failure, not a usage error.
    #[error("{path}: {source}")]
    Malformed { path: PathBuf, source: FormatError },
    /// The source folder's tensor cannot be quantized (a NaN, say): the proof cannot be made.
    #[error("{dir}: {source}")]
    Requantize { dir: PathBuf, source: FormatError },
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Error figures of one quantized tensor against its source.
#[derive(Clone, Debug, Serialize)]
pub struct QuantError {
    pub name: String,
    pub codec: String,
    pub rel_rms: f64,
    pub max_abs: f64,
    pub sqnr_db: f64,
}

/// What comparing a container with its source folder found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgainstReport {
    pub dir: String,
    pub tensors_compared: usize,
    pub lossless_identical: usize,
    pub quantized_reproduced: usize,
    pub quantized: Vec<QuantError>,
}

/// What verifying a container found; `failures` is empty when every check holds.
#[derive(Clone, Debug)]
pub struct Verification {
    pub version: [u16; 2],
    pub bytes: VerifyReport,
    pub against: Option<AgainstReport>,
    pub seconds: f64,
}

impl Verification {
    pub fn failures(&self) -> &[String] {
        &self.bytes.failures
    }
}

/// Relative RMS, largest absolute error and SQNR of `approx` against `source`.
pub fn error_figures(name: &str, codec: &str, source: &[f32], approx: &[f32]) -> QuantError {
    let mut sums = ErrorSums::default();
    sums.add(source, approx);
    sums.figures(name, codec)
}

/// [`error_figures`]' sums, accumulated a window at a time.
#[derive(Default)]
struct ErrorSums {
    signal: f64,
    noise: f64,
    max_abs: f64,
}

impl ErrorSums {
    fn add(&mut self, source: &[f32], approx: &[f32]) {
        for (&x, &y) in source.iter().zip(approx) {
            let d = (x as f64) - (y as f64);
            self.signal += (x as f64) * (x as f64);
            self.noise += d * d;
            self.max_abs = self.max_abs.max(d.abs());
        }
    }

    fn figures(&self, name: &str, codec: &str) -> QuantError {
        let (sig, noise) = (self.signal, self.noise);
        QuantError {
            name: name.to_string(),
            codec: codec.to_string(),
            rel_rms: if sig > 0.0 { (noise / sig).sqrt() } else { 0.0 },
            max_abs: self.max_abs,
            sqnr_db: if noise > 0.0 {
                10.0 * (sig / noise).log10()
            } else {
                f64::INFINITY
            },
        }
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// One tensor's comparison with its source.
enum Against {
    LosslessIdentical,
    Quantized {
        reproduced: bool,
        error: QuantError,
    },
    /// Not comparable (missing, other dtype or shape, undecodable): the failures say why.
    None,
}

/// Compares tensor `i`, decoded into `stored`, with its source, appending failures.
fn compare_tensor(
    t: &TensorEntry,
    codec: Codec,
    importance: Option<&[f32]>,
    stored: &[Vec<u8>],
    src: &HfTensor<'_>,
    failures: &mut Vec<String>,
) -> Result<Against, FormatError> {
    if codec.is_lossless() {
        return Ok(if stored[0] == src.bytes {
            Against::LosslessIdentical
        } else {
            failures.push(format!(
                "tensor {}: decoded bytes differ from the source at byte {}",
                t.name,
                first_difference(&stored[0], src.bytes)
            ));
            Against::None
        });
    }
    let params = tensor::quant_params(&t.name, codec, t.dtype, &t.shape, importance, src.bytes)?;
    let mut reproduced = true;
    for (si, s) in stored.iter().enumerate() {
        let again = tensor::stream_range(t.dtype, &t.shape, &params, src.bytes, si, 0..s.len());
        if &again != s {
            reproduced = false;
            failures.push(format!(
                "tensor {}: re-quantizing the source does not reproduce stream '{}' (first difference at byte {})",
                t.name,
                t.streams[si].role,
                first_difference(&again, s)
            ));
        }
    }
    let mut orig = Vec::new();
    quant::to_f32(t.dtype, src.bytes, &mut orig);
    let approx = tensor::dequantize(codec, &t.shape, stored);
    Ok(Against::Quantized {
        reproduced,
        error: error_figures(&t.name, &codec.to_string(), &orig, &approx),
    })
}

/// Where a stream first departs from what the source gives, met a window at a time.
#[derive(Clone, Default)]
struct FirstDifference(Option<usize>);

impl FirstDifference {
    fn check(&mut self, at: usize, stored: &[u8], again: &[u8]) {
        if self.0.is_none() && stored != again {
            self.0 = Some(at + first_difference(stored, again));
        }
    }
}

/// [`compare_tensor`] a frame at a time: the container's frames streamed (pages handed back as
/// read), the source re-quantized only over the groups each frame needs, the error summed as it
/// goes; memory holds a window, never the tensor (`cllm verify --against` at any model size).
fn compare_tensor_streamed(
    c: &Packed,
    i: usize,
    importance: Option<&[f32]>,
    src: &HfTensor<'_>,
    failures: &mut Vec<String>,
) -> Result<Against, FormatError> {
    let (t, codec) = (c.tensor(i), c.codec(i));
    let source = SourceBytes::Mapped {
        bytes: src.bytes,
        release: &crate::packed::release_mapped,
    };
    let mut at = 0usize;
    let mut diff = FirstDifference::default();
    if codec.is_lossless() {
        let decoded = c.stream_chunks(i, 0, |chunk| {
            let range = at..at + chunk.len();
            diff.check(at, chunk, src.bytes.get(range.clone()).unwrap_or(&[]));
            source.done(range);
            at += chunk.len();
            Ok(())
        });
        if let Err(e) = decoded {
            failures.push(e.to_string());
            return Ok(Against::None);
        }
        return Ok(match diff.0 {
            None if at == src.bytes.len() => Against::LosslessIdentical,
            d => {
                failures.push(format!(
                    "tensor {}: decoded bytes differ from the source at byte {}",
                    t.name,
                    d.unwrap_or(at.min(src.bytes.len()))
                ));
                Against::None
            }
        });
    }
    let stored_params: Vec<Vec<u8>> = match (1..t.streams.len())
        .map(|s| c.decode_stream(i, s))
        .collect::<Result<_, _>>()
    {
        Ok(p) => p,
        Err(e) => {
            failures.push(e.to_string());
            return Ok(Against::None);
        }
    };
    let (name, dtype, shape) = (&t.name, t.dtype, &t.shape[..]);
    let memo = tensor::ParamsMemo::new(codec, shape, tensor::PARAMS_MEMO_BYTES);
    let mut requantize_error = None;
    let mut sums = ErrorSums::default();
    let (mut vals, mut diffs) = (
        Vec::new(),
        vec![FirstDifference::default(); t.streams.len()],
    );
    let decoded = c.stream_chunks(i, 0, |codes| {
        let range = at..at + codes.len();
        let groups = tensor::param_groups(codec, shape, 0, &range);
        let span = tensor::group_source_range(codec, dtype, shape, &groups);
        let (again, params) = match tensor::quantize_data_range(
            name,
            codec,
            dtype,
            shape,
            importance,
            range.clone(),
            &src.bytes[span.clone()],
            &mut vals,
        ) {
            Ok(r) => r,
            Err(e) => {
                requantize_error.get_or_insert(e);
                return Ok(());
            }
        };
        memo.record(&params);
        diffs[0].check(at, codes, &again);
        // The source values of this frame, from the conversion the re-quantization made.
        let from = tensor::source_range(codec, dtype, 0, &range).unwrap_or(0..0);
        let es = dtype.size();
        let orig = &vals[(from.start - span.start) / es..(from.end - span.start) / es];
        sums.add(
            orig,
            &tensor::dequantize_range(codec, shape, codes, at, &stored_params),
        );
        source.done(span);
        at += codes.len();
        Ok(())
    });
    if let Some(e) = requantize_error {
        return Err(e);
    }
    if let Err(e) = decoded {
        failures.push(e.to_string());
        return Ok(Against::None);
    }
    for (s, stored) in stored_params.iter().enumerate().map(|(k, p)| (k + 1, p)) {
        for start in (0..stored.len()).step_by(PARAMS_WINDOW_BYTES) {
            let range = start..(start + PARAMS_WINDOW_BYTES).min(stored.len());
            let groups = tensor::param_groups(codec, shape, s, &range);
            let params = match memo.get(&groups) {
                Some(p) => p,
                None => tensor::quant_params_for(
                    name, codec, dtype, shape, importance, &source, groups,
                )?,
            };
            let again = tensor::stream_range_from(dtype, shape, &params, &[], s, range.clone());
            diffs[s].check(start, &stored[range], &again);
        }
    }
    let mut reproduced = true;
    for (s, d) in diffs.iter().enumerate() {
        if let Some(byte) = d.0 {
            reproduced = false;
            failures.push(format!(
                "tensor {}: re-quantizing the source does not reproduce stream '{}' (first difference at byte {byte})",
                t.name, t.streams[s].role,
            ));
        }
    }
    Ok(Against::Quantized {
        reproduced,
        error: sums.figures(&t.name, &codec.to_string()),
    })
}

/// The source tensor of container tensor `i`, or the failure that says why there is none.
fn source_of<'f>(t: &TensorEntry, folder: &'f HfFolder) -> Result<HfTensor<'f>, String> {
    let src = folder
        .get(&t.name)
        .ok_or_else(|| format!("tensor {}: not in the source folder", t.name))?;
    if src.dtype != t.dtype || src.shape != t.shape {
        return Err(format!(
            "tensor {}: container has {} {:?}, source has {} {:?}",
            t.name, t.dtype, t.shape, src.dtype, src.shape
        ));
    }
    Ok(src)
}

/// Sums one tensor's comparison into the report.
fn tally(rep: &mut AgainstReport, a: Against) {
    match a {
        Against::LosslessIdentical => rep.lossless_identical += 1,
        Against::Quantized { reproduced, error } => {
            rep.quantized_reproduced += usize::from(reproduced);
            rep.quantized.push(error);
        }
        Against::None => {}
    }
}

/// Source tensors the container lacks, as failures.
fn missing_from_container(p: &Packed, folder: &HfFolder, failures: &mut Vec<String>) {
    for s in folder.tensors() {
        if p.find(s.name).is_none() {
            failures.push(format!(
                "tensor {}: in the source but not in the container",
                s.name
            ));
        }
    }
}

/// Opens a container or shard set; a malformed one (or a broken set) is a verification failure.
fn open_packed(path: &Path) -> Result<Packed, VerifyError> {
    Packed::open(path).map_err(|e| match e {
        LoadError::Format { path, source } => VerifyError::Malformed { path, source },
        other => VerifyError::Load(other),
    })
}

/// Every byte of each container of the set (with its tensors' frames, or without them), one
/// report per shard file.
fn shard_reports(p: &Packed, tensors: bool) -> Vec<(PathBuf, VerifyReport)> {
    p.shards()
        .iter()
        .map(|sh| {
            let r = match tensors {
                true => verify(&sh.container, WINDOW_BYTES),
                false => verify_except_tensors(&sh.container, WINDOW_BYTES),
            };
            (sh.path.clone(), r)
        })
        .collect()
}

/// Every byte of each container of the set, one report per shard file.
pub fn verify_shards(p: &Packed) -> Vec<(PathBuf, VerifyReport)> {
    shard_reports(p, true)
}

/// The shards' reports summed; each failure starts with its shard's file where `name_files`.
pub fn sum_reports(reports: Vec<(PathBuf, VerifyReport)>, name_files: bool) -> VerifyReport {
    let mut total = VerifyReport::default();
    for (path, mut r) in reports {
        if name_files {
            for f in &mut r.failures {
                *f = format!("{}: {f}", path.display());
            }
        }
        total.tensors += r.tensors;
        total.files += r.files;
        total.frames += r.frames;
        total.stored_bytes += r.stored_bytes;
        total.decoded_bytes += r.decoded_bytes;
        total.failures.extend(r.failures);
    }
    total
}

/// Every byte of every container of the set, each failure naming its shard's file when the set
/// has several.
fn verify_bytes(p: &Packed, tensors: bool) -> VerifyReport {
    sum_reports(shard_reports(p, tensors), p.shards().len() > 1)
}

fn version_of(p: &Packed) -> [u16; 2] {
    let f = &p.shards()[0].container.framing;
    [f.major, f.minor]
}

/// Checks every byte of the container at `path` (frames streamed in a bounded window), and with
/// `against` compares every tensor with the folder it was packed from.
pub fn verify_file(path: &Path, against: Option<&Path>) -> Result<Verification, VerifyError> {
    let start = Instant::now();
    let c = open_packed(path)?;
    let mut bytes = verify_bytes(&c, true);
    let against = match against {
        Some(dir) => {
            let importance = c.importance()?;
            let folder = HfFolder::open(dir).map_err(LoadError::from)?;
            let mut rep = AgainstReport {
                dir: folder.dir().display().to_string(),
                ..AgainstReport::default()
            };
            for i in 0..c.len() {
                let t = c.tensor(i);
                let src = match source_of(t, &folder) {
                    Ok(s) => s,
                    Err(f) => {
                        bytes.failures.push(f);
                        continue;
                    }
                };
                rep.tensors_compared += 1;
                let weights = importance.as_ref().and_then(|m| m.get(&t.name));
                let a = compare_tensor_streamed(&c, i, weights, &src, &mut bytes.failures)
                    .map_err(|source| VerifyError::Requantize {
                        dir: dir.to_path_buf(),
                        source,
                    })?;
                tally(&mut rep, a);
            }
            missing_from_container(&c, &folder, &mut bytes.failures);
            Some(rep)
        }
        None => None,
    };
    Ok(Verification {
        version: version_of(&c),
        bytes,
        against,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// [`verify_file`] against the source folder `against`, decoding each tensor once: every frame
/// and stream hash checked as it decodes, the tensor compared with its source, then kept as a
/// CPU weight. Returns the verification and, when every tensor decoded, the model loaded from
/// those very bytes (what `cllm verify --run` runs).
pub fn verify_and_load(
    path: &Path,
    against: &Path,
) -> Result<(Verification, Option<LoadedModel>), VerifyError> {
    let start = Instant::now();
    let c = open_packed(path)?;
    let folder = HfFolder::open(against).map_err(LoadError::from)?;
    let mut bytes = verify_bytes(&c, false);
    let files = ModelFiles::from_packed(&c)?;
    let importance = c.importance()?;

    struct Checked {
        failures: Vec<String>,
        compared: bool,
        against: Against,
        weight: Option<(String, Weight)>,
    }
    let checked: Vec<Result<Checked, VerifyError>> = (0..c.len())
        .into_par_iter()
        .map(|i| {
            let t = c.tensor(i);
            let mut failures = Vec::new();
            let stored = match c.decode_tensor(i) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(e.to_string());
                    return Ok(Checked {
                        failures,
                        compared: false,
                        against: Against::None,
                        weight: None,
                    });
                }
            };
            let (shard, k) = c.locate(i);
            failures.extend(lossless_source_failure(&c.shards()[shard].container, k));
            let (compared, against) = match source_of(t, &folder) {
                Ok(src) => (
                    true,
                    compare_tensor(
                        t,
                        c.codec(i),
                        importance.as_ref().and_then(|m| m.get(&t.name)),
                        &stored,
                        &src,
                        &mut failures,
                    )
                    .map_err(|source| VerifyError::Requantize {
                        dir: against.to_path_buf(),
                        source,
                    })?,
                ),
                Err(f) => {
                    failures.push(f);
                    (false, Against::None)
                }
            };
            let w = weight_from_streams(&t.name, t.dtype, &t.shape, c.codec(i), stored)?;
            Ok(Checked {
                failures,
                compared,
                against,
                weight: Some((t.name.clone(), w)),
            })
        })
        .collect();

    let mut rep = AgainstReport {
        dir: folder.dir().display().to_string(),
        ..AgainstReport::default()
    };
    let mut weights = HashMap::new();
    let mut complete = true;
    for (i, r) in checked.into_iter().enumerate() {
        let ch = r?;
        bytes.failures.extend(ch.failures);
        rep.tensors_compared += usize::from(ch.compared);
        tally(&mut rep, ch.against);
        match ch.weight {
            Some((name, w)) => {
                weights.insert(name, w);
            }
            None => complete = false,
        }
        for s in &c.tensor(i).streams {
            bytes.frames += s.frames.len();
            bytes.stored_bytes += s.frames.iter().map(|f| f.stored).sum::<u64>();
            bytes.decoded_bytes += s.frames.iter().map(|f| f.decoded).sum::<u64>();
        }
    }
    missing_from_container(&c, &folder, &mut bytes.failures);
    let seconds = start.elapsed().as_secs_f64();
    let model = complete.then(|| LoadedModel {
        path: path.to_path_buf(),
        kind: SourceKind::Container,
        files,
        weights,
        lossless: c.is_lossless(),
        load_seconds: seconds,
    });
    Ok((
        Verification {
            version: version_of(&c),
            bytes,
            against: Some(rep),
            seconds,
        },
        model,
    ))
}
