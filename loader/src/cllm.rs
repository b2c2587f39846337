//! Weights from a `.cllm` container into CPU memory. Quantized tensors stay quantized: their
//! payload and scales become `WeightData::Int8Row`/`Int8Group`/`Int4` as they are (an `int4s`
//! tensor's super-block codes become `Int4`'s per-group f16 parameters), nothing is expanded to
//! floats.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use cllm_format::{Codec, Container, Dtype, Limits, WeightForm};
use cllm_kernels::{Weight, WeightData};
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::LoadError;

/// A container file, memory-mapped.
pub struct CllmFile {
    path: PathBuf,
    map: Mmap,
}

impl CllmFile {
    pub fn open(path: &Path) -> Result<CllmFile, LoadError> {
        let f = File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: read-only map; a file changed underneath is caught by the checksums.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| LoadError::io(path, e))?;
        Ok(CllmFile {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Opens the container: reads only preamble, index and footer.
    pub fn container(&self) -> Result<Container<'_>, LoadError> {
        Container::open(&self.map, &Limits::default()).map_err(|e| LoadError::Format {
            path: self.path.clone(),
            source: e,
        })
    }
}

fn u16s(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

/// Turns a tensor's decoded streams into the CPU weight form.
pub fn weight_from_streams(
    name: &str,
    dtype: Dtype,
    shape: &[u64],
    codec: Codec,
    mut streams: Vec<Vec<u8>>,
) -> Result<Weight, LoadError> {
    let (rows, cols) = cllm_format::tensor::rows_cols(shape);
    let form = WeightForm::of(codec, dtype).ok_or_else(|| LoadError::UnsupportedDtype {
        tensor: name.to_string(),
        dtype,
    })?;
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let codes = |b: Vec<u8>| -> Vec<i8> { b.into_iter().map(|b| b as i8).collect() };
    let data = match form {
        WeightForm::F32 => WeightData::F32(f32s(&streams[0])),
        WeightForm::Bf16 => WeightData::Bf16(u16s(&streams[0]).map(bf16::from_bits).collect()),
        WeightForm::F16 => WeightData::F16(u16s(&streams[0]).map(f16::from_bits).collect()),
        WeightForm::Int8Row => WeightData::Int8Row {
            scales: f32s(&streams[1]),
            q: codes(std::mem::take(&mut streams[0])),
        },
        WeightForm::Int8Group { group_size } => WeightData::Int8Group {
            scales: f32s(&streams[1]),
            q: codes(std::mem::take(&mut streams[0])),
            group_size: group_size as usize,
        },
        WeightForm::Int4 { group_size } => {
            // `int4s` expands exactly to `int4`'s per-group parameters (spec section 4.6).
            let (scales, mins) = cllm_format::tensor::int4_params(codec, shape, &streams[1..])
                .expect("an int4 form comes from an int4 codec");
            WeightData::Int4 {
                scales,
                mins,
                packed: std::mem::take(&mut streams[0]),
                group_size: group_size as usize,
            }
        }
    };
    Ok(Weight { rows, cols, data })
}

/// Decodes every tensor (in parallel) into CPU weights, checking every frame and stream hash.
pub fn load_weights(p: &crate::packed::Packed) -> Result<HashMap<String, Weight>, LoadError> {
    (0..p.len())
        .into_par_iter()
        .map(|i| {
            let t = p.tensor(i);
            let streams = p.decode_tensor(i)?;
            let w = weight_from_streams(&t.name, t.dtype, &t.shape, p.codec(i), streams)?;
            Ok((t.name.clone(), w))
        })
        .collect()
}
