//! Opening a container: the framing, the index and every structural rule of spec/FORMAT.md,
//! checked before any frame is touched; then decoding frames, streams, tensors and files on demand.

use std::sync::Arc;

use crate::codec::{Codec, Encoding, StreamSpec};
use crate::encoding::decode_frame_into;
use crate::error::{FormatError, Result};
use crate::index::{FileEntry, FrameEntry, Index, StreamEntry, TensorEntry};
use crate::layout::{self, align_up, Framing, DATA_START};
use crate::limits::Limits;

/// Bytes a container can own: typically a memory map, shared between the shards of a set and
/// the threads that decode them.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Called with `(offset, len)` once a frame's stored bytes have been read, so that the owner of a
/// memory map can hand those pages back: a reader's resident memory then stays bounded by what is
/// in flight, not by the size of the file.
pub type Release = Arc<dyn Fn(u64, u64) + Send + Sync>;

enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Shared(SharedBytes),
}

/// An opened, structurally valid container over the file's bytes (typically a memory map).
/// Opening reads only the preamble, the footer and the index.
pub struct Container<'a> {
    bytes: Bytes<'a>,
    release: Option<Release>,
    pub framing: Framing,
    pub index: Index,
    codecs: Vec<Codec>,
    specs: Vec<Vec<StreamSpec>>,
}

/// Who a stream belongs to, for error messages: "tensor X" or "file Y".
pub fn tensor_owner(name: &str) -> String {
    format!("tensor {name}")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn valid_file_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Walks frames in file order, checking each against the spec's layout rules.
struct FrameCursor<'l> {
    next: u64,
    limits: &'l Limits,
}

impl FrameCursor<'_> {
    fn check_stream(
        &mut self,
        owner: &str,
        role: &str,
        frames: &[FrameEntry],
        len: u64,
        elem_size: usize,
        encoding: Encoding,
    ) -> Result<()> {
        let bad = |frame: usize, msg: String| FormatError::Frame {
            owner: owner.to_string(),
            role: role.to_string(),
            frame,
            msg,
        };
        if frames.len() > self.limits.max_frames_per_stream {
            return Err(bad(0, format!("{} frames exceed the limit", frames.len())));
        }
        let mut total = 0u64;
        for (i, f) in frames.iter().enumerate() {
            if f.decoded == 0 || f.decoded > self.limits.max_frame_decoded {
                return Err(bad(
                    i,
                    format!(
                        "decoded length {} outside 1..={}",
                        f.decoded, self.limits.max_frame_decoded
                    ),
                ));
            }
            if f.decoded % elem_size as u64 != 0 {
                return Err(bad(
                    i,
                    format!(
                        "decoded length {} is not whole {elem_size}-byte elements",
                        f.decoded
                    ),
                ));
            }
            let max_stored = f.decoded + f.decoded / 128 + 4096;
            if f.stored == 0 || f.stored > max_stored {
                return Err(bad(
                    i,
                    format!("stored length {} outside 1..={max_stored}", f.stored),
                ));
            }
            if encoding == Encoding::Raw && f.stored != f.decoded {
                return Err(bad(
                    i,
                    "raw frame must store exactly its decoded bytes".into(),
                ));
            }
            if f.offset != self.next {
                return Err(bad(
                    i,
                    format!(
                        "offset {} is not where the previous frame ends ({}): frames overlap, leave gaps or are out of order",
                        f.offset, self.next
                    ),
                ));
            }
            let end = f
                .offset
                .checked_add(f.stored)
                .and_then(align_up)
                .ok_or_else(|| bad(i, "offset + length overflows".into()))?;
            self.next = end;
            total = total
                .checked_add(f.decoded)
                .ok_or_else(|| bad(i, "decoded lengths overflow".into()))?;
        }
        if total != len {
            return Err(bad(
                frames.len(),
                format!("frames decode to {total} bytes, stream length is {len}"),
            ));
        }
        Ok(())
    }
}

