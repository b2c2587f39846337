//! Writing a container: source tensors and files in, a `.cllm` byte stream out.
//!
//! Frames are encoded in parallel (rayon) a bounded window at a time and written in order, so the
//! output is the same bytes whatever the thread count, and memory holds one window, never the model.

use std::borrow::Cow;
use std::io::Write;
use std::ops::Range;

use rayon::prelude::*;

use crate::codec::{Codec, Encoding};
use crate::encoding::{encode_frame, Effort};
use crate::error::{FormatError, Result};
use crate::hash::Hasher128;
use crate::importance::{Importance, IMPORTANCE_FILE};
use crate::index::{
    FileEntry, FrameEntry, Index, Provenance, SourceFile, StreamEntry, TensorEntry,
};
use crate::layout::{self, align_up};
use crate::policy::Policy;
use crate::source::SourceTensor;
use crate::tensor::{
    group_source_range, param_groups, quant_params_for, quantize_data_range, source_range,
    stream_range_from, ParamsMemo, PARAMS_MEMO_BYTES,
};

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
    /// A calibration's importance vectors (spec section 4.7): they weight the searched fits of the
    /// tensors they name and are embedded as [`crate::importance::IMPORTANCE_FILE`].
    pub importance: Option<std::sync::Arc<Importance>>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            policy: Policy::default(),
            frame_size: 2 << 20,
            zstd_level: 3,
            window_bytes: 64 << 20,
            tool: format!("cllm-format {}", env!("CARGO_PKG_VERSION")),
            importance: None,
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

/// One frame to encode: decoded bytes `range` of stream `stream` of the tensor or file at hand.
struct Job {
    stream: usize,
    range: Range<usize>,
    /// The source bytes the frame is computed from (a quantized data stream's elements).
    source: Option<Range<usize>>,
    /// The quantization groups the frame depends on (empty for lossless codecs); their
    /// parameters are computed with the frame, so no tensor's parameters are ever held whole.
    groups: Range<usize>,
    encoding: Encoding,
    effort: Effort,
    /// Source bytes this frame accounts for (progress only).
    source_bytes: u64,
}

/// Checks what the index would otherwise reject, and plans every tensor's codec.
pub fn plan<'a>(tensors: &'a [SourceTensor<'a>], policy: &Policy) -> Result<Vec<Codec>> {
    let mut order: Vec<&SourceTensor> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    check_sources(&order)?;
    let keys: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))
        .collect();
    policy.resolve(&keys)
}

fn cut(len: usize, frame: usize) -> impl Iterator<Item = Range<usize>> {
    (0..len.div_ceil(frame)).map(move |i| i * frame..((i + 1) * frame).min(len))
}

/// Where a sharded pack writes a shard: a file that can be cut back when a tensor that does not
/// fit moves on to the next shard.
pub trait ShardOut: Write {
    /// Drops everything from `len` on; the next write goes to `len`.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
}

impl ShardOut for std::io::BufWriter<std::fs::File> {
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        use std::io::Seek;
        self.flush()?;
        self.get_mut().set_len(len)?;
        self.get_mut().seek(std::io::SeekFrom::Start(len))?;
        Ok(())
    }
}

impl ShardOut for std::io::Cursor<Vec<u8>> {
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.get_mut().truncate(len as usize);
        self.set_position(len);
        Ok(())
    }
}

/// A plain writer for an unsharded pack, which never needs to cut back.
struct Unsharded<'w, W: Write>(&'w mut W);

impl<W: Write> Write for Unsharded<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> ShardOut for Unsharded<'_, W> {
    fn truncate(&mut self, _: u64) -> std::io::Result<()> {
        unreachable!("an unsharded pack has no size limit, so nothing is ever moved")
    }
}

/// One shard being written: its output, the write position and what its index will hold.
struct Shard<O> {
    out: O,
    pos: u64,
    tensors: Vec<TensorEntry>,
    files: Vec<FileEntry>,
    /// Serialized size of `tensors`, for the index reserve.
    tensors_json: u64,
}

