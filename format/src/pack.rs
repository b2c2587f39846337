//! Writing a container: source tensors and files in, a `.cllm` byte stream out.
//!
//! Frames are encoded in parallel (rayon) a bounded window at a time and written in order, so the
//! output is the same bytes whatever the thread count, and memory holds one window, never the model.

use std::io::Write;

use rayon::prelude::*;

use crate::codec::{Codec, Encoding};
use crate::encoding::{encode_frame, Effort};
use crate::error::{FormatError, Result};
use crate::hash::Hasher128;
use crate::index::{
    FileEntry, FrameEntry, Index, Provenance, SourceFile, StreamEntry, TensorEntry,
};
use crate::layout::{self, align_up};
use crate::policy::Policy;
use crate::tensor::{quant_params, stream_range};
use crate::Dtype;

/// A tensor of the source model: its little-endian row-major bytes, typically memory-mapped.
pub struct SourceTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub bytes: &'a [u8],
}

pub struct PackInput<'a> {
    pub tensors: Vec<SourceTensor<'a>>,
    /// Files to embed (`config.json` required).
    pub files: Vec<(String, Vec<u8>)>,
    pub source_files: Vec<SourceFile>,
}

#[derive(Clone, Debug)]
pub struct PackOptions {
    pub policy: Policy,
    /// Largest decoded size of a frame.
    pub frame_size: usize,
    pub zstd_level: i32,
    /// Decoded bytes in flight at once (at least one frame).
    pub window_bytes: usize,
    /// Written into the provenance, e.g. "cllm 0.1.0".
    pub tool: String,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            policy: Policy::default(),
            frame_size: 2 << 20,
            zstd_level: 3,
            window_bytes: 64 << 20,
            tool: format!("cllm-format {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Progress so far, for a progress bar.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub source_done: u64,
    pub source_total: u64,
    pub written: u64,
}

#[derive(Clone, Debug)]
pub struct PackSummary {
    pub index: Index,
    pub file_len: u64,
    pub source_bytes: u64,
}

/// The plan of one tensor, resolved before anything is written.
struct Planned<'a> {
    src: &'a SourceTensor<'a>,
    codec: Codec,
}

/// One frame to encode: decoded bytes `range` of stream `stream` of the tensor or file at hand.
struct Job {
    stream: usize,
    range: std::ops::Range<usize>,
    encoding: Encoding,
    effort: Effort,
    /// Source bytes this frame accounts for (progress only).
    source_bytes: u64,
}

/// Checks what the index would otherwise reject, and plans every tensor's codec.
pub fn plan<'a>(tensors: &'a [SourceTensor<'a>], policy: &Policy) -> Result<Vec<Codec>> {
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(FormatError::tensor(&t.name, "appears twice in the source"));
        }
        if t.name.is_empty() || t.name.len() > 1024 {
            return Err(FormatError::tensor(&t.name, "name must be 1 to 1024 bytes"));
        }
        let expected = crate::codec::Codec::Raw.streams(&t.name, t.dtype, &t.shape)?[0].len;
        if t.bytes.len() as u64 != expected {
            return Err(FormatError::tensor(
                &t.name,
                format!(
                    "source holds {} bytes, dtype {} and shape {:?} need {expected}",
                    t.bytes.len(),
                    t.dtype,
                    t.shape
                ),
            ));
        }
    }
    let keys: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))
        .collect();
    policy.resolve(&keys)
}

fn cut(len: usize, frame: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..len.div_ceil(frame)).map(move |i| i * frame..((i + 1) * frame).min(len))
}

struct Writer<'w, W: Write> {
    out: &'w mut W,
    pos: u64,
}

impl<W: Write> Writer<'_, W> {
    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }
    fn pad(&mut self) -> Result<()> {
        let to = align_up(self.pos).expect("file offsets stay far below u64::MAX");
        let zeros = [0u8; 64];
        self.write(&zeros[..(to - self.pos) as usize])
    }
}

