//! Full verification of a container's bytes (spec/FORMAT.md section 5): every frame's checksum and
//! length, every stream's hash, every padding byte, lossless payloads against their source hash.
//! Frames are checked in parallel a bounded window at a time; memory never holds a whole tensor.

use rayon::prelude::*;

use crate::codec::Encoding;
use crate::error::FormatError;
use crate::hash::Hasher128;
use crate::index::FrameEntry;
use crate::reader::Container;

/// What verification found. `failures` is empty when every check holds.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub tensors: usize,
    pub files: usize,
    pub frames: usize,
    pub stored_bytes: u64,
    pub decoded_bytes: u64,
    pub failures: Vec<String>,
}

struct StreamRef<'c> {
    owner: String,
    role: &'c str,
    frames: &'c [FrameEntry],
    hash: &'c str,
    encoding: Encoding,
    /// For a tensor's data stream: the tensor, whose source hash a lossless payload must equal.
    data_of: Option<usize>,
}

/// Checks every byte of the container. `window_bytes` bounds the decoded bytes in flight.
pub fn verify(c: &Container<'_>, window_bytes: usize) -> VerifyReport {
    verify_parts(c, window_bytes, true)
}

/// [`verify`] without the tensors' streams: the padding and the embedded files, for a caller
/// that decodes every tensor itself ([`Container::decode_tensor`] checks each frame and stream
/// hash, [`lossless_source_failure`] the rest).
pub fn verify_except_tensors(c: &Container<'_>, window_bytes: usize) -> VerifyReport {
    verify_parts(c, window_bytes, false)
}

/// For a lossless tensor whose streams decoded to their stored hashes: the failure, if its
/// payload hash differs from the hash of the source it was packed from.
pub fn lossless_source_failure(c: &Container<'_>, tensor: usize) -> Option<String> {
    let t = &c.tensors()[tensor];
    let data = t.streams.first()?;
    (c.codec(tensor).is_lossless() && data.xxh3 != t.source_xxh3).then(|| {
        format!(
            "{}: lossless payload hash {} differs from its source hash {}",
            crate::reader::tensor_owner(&t.name),
            data.xxh3,
            t.source_xxh3
        )
    })
}

fn verify_parts(c: &Container<'_>, window_bytes: usize, tensors: bool) -> VerifyReport {
    let mut report = VerifyReport {
        tensors: c.tensors().len(),
        files: c.index.files.len(),
        ..VerifyReport::default()
    };
    for (start, end) in c.padding_ranges() {
        if c.bytes()[start as usize..end as usize]
            .iter()
            .any(|&b| b != 0)
        {
            report
                .failures
                .push(FormatError::Padding { start, end }.to_string());
        }
    }
    // The padding checks touched a page at every frame boundary, and the kernel mapped its
    // neighbours with it: hand the whole file back before the frames are read.
    c.release(0, c.bytes().len() as u64);
    let mut streams = Vec::new();
    for (ti, t) in c.tensors().iter().enumerate().filter(|_| tensors) {
        for (si, (s, spec)) in t.streams.iter().zip(c.stream_specs(ti)).enumerate() {
            streams.push(StreamRef {
                owner: crate::reader::tensor_owner(&t.name),
                role: &s.role,
                frames: &s.frames,
                hash: &s.xxh3,
                encoding: spec.encoding,
                data_of: (si == 0).then_some(ti),
            });
        }
    }
    for f in &c.index.files {
        streams.push(StreamRef {
            owner: format!("file {}", f.name),
            role: "data",
            frames: &f.frames,
            hash: &f.xxh3,
            encoding: Encoding::Zstd,
            data_of: None,
        });
    }
    for s in &streams {
        let mut hasher = Hasher128::default();
        let mut failed = false;
        let mut start = 0;
        while start < s.frames.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < s.frames.len()
                && (end == start || bytes + s.frames[end].decoded <= window_bytes as u64)
            {
                bytes += s.frames[end].decoded;
                end += 1;
            }
            let decoded: Vec<Result<Vec<u8>, FormatError>> = (start..end)
                .into_par_iter()
                .map_init(Vec::new, |scratch, i| {
                    let f = &s.frames[i];
                    let mut out = vec![0u8; f.decoded as usize];
                    c.decode_frame(&s.owner, s.role, i, f, s.encoding, &mut out, scratch)
                        .map(|_| out)
                })
                .collect();
            for (i, d) in (start..end).zip(decoded) {
                report.frames += 1;
                report.stored_bytes += s.frames[i].stored;
                match d {
                    Ok(bytes) => {
                        report.decoded_bytes += bytes.len() as u64;
                        hasher.update(&bytes);
                    }
                    Err(e) => {
                        failed = true;
                        report.failures.push(e.to_string());
                    }
                }
            }
            start = end;
        }
        // Everything up to this stream's end has been read (streams are checked in file order):
        // hand it all back, including pages the kernel mapped around earlier faults.
        if let Some(last) = s.frames.last() {
            c.release(0, last.offset + last.stored);
        }
        if failed {
            continue;
        }
        let computed = hasher.hex();
        if computed != s.hash {
            report.failures.push(
                FormatError::StreamHash {
                    owner: s.owner.clone(),
                    role: s.role.to_string(),
                    stored: s.hash.to_string(),
                    computed,
                }
                .to_string(),
            );
        } else if let Some(f) = s.data_of.and_then(|ti| lossless_source_failure(c, ti)) {
            report.failures.push(f);
        }
    }
    report
}