impl<O: ShardOut> Shard<O> {
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

/// The stored bytes of `decoded` bytes of an embedded file in frames of `frame` at worst, with
/// padding: zstd's bound (`compressBound`: the input, 1/256 of it and a few header bytes per
/// frame) with room to spare.
fn worst_stored(decoded: u64, frame: u64) -> u64 {
    let frames = decoded.div_ceil(frame.max(1)).max(1);
    decoded + decoded / 128 + frames * (128 + 64)
}

/// Index bytes per frame entry at most (offset, stored, decoded, hash, punctuation).
const FRAME_JSON: u64 = 128;

/// The whole-model state of a pack in progress.
struct Packer<'p, O: ShardOut> {
    opts: &'p PackOptions,
    limit: Option<u64>,
    minor: u16,
    shards: Vec<Shard<O>>,
    create: &'p mut dyn FnMut(u64) -> std::io::Result<O>,
    files: Vec<&'p (String, Vec<u8>)>,
    /// Index bytes that do not depend on the shard's tensors (top level, policy, provenance, the
    /// set record at its largest).
    index_base: u64,
    prog: Progress,
    progress: &'p mut dyn FnMut(Progress),
}

/// Why a tensor stopped before its last frame.
enum Flow {
    Done,
    /// The shard is full: the tensor moves to the next one.
    Full,
}

impl<'p, O: ShardOut> Packer<'p, O> {
    fn open_shard(&mut self) -> Result<()> {
        let k = self.shards.len() as u64 + 1;
        let out = (self.create)(k)?;
        let mut sh = Shard {
            out,
            pos: 0,
            tensors: Vec::new(),
            files: Vec::new(),
            tensors_json: 0,
        };
        sh.write(&layout::preamble(layout::MAJOR, self.minor))?;
        sh.pad()?;
        self.shards.push(sh);
        Ok(())
    }