impl Container<'static> {
    /// [`Container::open`] over bytes the container keeps (a memory map shared with others).
    pub fn open_shared(bytes: SharedBytes, limits: &Limits) -> Result<Container<'static>> {
        Self::open_bytes(Bytes::Shared(bytes), limits)
    }
}

impl<'a> Container<'a> {
    /// Checks framing, index and layout. Touches only the first 16 bytes, the index and the footer.
    pub fn open(bytes: &'a [u8], limits: &Limits) -> Result<Container<'a>> {
        Self::open_bytes(Bytes::Borrowed(bytes), limits)
    }

    fn open_bytes(bytes: Bytes<'a>, limits: &Limits) -> Result<Container<'a>> {
        let all: &[u8] = match &bytes {
            Bytes::Borrowed(b) => b,
            Bytes::Shared(b) => (**b).as_ref(),
        };
        let framing = layout::read_framing(all, limits.max_index_len)?;
        let raw = &all
            [framing.index_offset as usize..(framing.index_offset + framing.index_length) as usize];
        let index: Index =
            serde_json::from_slice(raw).map_err(|e| FormatError::IndexJson(e.to_string()))?;
        let (codecs, specs) = validate(&index, &framing, limits)?;
        Ok(Container {
            bytes,
            release: None,
            framing,
            index,
            codecs,
            specs,
        })
    }

    /// Hands every frame's stored bytes to `release` once they have been read.
    pub fn with_release(mut self, release: Release) -> Self {
        // The preamble, index and footer were read by `open`: hand them back now.
        release(0, layout::PREAMBLE_LEN);
        release(
            self.framing.index_offset,
            self.framing.index_length + layout::FOOTER_LEN,
        );
        self.release = Some(release);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Borrowed(b) => b,
            Bytes::Shared(b) => (**b).as_ref(),
        }
    }

    /// Tells the release hook, if any, that `len` bytes at `offset` have been read.
    pub fn release(&self, offset: u64, len: u64) {
        if let Some(r) = &self.release {
            r(offset, len);
        }
    }

    pub fn tensors(&self) -> &[TensorEntry] {
        &self.index.tensors
    }

    pub fn codec(&self, tensor: usize) -> Codec {
        self.codecs[tensor]
    }

    pub fn stream_specs(&self, tensor: usize) -> &[StreamSpec] {
        &self.specs[tensor]
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.index
            .tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
    }

    /// The stored bytes of a frame; in range, since `open` checked the layout.
    pub fn frame_bytes(&self, f: &FrameEntry) -> &[u8] {
        &self.bytes()[f.offset as usize..(f.offset + f.stored) as usize]
    }

    /// Checks a frame's checksum and decodes it into `out` (exactly `f.decoded` bytes).
    pub fn decode_frame(
        &self,
        owner: &str,
        role: &str,
        i: usize,
        f: &FrameEntry,
        encoding: Encoding,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        let stored = self.frame_bytes(f);
        let err = |msg: String| FormatError::Frame {
            owner: owner.to_string(),
            role: role.to_string(),
            frame: i,
            msg,
        };
        let sum = xxhash_rust::xxh3::xxh3_64(stored);
        if sum != f.xxh3 {
            return Err(err(format!(
                "checksum {sum:016x} != {:016x} at offset {} (corrupted)",
                f.xxh3, f.offset
            )));
        }
        let decoded = decode_frame_into(encoding, stored, out, scratch);
        self.release(f.offset, f.stored);
        decoded.map_err(|e| err(e.to_string()))
    }

    /// Decodes a whole stream and checks its hash. Allocates the stream's length.
    pub fn decode_stream(
        &self,
        owner: &str,
        stream: &StreamEntry,
        encoding: Encoding,
    ) -> Result<Vec<u8>> {
        self.decode_frames(
            owner,
            &stream.role,
            &stream.frames,
            stream.len,
            &stream.xxh3,
            encoding,
        )
    }

    fn decode_frames(
        &self,
        owner: &str,
        role: &str,
        frames: &[FrameEntry],
        len: u64,
        hash: &str,
        encoding: Encoding,
    ) -> Result<Vec<u8>> {
        // The output grows a frame at a time: a stream that declares gigabytes but whose first
        // frame is bad fails at that frame, not in one allocation of the declared length.
        let mut out: Vec<u8> = Vec::new();
        let mut scratch = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let n = f.decoded as usize;
            let start = out.len();
            out.try_reserve(n).map_err(|_| FormatError::Frame {
                owner: owner.to_string(),
                role: role.to_string(),
                frame: i,
                msg: format!("cannot allocate {n} more bytes (stream declares {len})"),
            })?;
            out.resize(start + n, 0);
            self.decode_frame(owner, role, i, f, encoding, &mut out[start..], &mut scratch)?;
        }
        let computed = crate::hash::xxh3_128_hex(&out);
        if computed != hash {
            return Err(FormatError::StreamHash {
                owner: owner.to_string(),
                role: role.to_string(),
                stored: hash.to_string(),
                computed,
            });
        }
        Ok(out)
    }

