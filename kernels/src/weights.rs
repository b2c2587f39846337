//! The CPU representation of one weight matrix, as the loader hands it to the runtime.
//!
//! Quantized weights stay quantized here: the matrix-vector kernels dequantize inside the product,
//! so memory holds the container's payload, not a float copy of the model.

use cllm_format::WeightForm;
use half::{bf16, f16};

pub use crate::cpu::int4_blocks::Int4Blocks;

/// A weight's elements in CPU memory, one variant per [`WeightForm`]. Quantization schemes are
/// exactly those of spec/FORMAT.md.
#[derive(Clone, Debug)]
pub enum WeightData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    /// Symmetric per-row int8: `w[r][c] = q[r*cols + c] as f32 * scales[r]`.
    Int8Row {
        q: Vec<i8>,
        scales: Vec<f32>,
    },
    /// Symmetric group-wise int8 (format 1.1 codec `int8g`). Row `r`, column `c`, group
    /// `g = c / group_size` (`group_size` is 32, 64 or 128 and divides `cols`):
    /// `w = q[r*cols + c] as f32 * scales[r*(cols/group_size) + g]` (one f32 multiplication).
    Int8Group {
        q: Vec<i8>,
        scales: Vec<f32>,
        group_size: usize,
    },
    /// Asymmetric group-wise int4. Row `r`, column `c`, group `g = c / group_size`:
    /// `w = (nibble as f32 * scales[r*groups + g] as f32) + mins[r*groups + g] as f32`,
    /// where byte `packed[r*cols/2 + c/2]` holds column `c` in its low nibble when `c` is even, high nibble when odd.
    Int4 {
        packed: Vec<u8>,
        scales: Vec<f16>,
        mins: Vec<f16>,
        group_size: usize,
    },
    /// [`Int4`](WeightData::Int4)'s values laid out for the CPU's products (decision record
    /// 0028): what [`cpu::prepare`](crate::cpu::prepare) makes of an int4 weight whose group
    /// size is a multiple of 8.
    Int4Blocked(Int4Blocks),
}

/// The nibble of column `c` in its packed int4 byte: the low nibble for an even column, the high
/// one for an odd column.
#[inline(always)]
pub(crate) fn int4_nibble(byte: u8, c: usize) -> u8 {
    if c.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

/// A weight as a `rows x cols` row-major matrix; a 1-D tensor (a norm's weight) has `rows == 1`.
#[derive(Clone, Debug)]
pub struct Weight {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData,
}

impl WeightData {
    /// The storage form.
    pub fn form(&self) -> WeightForm {
        match self {
            WeightData::F32(_) => WeightForm::F32,
            WeightData::Bf16(_) => WeightForm::Bf16,
            WeightData::F16(_) => WeightForm::F16,
            WeightData::Int8Row { .. } => WeightForm::Int8Row,
            WeightData::Int8Group { group_size, .. } => WeightForm::Int8Group {
                group_size: *group_size as u32,
            },
            WeightData::Int4 { group_size, .. } => WeightForm::Int4 {
                group_size: *group_size as u32,
            },
            WeightData::Int4Blocked(b) => WeightForm::Int4 {
                group_size: b.group_size() as u32,
            },
        }
    }
}

impl Weight {
    /// The storage form.
    pub fn form(&self) -> WeightForm {
        self.data.form()
    }

    /// Bytes the weight occupies in memory (payload plus scales).
    pub fn resident_bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(v) => v.len() * 4,
            WeightData::Bf16(v) => v.len() * 2,
            WeightData::F16(v) => v.len() * 2,
            WeightData::Int8Row { q, scales } | WeightData::Int8Group { q, scales, .. } => {
                q.len() + scales.len() * 4
            }
            WeightData::Int4 {
                packed,
                scales,
                mins,
                ..
            } => packed.len() + (scales.len() + mins.len()) * 2,
            WeightData::Int4Blocked(b) => b.resident_bytes(),
        }
    }
}