    /// The embedded files the current shard gets: all of them in the first shard, only
    /// `config.json` (which every container must hold) in the others.
    fn shard_files(&self) -> Vec<&'p (String, Vec<u8>)> {
        let first = self.shards.len() <= 1;
        self.files
            .iter()
            .copied()
            .filter(|(n, _)| first || n == "config.json")
            .collect()
    }

    /// Bytes the current shard must keep free beyond its frames: its files, its index, a footer.
    fn reserve(&self, frames_in_flight: u64) -> u64 {
        let sh = self.shards.last().expect("a shard is open");
        let files: u64 = self
            .shard_files()
            .iter()
            .map(|(n, b)| {
                let len = b.len() as u64;
                let frames = len.div_ceil(self.opts.frame_size as u64);
                worst_stored(len, self.opts.frame_size as u64)
                    + frames * FRAME_JSON
                    + n.len() as u64
                    + 128
            })
            .sum();
        files + self.index_base + sh.tensors_json + frames_in_flight * FRAME_JSON + 64 + 32
    }

    fn over_limit(&self, frames_in_flight: u64) -> bool {
        let sh = self.shards.last().expect("a shard is open");
        self.limit
            .is_some_and(|max| sh.pos + self.reserve(frames_in_flight) > max)
    }

    /// Writes one tensor into the current shard, or, when it would overflow a shard that already
    /// holds tensors, cuts the shard back and writes it at the start of a new one.
    fn tensor(&mut self, t: &SourceTensor<'_>, codec: Codec) -> Result<()> {
        let specs = codec.streams(&t.name, t.dtype, &t.shape)?;
        let mut jobs = Vec::new();
        for (si, spec) in specs.iter().enumerate() {
            let frame = self.opts.frame_size - self.opts.frame_size % spec.elem_size;
            let share = |r: &Range<usize>| -> u64 {
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
                    source: source_range(codec, t.dtype, si, &range),
                    groups: param_groups(codec, &t.shape, si, &range),
                    range,
                    encoding: spec.encoding,
                    effort: effort(codec, self.opts),
                });
            }
        }
        loop {
            let start = self.shards.last().expect("a shard is open").pos;
            let done_before = self.prog.source_done;
            match self.tensor_frames(t, codec, &specs, &jobs)? {
                (Flow::Done, entry) => {
                    let json = serde_json::to_vec(&entry)
                        .map_err(|e| FormatError::IndexJson(e.to_string()))?
                        .len() as u64;
                    let sh = self.shards.last_mut().expect("a shard is open");
                    sh.tensors_json += json + 1;
                    sh.tensors.push(entry);
                    return Ok(());
                }
                (Flow::Full, _) => {
                    let sh = self.shards.last_mut().expect("a shard is open");
                    if sh.tensors.is_empty() {
                        return Err(FormatError::tensor(
                            &t.name,
                            format!(
                                "does not fit in a shard of {} bytes even alone (more than {} bytes \
                                 stored so far); raise --max-shard-size",
                                self.limit.unwrap_or(0),
                                sh.pos - start
                            ),
                        ));
                    }
                    sh.out.truncate(start)?;
                    sh.pos = start;
                    self.prog.source_done = done_before;
                    self.close_shard()?;
                    self.open_shard()?;
                }
            }
        }
    }

    /// The frames of one tensor, a window at a time; stops early when the shard fills up.
    fn tensor_frames(
        &mut self,
        t: &SourceTensor<'_>,
        codec: Codec,
        specs: &[crate::codec::StreamSpec],
        jobs: &[Job],
    ) -> Result<(Flow, TensorEntry)> {
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
        let memo = ParamsMemo::new(codec, &t.shape, PARAMS_MEMO_BYTES);
        let weights = self.opts.importance.clone();
        let importance = weights.as_deref().and_then(|i| i.get(&t.name));
        let mut source_hash = Hasher128::default();
        let mut written = 0u64;
        let flow = self.run_jobs(
            jobs,
            |job| frame_bytes(t, codec, importance, &memo, job),
            |job, produced, frame| {
                hashers[job.stream].update(&produced.decoded);
                if let (false, Some(s)) = (codec.is_lossless(), &produced.source) {
                    source_hash.update(s);
                }
                // A quantized data frame read its groups, which hold its source range.
                if let Some(r) = &job.source {
                    t.bytes.done(match job.groups.is_empty() {
                        true => r.clone(),
                        false => group_source_range(codec, t.dtype, &t.shape, &job.groups),
                    });
                }
                streams[job.stream].frames.push(frame);
                written += 1;
                written
            },
        )?;
        for (s, h) in streams.iter_mut().zip(&hashers) {
            s.xxh3 = h.hex();
        }
        let source_xxh3 = if codec.is_lossless() {
            streams[0].xxh3.clone()
        } else {
            source_hash.hex()
        };
        Ok((
            flow,
            TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                codec: codec.id().to_string(),
                group_size: codec.group_size(),
                source_xxh3,
                streams,
            },
        ))
    }

    /// Writes the current shard's embedded files after its tensors.
    fn close_shard(&mut self) -> Result<()> {
        for (name, bytes) in self.shard_files() {
            let jobs: Vec<Job> = cut(bytes.len(), self.opts.frame_size)
                .map(|range| Job {
                    stream: 0,
                    source: None,
                    groups: 0..0,
                    range,
                    encoding: Encoding::Zstd,
                    effort: Effort::Level(self.opts.zstd_level),
                    source_bytes: 0,
                })
                .collect();
            let mut frames = Vec::new();
            self.run_jobs(
                &jobs,
                |job| {
                    Ok(Produced {
                        decoded: Cow::Borrowed(&bytes[job.range.clone()]),
                        source: None,
                    })
                },
                |_, _, frame| {
                    frames.push(frame);
                    0
                },
            )?;
            self.shards
                .last_mut()
                .expect("a shard is open")
                .files
                .push(FileEntry {
                    name: name.clone(),
                    len: bytes.len() as u64,
                    xxh3: crate::hash::xxh3_128_hex(bytes),
                    frames,
                });
        }
        Ok(())
    }

    /// Encodes `jobs` a window at a time in parallel and writes the frames in order. `done` gets
    /// each written frame and returns how many frames of the current tensor are written; the run
    /// stops with [`Flow::Full`] when the shard could no longer hold its index.
    fn run_jobs<'s>(
        &mut self,
        jobs: &[Job],
        produce: impl Fn(&Job) -> Result<Produced<'s>> + Sync,
        mut done: impl FnMut(&Job, &Produced<'s>, FrameEntry) -> u64,
    ) -> Result<Flow> {
        let mut start = 0;
        while start < jobs.len() {
            let mut end = start;
            let mut bytes = 0;
            let cost = |j: &Job| j.range.len().max(j.source.as_ref().map_or(0, |r| r.len()));
            // A tensor's scale frames start a window of their own, so that its data frames have
            // kept their parameters (`ParamsMemo`) before they run.
            let params_after_data =
                |e: usize| jobs[e].source.is_none() && jobs[e - 1].source.is_some();
            let quantized = |e: usize| !jobs[e].groups.is_empty();
            while end < jobs.len()
                && (end == start
                    || (bytes + cost(&jobs[end]) <= self.opts.window_bytes
                        && !(quantized(end) && params_after_data(end))))
            {
                bytes += cost(&jobs[end]);
                end += 1;
            }
            let encoded: Vec<(Produced, std::io::Result<Vec<u8>>)> = jobs[start..end]
                .par_iter()
                .map(|job| {
                    let p = produce(job)?;
                    let e = encode_frame(job.encoding, &p.decoded, job.effort);
                    Ok((p, e))
                })
                .collect::<Result<_>>()?;
            for (job, (p, e)) in jobs[start..end].iter().zip(encoded) {
                let stored = e?;
                let sh = self.shards.last_mut().expect("a shard is open");
                sh.pad()?;
                let frame = FrameEntry {
                    offset: sh.pos,
                    stored: stored.len() as u64,
                    decoded: job.range.len() as u64,
                    xxh3: xxhash_rust::xxh3::xxh3_64(&stored),
                };
                sh.write(&stored)?;
                self.prog.source_done += job.source_bytes;
                let in_flight = done(job, &p, frame);
                if self.over_limit(in_flight) {
                    return Ok(Flow::Full);
                }
            }
            self.prog.written = self.shards.iter().map(|s| s.pos).sum();
            (self.progress)(self.prog);
            start = end;
        }
        Ok(Flow::Done)
    }

    /// Closes the last shard and writes every shard's index and footer; returns the outputs with
    /// their indexes and lengths.
    fn finish(mut self, provenance: Provenance) -> Result<Vec<(O, PackSummary)>> {
        self.close_shard()?;
        let indexes: Vec<Index> = self
            .shards
            .iter_mut()
            .map(|sh| Index {
                format: "cllm".into(),
                version: [layout::MAJOR, self.minor],
                alignment: layout::ALIGNMENT,
                tensors: std::mem::take(&mut sh.tensors),
                files: std::mem::take(&mut sh.files),
                policy: self.opts.policy.record(),
                provenance: provenance.clone(),
                set: None,
            })
            .collect();
        let sets = match self.limit {
            Some(_) => crate::shard::bind(&indexes.iter().collect::<Vec<_>>())
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None; indexes.len()],
        };
        let mut out = Vec::with_capacity(indexes.len());
        for ((mut sh, mut index), set) in self.shards.into_iter().zip(indexes).zip(sets) {
            index.set = set;
            sh.pad()?;
            let index_offset = sh.pos;
            let json =
                serde_json::to_vec(&index).map_err(|e| FormatError::IndexJson(e.to_string()))?;
            sh.write(&json)?;
            sh.write(&layout::footer(
                index_offset,
                &json,
                &layout::preamble(layout::MAJOR, self.minor),
            ))?;
            sh.out.flush()?;
            if let Some(max) = self.limit {
                if sh.pos > max {
                    return Err(FormatError::Set(format!(
                        "shard {} came to {} bytes, over the limit of {max} (its index took more \
                         than reserved); raise --max-shard-size",
                        out.len() + 1,
                        sh.pos
                    )));
                }
            }
            let summary = PackSummary {
                index,
                file_len: sh.pos,
                source_bytes: 0,
            };
            out.push((sh.out, summary));
        }
        (self.progress)(self.prog);
        Ok(out)
    }
}

