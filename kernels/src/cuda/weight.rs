//! A weight matrix resident on the GPU, in its container form (quantized ones stay quantized).

use std::sync::Arc;

use cllm_cuda::{CudaError, DeviceBuffer, Gpu};
use cllm_format::WeightForm;

/// `struct WDesc` of common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WDesc {
    pub data: u64,
    pub scales: u64,
    pub mins: u64,
    pub bias: u64,
    /// The weight's form, [`WeightForm::code`].
    pub kind: i32,
    pub rows: i32,
    pub cols: i32,
    pub group: i32,
}

impl WDesc {
    /// The weight's form (its group size in `group`).
    pub fn form(&self) -> Option<WeightForm> {
        WeightForm::from_code(usize::try_from(self.kind).ok()?, self.group.max(0) as u32)
    }
}

// The .cu struct has this size.
const _: () = assert!(std::mem::size_of::<WDesc>() == 48);

/// Elements per 16-byte load in the GEMV kernels.
pub fn elements_per_vector(form: WeightForm) -> usize {
    match form {
        WeightForm::F32 => 4,
        WeightForm::Bf16 | WeightForm::F16 => 8,
        WeightForm::Int8Row | WeightForm::Int8Group { .. } => 16,
        WeightForm::Int4 { .. } => 32,
    }
}

/// A `rows x cols` weight in device memory. The pointers point into a buffer that `owner`
/// keeps alive (the loader's arena).
#[derive(Clone)]
pub struct GpuWeight {
    pub rows: usize,
    pub cols: usize,
    pub form: WeightForm,
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
            self.form.name(),
            self.bytes
        )
    }
}

impl GpuWeight {
    /// The kernels' descriptor, with an optional f32 bias (device pointer, 0 for none).
    pub fn desc(&self, bias: u64) -> WDesc {
        WDesc {
            data: self.data,
            scales: self.scales,
            mins: self.mins,
            bias,
            kind: self.form.code() as i32,
            rows: self.rows as i32,
            cols: self.cols as i32,
            group: self.form.group_size().unwrap_or(0) as i32,
        }
    }

    /// Rows `from..to` of the weight as a weight of its own, on the same device memory (the
    /// parts of a fused projection: every form keeps its rows, and their scales, contiguous).
    /// Its `bytes` are zero: the whole weight holds them.
    pub fn rows(&self, from: usize, to: usize) -> Result<GpuWeight, CudaError> {
        if from > to || to > self.rows {
            return Err(CudaError::Unsupported(format!(
                "rows {from}..{to} of a {}-row weight",
                self.rows
            )));
        }
        let cols = self.cols as u64;
        let (data_row, scale_row, min_row) = match self.form {
            WeightForm::F32 => (cols * 4, 0, 0),
            WeightForm::Bf16 | WeightForm::F16 => (cols * 2, 0, 0),
            WeightForm::Int8Row => (cols, 4, 0),
            WeightForm::Int8Group { group_size } => (cols, cols.div_ceil(group_size as u64) * 4, 0),
            WeightForm::Int4 { group_size } => {
                let groups = cols.div_ceil(group_size as u64);
                (cols.div_ceil(2), groups * 2, groups * 2)
            }
        };
        let at = |base: u64, per_row: u64| {
            if base == 0 {
                0
            } else {
                base + from as u64 * per_row
            }
        };
        Ok(GpuWeight {
            rows: to - from,
            cols: self.cols,
            form: self.form,
            data: at(self.data, data_row),
            scales: at(self.scales, scale_row),
            mins: at(self.mins, min_row),
            bytes: 0,
            owner: self.owner.clone(),
        })
    }

    /// Whether the matrix-vector kernels can take this weight: whole 16-byte vectors per row,
    /// int4 and int8g groups of 32, 64 or 128 columns dividing the row (the kernels find a
    /// vector's group with a shift), sizes within `i32`.
    pub fn check_gemv(&self, name: &str) -> Result<(), CudaError> {
        let epv = elements_per_vector(self.form);
        if !self.cols.is_multiple_of(epv) {
            return Err(CudaError::Unsupported(format!(
                "tensor {name}: {} columns is not a multiple of {epv} ({} rows must be whole 16-byte vectors on the GPU)",
                self.cols,
                self.form.name()
            )));
        }
        if let Some(group_size) = self.form.group_size() {
            let g = group_size as usize;
            if !matches!(g, 32 | 64 | 128) || !self.cols.is_multiple_of(g) {
                return Err(CudaError::Unsupported(format!(
                    "tensor {name}: {} with {} columns is not supported on the GPU",
                    self.form.name(),
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
    pub fn upload(gpu: &Arc<Gpu>, w: &crate::Weight) -> Result<GpuWeight, CudaError> {
        use crate::WeightData;
        fn bytes<T: Copy>(v: &[T]) -> &[u8] {
            // SAFETY: plain-old-data values viewed as bytes.
            unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
        }
        let unblocked;
        let parts: Vec<&[u8]> = match &w.data {
            WeightData::F32(v) => vec![bytes(v)],
            WeightData::Bf16(v) => vec![bytes(v)],
            WeightData::F16(v) => vec![bytes(v)],
            WeightData::Int8Row { q, scales } | WeightData::Int8Group { q, scales, .. } => {
                vec![bytes(q), bytes(scales)]
            }
            WeightData::Int4 {
                packed,
                scales,
                mins,
                ..
            } => vec![bytes(packed), bytes(scales), bytes(mins)],
            WeightData::Int4Blocked(b) => {
                unblocked = b.to_rows();
                let (packed, scales, mins) = &unblocked;
                vec![bytes(packed), bytes(scales), bytes(mins)]
            }
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
            form: w.form(),
            data: ptr(0),
            scales: ptr(1),
            mins: ptr(2),
            bytes: parts.iter().map(|p| p.len() as u64).sum(),
            owner: buf,
        })
    }
}