    /// Decodes stream `stream` of tensor `tensor` one frame at a time, handing each frame's
    /// decoded bytes to `each` in order; the stream hash is checked after the last frame, so a
    /// caller that writes the chunks out must discard what it wrote when this fails. Memory holds
    /// one frame, whatever the tensor's size.
    pub fn stream_chunks<E: From<FormatError>>(
        &self,
        tensor: usize,
        stream: usize,
        mut each: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let t = &self.index.tensors[tensor];
        let owner = tensor_owner(&t.name);
        let s = &t.streams[stream];
        let encoding = self.specs[tensor][stream].encoding;
        let mut hasher = crate::hash::Hasher128::default();
        let (mut buf, mut scratch) = (Vec::new(), Vec::new());
        for (i, f) in s.frames.iter().enumerate() {
            buf.clear();
            buf.resize(f.decoded as usize, 0);
            self.decode_frame(&owner, &s.role, i, f, encoding, &mut buf, &mut scratch)?;
            hasher.update(&buf);
            each(&buf)?;
        }
        // Readers walk tensors in file order: hand back everything up to here, including pages
        // the kernel mapped around earlier faults (a page re-read is the only cost if not).
        if let Some(last) = s.frames.last() {
            self.release(0, last.offset + last.stored);
        }
        let computed = hasher.hex();
        if computed != s.xxh3 {
            return Err(FormatError::StreamHash {
                owner,
                role: s.role.clone(),
                stored: s.xxh3.clone(),
                computed,
            }
            .into());
        }
        Ok(())
    }

    /// Tensor `tensor` in its source dtype (as [`Container::tensor_source_bytes`]), handed to
    /// `each` a frame of the data stream at a time: memory holds one frame and, for a quantized
    /// tensor, its scales, never the whole tensor.
    pub fn source_chunks<E: From<FormatError>>(
        &self,
        tensor: usize,
        mut each: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let codec = self.codecs[tensor];
        if codec.is_lossless() {
            return self.stream_chunks(tensor, 0, each);
        }
        let t = &self.index.tensors[tensor];
        let owner = tensor_owner(&t.name);
        let params: Vec<Vec<u8>> = (1..t.streams.len())
            .map(|s| self.decode_stream(&owner, &t.streams[s], self.specs[tensor][s].encoding))
            .collect::<Result<_>>()?;
        let mut at = 0usize;
        let mut out = Vec::new();
        self.stream_chunks(tensor, 0, |codes: &[u8]| {
            let values = crate::tensor::dequantize_range(codec, &t.shape, codes, at, &params);
            at += codes.len();
            out.clear();
            crate::quant::from_f32(t.dtype, &values, &mut out);
            each(&out)
        })
    }

    /// Decodes every stream of a tensor: its payload as stored (quantized tensors stay quantized).
    pub fn decode_tensor(&self, tensor: usize) -> Result<Vec<Vec<u8>>> {
        let t = &self.index.tensors[tensor];
        let owner = tensor_owner(&t.name);
        t.streams
            .iter()
            .zip(&self.specs[tensor])
            .map(|(s, spec)| self.decode_stream(&owner, s, spec.encoding))
            .collect()
    }