/// A frame's decoded bytes and, for a quantized data stream, the source bytes they came from.
struct Produced<'s> {
    decoded: Cow<'s, [u8]>,
    source: Option<Cow<'s, [u8]>>,
}

/// Job `job`'s frame of tensor `t`. A quantized data frame reads the whole groups its codes fall
/// in once, for their parameters and its codes; a scale or minimum frame computes its groups'
/// parameters from the source a block at a time.
fn frame_bytes<'s>(
    t: &SourceTensor<'s>,
    codec: Codec,
    importance: Option<&[f32]>,
    memo: &ParamsMemo,
    job: &Job,
) -> Result<Produced<'s>> {
    let (name, dtype, shape) = (&t.name, t.dtype, &t.shape[..]);
    let Some(source) = job.source.clone() else {
        let params = match memo.get(&job.groups) {
            Some(p) => p,
            None => quant_params_for(
                name,
                codec,
                dtype,
                shape,
                importance,
                &t.bytes,
                job.groups.clone(),
            )?,
        };
        let decoded = stream_range_from(dtype, shape, &params, &[], job.stream, job.range.clone());
        return Ok(Produced {
            decoded: Cow::Owned(decoded),
            source: None,
        });
    };
    if codec.is_lossless() {
        let s = t.bytes.read(source);
        return Ok(Produced {
            decoded: s.clone(),
            source: Some(s),
        });
    }
    // The groups hold every element of the frame: one read of them serves both.
    let span = group_source_range(codec, dtype, shape, &job.groups);
    debug_assert!(span.start <= source.start && source.end <= span.end);
    let bytes = t.bytes.read(span.clone());
    let (codes, params) = quantize_data_range(
        name,
        codec,
        dtype,
        shape,
        importance,
        job.range.clone(),
        &bytes,
        &mut Vec::new(),
    )?;
    memo.record(&params);
    let part = source.start - span.start..source.end - span.start;
    let source = match bytes {
        Cow::Borrowed(b) => Cow::Borrowed(&b[part]),
        Cow::Owned(v) if part == (0..v.len()) => Cow::Owned(v),
        Cow::Owned(v) => Cow::Owned(v[part].to_vec()),
    };
    Ok(Produced {
        decoded: Cow::Owned(codes),
        source: Some(source),
    })
}