/// Packs `input` into `out`. `progress` is called after every window.
pub fn pack<W: Write>(
    input: &PackInput<'_>,
    opts: &PackOptions,
    out: &mut W,
    progress: &mut dyn FnMut(Progress),
) -> Result<PackSummary> {
    if opts.frame_size == 0 || !opts.frame_size.is_multiple_of(8) || opts.frame_size > 64 << 20 {
        return Err(FormatError::Policy(format!(
            "frame size {} must be a multiple of 8 bytes, at most 64 MiB",
            opts.frame_size
        )));
    }
    if !input.files.iter().any(|(n, _)| n == "config.json") {
        return Err(FormatError::Index(
            "the source has no config.json to embed".into(),
        ));
    }
    let mut order: Vec<&SourceTensor> = input.tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let sorted: Vec<SourceTensor> = order
        .iter()
        .map(|t| SourceTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            bytes: t.bytes,
        })
        .collect();
    let codecs = plan(&sorted, &opts.policy)?;
    let planned: Vec<Planned> = sorted
        .iter()
        .zip(&codecs)
        .map(|(src, &codec)| Planned { src, codec })
        .collect();
    let mut files: Vec<&(String, Vec<u8>)> = input.files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let source_total: u64 = sorted.iter().map(|t| t.bytes.len() as u64).sum();
    // The lowest minor version whose codecs the file uses (spec section 1, "Versions").
    let minor = codecs.iter().map(|c| c.min_minor()).max().unwrap_or(0);
    let mut w = Writer { out, pos: 0 };
    w.write(&layout::preamble(layout::MAJOR, minor))?;
    w.pad()?;

    let mut entries: Vec<TensorEntry> = Vec::with_capacity(planned.len());
    let mut prog = Progress {
        source_total,
        ..Progress::default()
    };
    // Tensors one at a time: quantization parameters are per tensor, small (a scale per row or
    // group), and computed before the tensor's frames.
    for p in &planned {
        let t = p.src;
        let params = quant_params(&t.name, p.codec, t.dtype, &t.shape, t.bytes)?;
        let specs = p.codec.streams(&t.name, t.dtype, &t.shape)?;
        let mut jobs = Vec::new();
        for (si, spec) in specs.iter().enumerate() {
            let frame = opts.frame_size - opts.frame_size % spec.elem_size;
            let share = |r: &std::ops::Range<usize>| -> u64 {
                if si == 0 && spec.len > 0 {
                    (t.bytes.len() as u128 * r.len() as u128 / spec.len as u128) as u64
                } else {
                    0
                }
            };
            for range in cut(spec.len as usize, frame) {
                jobs.push(Job {
                    stream: si,
                    source_bytes: share(&range),
                    range,
                    encoding: spec.encoding,
                    effort: effort(p.codec, opts),
                });
            }
        }
        let mut streams: Vec<StreamEntry> = specs
            .iter()
            .map(|s| StreamEntry {
                role: s.role.to_string(),
                len: s.len,
                xxh3: String::new(),
                frames: Vec::new(),
            })
            .collect();
        let mut hashers = vec![Hasher128::default(); specs.len()];
        run_jobs(
            &jobs,
            opts,
            &mut w,
            &mut prog,
            progress,
            |job| match p.codec.is_lossless() {
                true => Decoded::Borrowed(&t.bytes[job.range.clone()]),
                false => Decoded::Owned(stream_range(
                    t.dtype,
                    &t.shape,
                    &params,
                    t.bytes,
                    job.stream,
                    job.range.clone(),
                )),
            },
            |job, decoded, frame| {
                hashers[job.stream].update(decoded);
                streams[job.stream].frames.push(frame);
            },
        )?;
        for (s, h) in streams.iter_mut().zip(&hashers) {
            s.xxh3 = h.hex();
        }
        let source_xxh3 = if p.codec.is_lossless() {
            streams[0].xxh3.clone()
        } else {
            crate::hash::xxh3_128_hex(t.bytes)
        };
        drop(params);
        entries.push(TensorEntry {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            codec: p.codec.id().to_string(),
            group_size: p.codec.group_size(),
            source_xxh3,
            streams,
        });
    }

    let mut file_entries = Vec::with_capacity(files.len());
    for (name, bytes) in &files {
        let jobs: Vec<Job> = cut(bytes.len(), opts.frame_size)
            .map(|range| Job {
                stream: 0,
                range,
                encoding: Encoding::Zstd,
                effort: Effort::Level(opts.zstd_level),
                source_bytes: 0,
            })
            .collect();
        let mut frames = Vec::new();
        run_jobs(
            &jobs,
            opts,
            &mut w,
            &mut prog,
            progress,
            |job| Decoded::Borrowed(&bytes[job.range.clone()]),
            |_, _, frame| frames.push(frame),
        )?;
        file_entries.push(FileEntry {
            name: name.clone(),
            len: bytes.len() as u64,
            xxh3: crate::hash::xxh3_128_hex(bytes),
            frames,
        });
    }

    let index = Index {
        format: "cllm".into(),
        version: [layout::MAJOR, minor],
        alignment: layout::ALIGNMENT,
        tensors: entries,
        files: file_entries,
        policy: opts.policy.record(),
        provenance: Provenance {
            tool: opts.tool.clone(),
            frame_size: opts.frame_size as u64,
            zstd_level: opts.zstd_level,
            source_files: input.source_files.clone(),
        },
    };
    w.pad()?;
    let index_offset = w.pos;
    let json = serde_json::to_vec(&index).map_err(|e| FormatError::IndexJson(e.to_string()))?;
    w.write(&json)?;
    let footer = layout::footer(index_offset, &json, &layout::preamble(layout::MAJOR, minor));
    w.write(&footer)?;
    w.out.flush()?;
    progress(prog);
    Ok(PackSummary {
        index,
        file_len: w.pos,
        source_bytes: source_total,
    })
}