    /// The tensor in its source dtype: lossless tensors exactly as packed, quantized ones
    /// dequantized (spec sections 4.2, 4.3) and rounded to the source dtype.
    pub fn tensor_source_bytes(&self, tensor: usize) -> Result<Vec<u8>> {
        let streams = self.decode_tensor(tensor)?;
        let t = &self.index.tensors[tensor];
        Ok(crate::tensor::to_source_bytes(
            t,
            self.codecs[tensor],
            streams,
        ))
    }

    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.index.files.iter().find(|f| f.name == name)
    }

    /// An embedded file's bytes, checked.
    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.file(name) else {
            return Ok(None);
        };
        let owner = format!("file {name}");
        self.decode_frames(&owner, "data", &f.frames, f.len, &f.xxh3, Encoding::Zstd)
            .map(Some)
    }

    /// Each padding range of the file: 16..64, between frames, before the index.
    pub fn padding_ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let mut prev_end = layout::PREAMBLE_LEN;
        let frames = self
            .index
            .tensors
            .iter()
            .flat_map(|t| t.streams.iter().flat_map(|s| s.frames.iter()))
            .chain(self.index.files.iter().flat_map(|f| f.frames.iter()));
        for f in frames {
            if f.offset > prev_end {
                ranges.push((prev_end, f.offset));
            }
            prev_end = f.offset + f.stored;
        }
        if self.framing.index_offset > prev_end {
            ranges.push((prev_end, self.framing.index_offset));
        }
        ranges
    }
}