/// Packs `input` into `out` as one container. `progress` is called after every window.
pub fn pack<W: Write>(
    input: &PackInput<'_>,
    opts: &PackOptions,
    out: &mut W,
    progress: &mut dyn FnMut(Progress),
) -> Result<PackSummary> {
    let mut sink = Some(Unsharded(out));
    let mut create = |_: u64| Ok(sink.take().expect("an unsharded pack opens one output"));
    let mut done = pack_core(input, opts, None, &mut create, progress)?;
    let (_, summary) = done.pop().expect("one container");
    Ok(summary)
}

/// Packs `input` as a shard set: `create(k)` opens shard `k` (from 1) when it is needed; each
/// shard stays within `max_shard_bytes`. Returns every shard's output and summary, in order.
/// A tensor that does not fit alone in a shard is an error naming it.
pub fn pack_sharded<O: ShardOut>(
    input: &PackInput<'_>,
    opts: &PackOptions,
    max_shard_bytes: u64,
    create: &mut dyn FnMut(u64) -> std::io::Result<O>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<(O, PackSummary)>> {
    pack_core(input, opts, Some(max_shard_bytes), create, progress)
}

fn pack_core<O: ShardOut>(
    input: &PackInput<'_>,
    opts: &PackOptions,
    limit: Option<u64>,
    create: &mut dyn FnMut(u64) -> std::io::Result<O>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<(O, PackSummary)>> {
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
    let keys: Vec<_> = order
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))
        .collect();
    check_sources(&order)?;
    let codecs = opts.policy.resolve(&keys)?;
    let importance_file = match &opts.importance {
        Some(imp) => Some(check_importance(imp, &keys, &codecs, &input.files)?),
        None => None,
    };
    let mut files: Vec<&(String, Vec<u8>)> =
        input.files.iter().chain(importance_file.as_ref()).collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let source_total: u64 = order.iter().map(|t| t.bytes.len() as u64).sum();
    // The lowest minor version whose features the file uses (spec section 1, "Versions").
    let codec_minor = codecs.iter().map(|c| c.min_minor()).max().unwrap_or(0);
    // Importance vectors (spec section 4.7) are a 1.4 feature: an older verifier would not
    // weight the search.
    let codec_minor = match importance_file {
        Some(_) => codec_minor.max(4),
        None => codec_minor,
    };
    let minor = match limit {
        Some(_) => codec_minor.max(crate::shard::MIN_MINOR),
        None => codec_minor,
    };
    let provenance = Provenance {
        tool: opts.tool.clone(),
        frame_size: opts.frame_size as u64,
        zstd_level: opts.zstd_level,
        source_files: input.source_files.clone(),
    };
    let base = Index {
        format: "cllm".into(),
        version: [layout::MAJOR, minor],
        alignment: layout::ALIGNMENT,
        tensors: Vec::new(),
        files: Vec::new(),
        policy: opts.policy.record(),
        provenance: provenance.clone(),
        set: None,
    };
    let base_json = serde_json::to_vec(&base)
        .map_err(|e| FormatError::IndexJson(e.to_string()))?
        .len() as u64;
    // The set record lists every shard; there are at most as many shards as tensors (+1 for
    // the files).
    let set_json = 256 + 96 * (order.len() as u64 + 1);
    let mut packer = Packer {
        opts,
        limit,
        minor,
        shards: Vec::new(),
        create,
        files,
        index_base: base_json + set_json,
        prog: Progress {
            source_total,
            ..Progress::default()
        },
        progress,
    };
    packer.open_shard()?;
    if packer.over_limit(0) {
        return Err(FormatError::Set(format!(
            "--max-shard-size {} bytes cannot hold even the first shard's embedded files and index",
            limit.unwrap_or(0)
        )));
    }
    for (t, &codec) in order.iter().zip(&codecs) {
        packer.tensor(t, codec)?;
    }
    let mut out = packer.finish(provenance)?;
    for (_, s) in &mut out {
        s.source_bytes = s.index.tensors.iter().map(|t| t.raw_bytes()).sum::<u64>();
    }
    Ok(out)
}

