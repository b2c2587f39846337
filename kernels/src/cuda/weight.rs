//! A weight matrix resident on the GPU, in its container form (quantized ones stay quantized).

use std::sync::Arc;

use super::device::{CudaError, DeviceBuffer};
use super::launch::WDesc;

/// The storage form of a resident weight (spec/FORMAT.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuWeightKind {
    F32,
    Bf16,
    F16,
    /// `data`: i8 codes, `scales`: one f32 per row.
    Int8,
    /// `data`: i8 codes, `scales`: one f32 per group of `group_size` columns.
    Int8Group {
        group_size: usize,
    },
    /// `data`: packed nibbles, `scales` and `mins`: one f16 per group.
    Int4 {
        group_size: usize,
    },
}

/// The kinds' codes in `WDesc::kind` (`KIND_*` of common.cuh).
pub(crate) const KIND_F32: i32 = 0;
pub(crate) const KIND_BF16: i32 = 1;
pub(crate) const KIND_F16: i32 = 2;
pub(crate) const KIND_INT8: i32 = 3;
pub(crate) const KIND_INT4: i32 = 4;
pub(crate) const KIND_INT8G: i32 = 5;

impl GpuWeightKind {
    pub(crate) fn code(self) -> i32 {
        match self {
            GpuWeightKind::F32 => KIND_F32,
            GpuWeightKind::Bf16 => KIND_BF16,
            GpuWeightKind::F16 => KIND_F16,
            GpuWeightKind::Int8 => KIND_INT8,
            GpuWeightKind::Int4 { .. } => KIND_INT4,
            GpuWeightKind::Int8Group { .. } => KIND_INT8G,
        }
    }

    /// Elements per 16-byte load in the matrix-vector kernels.
    pub fn elements_per_vector(self) -> usize {
        match self {
            GpuWeightKind::F32 => 4,
            GpuWeightKind::Bf16 | GpuWeightKind::F16 => 8,
            GpuWeightKind::Int8 | GpuWeightKind::Int8Group { .. } => 16,
            GpuWeightKind::Int4 { .. } => 32,
        }
    }

    pub fn name(self) -> String {
        match self {
            GpuWeightKind::F32 => "f32".into(),
            GpuWeightKind::Bf16 => "bf16".into(),
            GpuWeightKind::F16 => "f16".into(),
            GpuWeightKind::Int8 => "int8".into(),
            GpuWeightKind::Int4 { group_size } => format!("int4-g{group_size}"),
            GpuWeightKind::Int8Group { group_size } => format!("int8-g{group_size}"),
        }
    }
}

/// A `rows x cols` weight in device memory. The pointers point into a buffer that `owner`
/// keeps alive (the loader's arena).
#[derive(Clone)]
pub struct GpuWeight {
    pub rows: usize,
    pub cols: usize,
    pub kind: GpuWeightKind,
    pub data: u64,
    pub scales: u64,
    pub mins: u64,
    /// Bytes resident (payload plus scales and mins).
    pub bytes: u64,
    pub owner: Arc<DeviceBuffer>,
}

impl std::fmt::Debug for GpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuWeight({}x{} {}, {} bytes)",
            self.rows,
            self.cols,
            self.kind.name(),
            self.bytes
        )
    }
}

impl GpuWeight {
    /// The kernels' descriptor, with an optional f32 bias (device pointer, 0 for none).
    pub fn desc(&self, bias: u64) -> WDesc {
        let group = match self.kind {
            GpuWeightKind::Int4 { group_size } | GpuWeightKind::Int8Group { group_size } => {
                group_size as i32
            }
            _ => 0,
        };
        WDesc {
            data: self.data,
            scales: self.scales,
            mins: self.mins,
            bias,
            kind: self.kind.code(),
            rows: self.rows as i32,
            cols: self.cols as i32,
            group,
        }
    }

    /// Whether the matrix-vector kernels can take this weight: whole 16-byte vectors per row,
    /// int4 and int8g groups of 32, 64 or 128 columns dividing the row (the kernels find a
    /// vector's group with a shift), sizes within `i32`.
    pub fn check_gemv(&self, name: &str) -> Result<(), CudaError> {
        let epv = self.kind.elements_per_vector();
        if !self.cols.is_multiple_of(epv) {
            return Err(CudaError::Unsupported(format!(
                "tensor {name}: {} columns is not a multiple of {epv} ({} rows must be whole 16-byte vectors on the GPU)",
                self.cols,
                self.kind.name()
            )));
        }
        if let GpuWeightKind::Int4 { group_size } | GpuWeightKind::Int8Group { group_size } =
            self.kind
        {
            if !matches!(group_size, 32 | 64 | 128) || !self.cols.is_multiple_of(group_size) {
                let form = match self.kind {
                    GpuWeightKind::Int4 { .. } => "int4",
                    _ => "int8g",
                };
                return Err(CudaError::Unsupported(format!(
                    "tensor {name}: {form} group size {group_size} with {} columns is not supported on the GPU",
                    self.cols
                )));
            }
        }
        if self.rows > i32::MAX as usize || self.cols > i32::MAX as usize {
            return Err(CudaError::Unsupported(format!("tensor {name}: too large")));
        }
        Ok(())
    }
}

impl GpuWeight {
    /// Copies a CPU [`Weight`](crate::Weight) to the GPU in the same storage form (tests, and
    /// models built in memory).
    pub fn upload(gpu: &Arc<super::Gpu>, w: &crate::Weight) -> Result<GpuWeight, CudaError> {
        use crate::WeightData;
        fn bytes<T: Copy>(v: &[T]) -> &[u8] {
            // SAFETY: plain-old-data values viewed as bytes.
            unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
        }
        let parts: Vec<&[u8]> = match &w.data {
            WeightData::F32(v) => vec![bytes(v)],
            WeightData::Bf16(v) => vec![bytes(v)],
            WeightData::F16(v) => vec![bytes(v)],
            WeightData::Int8 { q, scales } | WeightData::Int8Group { q, scales, .. } => {
                vec![bytes(q), bytes(scales)]
            }
            WeightData::Int4 {
                packed,
                scales,
                mins,
                ..
            } => vec![bytes(packed), bytes(scales), bytes(mins)],
        };
        let kind = match &w.data {
            WeightData::F32(_) => GpuWeightKind::F32,
            WeightData::Bf16(_) => GpuWeightKind::Bf16,
            WeightData::F16(_) => GpuWeightKind::F16,
            WeightData::Int8 { .. } => GpuWeightKind::Int8,
            WeightData::Int8Group { group_size, .. } => GpuWeightKind::Int8Group {
                group_size: *group_size,
            },
            WeightData::Int4 { group_size, .. } => GpuWeightKind::Int4 {
                group_size: *group_size,
            },
        };
        let mut offsets = Vec::new();
        let mut at = 0usize;
        for p in &parts {
            offsets.push(at);
            at = (at + p.len()).div_ceil(256) * 256;
        }
        let buf = Arc::new(gpu.alloc("a weight", at.max(256))?);
        for (p, &o) in parts.iter().zip(&offsets) {
            gpu.htod(buf.ptr() + o as u64, p)?;
        }
        let ptr = |k: usize| offsets.get(k).map_or(0, |&o| buf.ptr() + o as u64);
        Ok(GpuWeight {
            rows: w.rows,
            cols: w.cols,
            kind,
            data: ptr(0),
            scales: ptr(1),
            mins: ptr(2),
            bytes: parts.iter().map(|p| p.len() as u64).sum(),
            owner: buf,
        })
    }
}