/// Every rule JSON cannot express: names, codecs, lengths, hashes' spelling, frame layout.
fn validate(
    index: &Index,
    framing: &Framing,
    limits: &Limits,
) -> Result<(Vec<Codec>, Vec<Vec<StreamSpec>>)> {
    if index.format != "cllm" {
        return Err(FormatError::Index(format!(
            "format is '{}', not 'cllm'",
            index.format
        )));
    }
    if index.version != [framing.major, framing.minor] {
        return Err(FormatError::VersionMismatch {
            index: index.version,
            preamble: [framing.major, framing.minor],
        });
    }
    if index.alignment != layout::ALIGNMENT {
        return Err(FormatError::Index(format!(
            "alignment {} is not {}",
            index.alignment,
            layout::ALIGNMENT
        )));
    }
    if index.set.is_some() && framing.minor < crate::shard::MIN_MINOR {
        return Err(FormatError::Index(format!(
            "a set record needs format 1.{}, the file says 1.{}",
            crate::shard::MIN_MINOR,
            framing.minor
        )));
    }
    if let Some(set) = &index.set {
        // The record's own consistency (manifest, id, this shard's digest) is checked here, so
        // that every shard verifies alone; belonging to the rest of the set is the set opener's.
        crate::shard::check_record(index)
            .map_err(|e| FormatError::Set(format!("shard {} of {}: {e}", set.shard, set.count)))?;
    }
    if index.tensors.len() > limits.max_tensors {
        return Err(FormatError::Index(format!(
            "{} tensors exceed the limit of {}",
            index.tensors.len(),
            limits.max_tensors
        )));
    }
    let mut cursor = FrameCursor {
        next: DATA_START,
        limits,
    };
    let minor = framing.minor;
    let mut codecs = Vec::with_capacity(index.tensors.len());
    let mut all_specs = Vec::with_capacity(index.tensors.len());
    let mut prev: Option<&str> = None;
    for t in &index.tensors {
        let name = t.name.as_str();
        if name.is_empty() || name.len() > limits.max_name_len {
            return Err(FormatError::Index(format!(
                "tensor name of {} bytes (1..={} allowed)",
                name.len(),
                limits.max_name_len
            )));
        }
        if let Some(p) = prev {
            if p >= name {
                return Err(FormatError::tensor(
                    name,
                    if p == name {
                        "duplicate tensor name".to_string()
                    } else {
                        format!("tensors are not sorted by name ('{p}' comes before it)")
                    },
                ));
            }
        }
        prev = Some(name);
        if t.shape.len() > limits.max_dims {
            return Err(FormatError::tensor(
                name,
                format!(
                    "{} dimensions exceed the limit of {}",
                    t.shape.len(),
                    limits.max_dims
                ),
            ));
        }
        let codec = Codec::from_id(&t.codec, t.group_size).ok_or_else(|| {
            if matches!(t.codec.as_str(), "int4" | "int4m" | "int4s" | "int8g") {
                FormatError::tensor(name, format!("{} without group_size", t.codec))
            } else {
                FormatError::UnknownCodec {
                    tensor: name.to_string(),
                    codec: t.codec.clone(),
                }
            }
        })?;
        if t.group_size.is_some() && codec.group_size().is_none() {
            return Err(FormatError::tensor(
                name,
                format!("group_size on codec {}, which has no groups", t.codec),
            ));
        }
        if codec.min_minor() > minor {
            return Err(FormatError::tensor(
                name,
                format!(
                    "codec {} needs format 1.{}, the file says 1.{minor}",
                    t.codec,
                    codec.min_minor()
                ),
            ));
        }
        let specs = codec.streams(name, t.dtype, &t.shape)?;
        if !is_hex(&t.source_xxh3, 32) {
            return Err(FormatError::tensor(
                name,
                "source_xxh3 is not 32 lowercase hex digits",
            ));
        }
        if t.streams.len() != specs.len() {
            return Err(FormatError::tensor(
                name,
                format!(
                    "codec {} has {} streams, index lists {}",
                    codec,
                    specs.len(),
                    t.streams.len()
                ),
            ));
        }
        let owner = tensor_owner(name);
        for (s, spec) in t.streams.iter().zip(&specs) {
            if s.role != spec.role {
                return Err(FormatError::tensor(
                    name,
                    format!(
                        "stream '{}' where codec {} has '{}'",
                        s.role, codec, spec.role
                    ),
                ));
            }
            if s.len != spec.len {
                return Err(FormatError::tensor(
                    name,
                    format!(
                        "stream '{}' is {} bytes; dtype {} and shape {:?} make it {}",
                        s.role, s.len, t.dtype, t.shape, spec.len
                    ),
                ));
            }
            if !is_hex(&s.xxh3, 32) {
                return Err(FormatError::tensor(
                    name,
                    format!("stream '{}' hash is not 32 lowercase hex digits", s.role),
                ));
            }
            cursor.check_stream(
                &owner,
                &s.role,
                &s.frames,
                s.len,
                spec.elem_size,
                spec.encoding,
            )?;
        }
        codecs.push(codec);
        all_specs.push(specs);
    }
    if index.files.len() > limits.max_files {
        return Err(FormatError::Index(format!(
            "{} embedded files exceed the limit of {}",
            index.files.len(),
            limits.max_files
        )));
    }
    let mut names = std::collections::HashSet::new();
    for f in &index.files {
        let err = |msg: &str| FormatError::File {
            name: f.name.clone(),
            msg: msg.to_string(),
        };
        if !valid_file_name(&f.name) {
            return Err(err(
                "not a plain file name ([A-Za-z0-9._-], not starting with '.')",
            ));
        }
        if !names.insert(f.name.as_str()) {
            return Err(err("embedded twice"));
        }
        if f.len > limits.max_file_len {
            return Err(err("larger than the embedded-file limit"));
        }
        if !is_hex(&f.xxh3, 32) {
            return Err(err("hash is not 32 lowercase hex digits"));
        }
        cursor.check_stream(
            &format!("file {}", f.name),
            "data",
            &f.frames,
            f.len,
            1,
            Encoding::Zstd,
        )?;
    }
    if !names.contains("config.json") {
        return Err(FormatError::Index("no embedded config.json".into()));
    }
    if cursor.next != framing.index_offset {
        return Err(FormatError::Index(format!(
            "frames end at {} but the index starts at {}",
            cursor.next, framing.index_offset
        )));
    }
    Ok((codecs, all_specs))
}