/// [`plan`]'s checks over tensors already sorted by name.
fn check_sources(order: &[&SourceTensor<'_>]) -> Result<()> {
    for w in order.windows(2) {
        if w[0].name == w[1].name {
            return Err(FormatError::tensor(
                &w[0].name,
                "appears twice in the source",
            ));
        }
    }
    for t in order {
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
    Ok(())
}

/// The embedded file of a calibration's vectors: those of the tensors packed with a searched fit
/// (`int4m`, `int4s`), which they weight; the others weight nothing and are left out. A vector
/// must have one weight per column of its tensor.
fn check_importance(
    imp: &Importance,
    tensors: &[(&str, crate::Dtype, &[u64])],
    codecs: &[Codec],
    files: &[(String, Vec<u8>)],
) -> Result<(String, Vec<u8>)> {
    if files.iter().any(|(n, _)| n == IMPORTANCE_FILE) {
        return Err(FormatError::File {
            name: IMPORTANCE_FILE.into(),
            msg: "the source already has a file of this name".into(),
        });
    }
    let mut used = Importance {
        about: imp.about.clone(),
        ..Importance::default()
    };
    for (&(name, _, shape), &codec) in tensors.iter().zip(codecs) {
        let Some(v) = imp.get(name) else { continue };
        if !codec.is_searched() {
            continue;
        }
        let cols = crate::tensor::rows_cols(shape).1;
        if v.len() != cols {
            return Err(FormatError::tensor(
                name,
                format!(
                    "importance vector of {} weights for {cols} columns",
                    v.len()
                ),
            ));
        }
        used.vectors.insert(name.to_string(), v.to_vec());
    }
    Ok((IMPORTANCE_FILE.to_string(), used.to_bytes()))
}

/// Float planes and quantized codes are coded for their symbol statistics; everything else at the
/// configured zstd level.
pub(crate) fn effort(codec: Codec, opts: &PackOptions) -> Effort {
    match codec {
        Codec::Raw | Codec::Zstd => Effort::Level(opts.zstd_level),
        Codec::ZstdBp
        | Codec::Int8Row
        | Codec::Int8Group { .. }
        | Codec::Int4 { .. }
        | Codec::Int4S { .. } => Effort::Entropy,
    }
}