enum Decoded<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Decoded<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Decoded::Borrowed(b) => b,
            Decoded::Owned(v) => v,
        }
    }
}

/// Encodes `jobs` a window at a time in parallel and writes the frames in order.
fn run_jobs<'s, W: Write>(
    jobs: &[Job],
    opts: &PackOptions,
    w: &mut Writer<'_, W>,
    prog: &mut Progress,
    progress: &mut dyn FnMut(Progress),
    decoded: impl Fn(&Job) -> Decoded<'s> + Sync,
    mut done: impl FnMut(&Job, &[u8], FrameEntry),
) -> Result<()> {
    let mut start = 0;
    while start < jobs.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < jobs.len()
            && (end == start || bytes + jobs[end].range.len() <= opts.window_bytes)
        {
            bytes += jobs[end].range.len();
            end += 1;
        }
        let encoded: Vec<(Decoded, std::io::Result<Vec<u8>>)> = jobs[start..end]
            .par_iter()
            .map(|job| {
                let d = decoded(job);
                let e = encode_frame(job.encoding, d.bytes(), job.effort);
                (d, e)
            })
            .collect();
        for (job, (d, e)) in jobs[start..end].iter().zip(encoded) {
            let stored = e?;
            w.pad()?;
            let frame = FrameEntry {
                offset: w.pos,
                stored: stored.len() as u64,
                decoded: job.range.len() as u64,
                xxh3: xxhash_rust::xxh3::xxh3_64(&stored),
            };
            w.write(&stored)?;
            prog.source_done += job.source_bytes;
            done(job, d.bytes(), frame);
        }
        prog.written = w.pos;
        progress(*prog);
        start = end;
    }
    Ok(())
}

/// What packing a tensor is expected to produce, for `--dry-run`.
#[derive(Clone, Debug)]
pub struct Projection {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub codec: Codec,
    pub source_bytes: u64,
    pub payload_bytes: u64,
    /// Stored bytes, extrapolated from encoding each stream's first frame.
    pub projected_bytes: u64,
}

/// Plans every tensor and projects its stored size by encoding a sample frame of each stream.
pub fn project(input: &PackInput<'_>, opts: &PackOptions) -> Result<Vec<Projection>> {
    let codecs = plan(&input.tensors, &opts.policy)?;
    input
        .tensors
        .par_iter()
        .zip(codecs)
        .map(|(t, codec)| {
            let specs = codec.streams(&t.name, t.dtype, &t.shape)?;
            let params = quant_params(&t.name, codec, t.dtype, &t.shape, t.bytes)?;
            let mut projected = 0u64;
            for (si, spec) in specs.iter().enumerate() {
                let frame = opts.frame_size - opts.frame_size % spec.elem_size;
                let n = (spec.len as usize).min(frame);
                if n == 0 {
                    continue;
                }
                let sample = stream_range(t.dtype, &t.shape, &params, t.bytes, si, 0..n);
                let stored = encode_frame(spec.encoding, &sample, effort(codec, opts))?.len();
                projected += (stored as u128 * spec.len as u128 / n as u128) as u64;
            }
            let mut entry = Projection {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                codec,
                source_bytes: t.bytes.len() as u64,
                payload_bytes: specs.iter().map(|s| s.len).sum(),
                projected_bytes: projected,
            };
            entry.projected_bytes = entry.projected_bytes.max(1);
            Ok(entry)
        })
        .collect::<Result<Vec<_>>>()
        .map(|mut v| {
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        })
}

/// Float planes and quantized codes are coded for their symbol statistics; everything else at the
/// configured zstd level.
fn effort(codec: Codec, opts: &PackOptions) -> Effort {
    match codec {
        Codec::Raw | Codec::Zstd => Effort::Level(opts.zstd_level),
        Codec::ZstdBp | Codec::Int8Row | Codec::Int8Group { .. } | Codec::Int4 { .. } => {
            Effort::Entropy
        }
    }
}
