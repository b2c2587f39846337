//! How a weight's elements are stored: one enum for the container, the loader and the kernels
//! (spec/FORMAT.md section 4). A lossless codec keeps its tensor's float dtype; a quantized codec
//! is a form of its own. The CUDA kernels' kind codes (`KIND_*`) and their per-kind entry points
//! are generated from [`WeightForm::ALL`] and [`WeightForm::code`], never written by hand.

use crate::codec::Codec;
use crate::Dtype;

/// The storage form of a weight matrix, as resident in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightForm {
    F32,
    Bf16,
    F16,
    /// Symmetric int8, one f32 scale per row (codec `int8`, `--quant int8-row`).
    Int8Row,
    /// Asymmetric int4, an f16 scale and minimum per group of `group_size` columns.
    Int4 {
        group_size: u32,
    },
    /// Symmetric int8, one f32 scale per group of `group_size` columns (codec `int8g`,
    /// `--quant int8`).
    Int8Group {
        group_size: u32,
    },
}

impl WeightForm {
    /// Every form (group-wise ones with group size 0), in code order: what code generators and
    /// per-form tables iterate. [`WeightForm::code`] is the position here.
    pub const ALL: [WeightForm; 6] = [
        WeightForm::F32,
        WeightForm::Bf16,
        WeightForm::F16,
        WeightForm::Int8Row,
        WeightForm::Int4 { group_size: 0 },
        WeightForm::Int8Group { group_size: 0 },
    ];

    /// The form's stable small code (the GPU kernels' `KIND_*`): its position in
    /// [`WeightForm::ALL`], whatever its group size.
    pub fn code(self) -> usize {
        WeightForm::ALL
            .iter()
            .position(|f| std::mem::discriminant(f) == std::mem::discriminant(&self))
            .expect("every form is in WeightForm::ALL")
    }

    /// The form of code `code`, group-wise ones with `group_size` (the inverse of
    /// [`WeightForm::code`] and [`WeightForm::group_size`]).
    pub fn from_code(code: usize, group_size: u32) -> Option<WeightForm> {
        Some(match WeightForm::ALL.get(code)? {
            WeightForm::Int4 { .. } => WeightForm::Int4 { group_size },
            WeightForm::Int8Group { .. } => WeightForm::Int8Group { group_size },
            f => *f,
        })
    }

    /// The form's name without parameters, as a C identifier suffix (`KIND_INT8G`).
    pub fn kind_name(self) -> &'static str {
        match self {
            WeightForm::F32 => "F32",
            WeightForm::Bf16 => "BF16",
            WeightForm::F16 => "F16",
            WeightForm::Int8Row => "INT8",
            WeightForm::Int4 { .. } => "INT4",
            WeightForm::Int8Group { .. } => "INT8G",
        }
    }

    /// The form of a float dtype kept as it is.
    pub fn of_dtype(dtype: Dtype) -> Option<WeightForm> {
        match dtype {
            Dtype::F32 => Some(WeightForm::F32),
            Dtype::Bf16 => Some(WeightForm::Bf16),
            Dtype::F16 => Some(WeightForm::F16),
            _ => None,
        }
    }

    /// The form a tensor of `dtype` stored with `codec` decodes to; `None` for a lossless
    /// tensor whose dtype is not a float.
    pub fn of(codec: Codec, dtype: Dtype) -> Option<WeightForm> {
        match codec {
            Codec::Raw | Codec::Zstd | Codec::ZstdBp => WeightForm::of_dtype(dtype),
            Codec::Int8Row => Some(WeightForm::Int8Row),
            Codec::Int8Group { group_size } => Some(WeightForm::Int8Group { group_size }),
            // `int4s` expands to `int4`'s per-group parameters exactly (spec section 4.6).
            Codec::Int4 { group_size, .. } | Codec::Int4S { group_size } => {
                Some(WeightForm::Int4 { group_size })
            }
        }
    }

    /// Columns per scale for the group-wise forms.
    pub fn group_size(self) -> Option<u32> {
        match self {
            WeightForm::Int4 { group_size } | WeightForm::Int8Group { group_size } => {
                Some(group_size)
            }
            _ => None,
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, WeightForm::F32 | WeightForm::Bf16 | WeightForm::F16)
    }

    /// The form with its parameters, for messages: `bf16`, `int8-row`, `int8-g64`, `int4-g32`.
    pub fn name(self) -> String {
        match self {
            WeightForm::F32 => "f32".into(),
            WeightForm::Bf16 => "bf16".into(),
            WeightForm::F16 => "f16".into(),
            WeightForm::Int8Row => "int8-row".into(),
            WeightForm::Int4 { group_size } => format!("int4-g{group_size}"),
            WeightForm::Int8Group { group_size } => format!("int8-g{group_size}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_positions_whatever_the_group() {
        for (i, f) in WeightForm::ALL.iter().enumerate() {
            assert_eq!(f.code(), i);
        }
        assert_eq!(WeightForm::Int8Group { group_size: 64 }.code(), 5);
        assert_eq!(WeightForm::Int4 { group_size: 128 }.code(), 4);
        for f in [
            WeightForm::Bf16,
            WeightForm::Int8Row,
            WeightForm::Int4 { group_size: 32 },
            WeightForm::Int8Group { group_size: 128 },
        ] {
            assert_eq!(
                WeightForm::from_code(f.code(), f.group_size().unwrap_or(0)),
                Some(f)
            );
        }
        assert_eq!(WeightForm::from_code(6, 0), None);
        let names: std::collections::HashSet<_> =
            WeightForm::ALL.iter().map(|f| f.kind_name()).collect();
        assert_eq!(names.len(), WeightForm::ALL.len());
    }

    #[test]
    fn codecs_decode_to_their_forms() {
        assert_eq!(
            WeightForm::of(Codec::ZstdBp, Dtype::Bf16),
            Some(WeightForm::Bf16)
        );
        assert_eq!(WeightForm::of(Codec::Raw, Dtype::I32), None);
        assert_eq!(
            WeightForm::of(Codec::Int8Group { group_size: 32 }, Dtype::F16),
            Some(WeightForm::Int8Group { group_size: 32 })
        );
        assert_eq!(
            WeightForm::of(Codec::Int8Row, Dtype::F32),
            Some(WeightForm::Int8Row)
        );
    }
}
