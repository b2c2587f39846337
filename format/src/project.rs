//! `cllm pack --dry-run`: each tensor's codec and its projected stored size, from encoding a
//! sample of its streams; reads only that sample, so a plan costs the same at any model size.

use rayon::prelude::*;

use crate::codec::Codec;
use crate::encoding::encode_frame;
use crate::error::Result;
use crate::pack::{effort, plan, PackInput, PackOptions};
use crate::source::SourceBytes;
use crate::tensor::{quant_params_from, source_range, stream_range_from};
use crate::Dtype;

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

/// Plans every tensor and projects its stored size by encoding a sample of each stream: the
/// streams of the tensor's first rows (about a frame of source), extrapolated to the whole tensor.
/// Reads only that sample of each source, so a dry run costs the same at any model size.
pub fn project(input: &PackInput<'_>, opts: &PackOptions) -> Result<Vec<Projection>> {
    let codecs = plan(&input.tensors, &opts.policy)?;
    input
        .tensors
        .par_iter()
        .zip(codecs)
        .map(|(t, codec)| {
            let specs = codec.streams(&t.name, t.dtype, &t.shape)?;
            let (rows, cols) = crate::tensor::rows_cols(&t.shape);
            let row_bytes = cols * t.dtype.size();
            let sample_rows = match t.shape.len() {
                0 | 1 => rows,
                _ => rows.min((opts.frame_size / row_bytes.max(1)).max(1)),
            };
            let mut sub_shape = t.shape.clone();
            if t.shape.len() >= 2 {
                sub_shape = vec![sample_rows as u64, cols as u64];
            }
            let part = t.bytes.read(0..sample_rows * row_bytes);
            let sub = SourceBytes::Slice(&part);
            let importance = opts.importance.as_ref().and_then(|i| i.get(&t.name));
            let params = quant_params_from(&t.name, codec, t.dtype, &sub_shape, importance, &sub)?;
            let sub_specs = codec.streams(&t.name, t.dtype, &sub_shape)?;
            let mut projected = 0u64;
            for (si, (spec, sub_spec)) in specs.iter().zip(&sub_specs).enumerate() {
                let n = sub_spec.len as usize;
                if n == 0 {
                    continue;
                }
                let src = source_range(codec, t.dtype, si, &(0..n)).map(|r| sub.read(r));
                let sample = stream_range_from(
                    t.dtype,
                    &sub_shape,
                    &params,
                    src.as_deref().unwrap_or(&[]),
                    si,
                    0..n,
                );
                let stored: usize = sample
                    .chunks(opts.frame_size - opts.frame_size % spec.elem_size)
                    .map(|f| encode_frame(spec.encoding, f, effort(codec, opts)).map(|e| e.len()))
                    .sum::<std::io::Result<usize>>()?;
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
