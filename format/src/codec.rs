//! Codec ids and what each one means: which streams a tensor has, their lengths, element sizes and
//! encodings (spec/FORMAT.md section 4).

use crate::error::{FormatError, Result};
use crate::Dtype;

/// A codec: how a tensor is stored. The string ids are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Raw,
    Zstd,
    ZstdBp,
    /// Symmetric int8 with one f32 scale per row (format 1.0; id `int8`).
    Int8Row,
    /// Symmetric int8 with one f32 scale per group of `group_size` columns (format 1.1).
    Int8Group {
        group_size: u32,
    },
    /// Asymmetric int4 per group of `group_size` columns: f16 scale and minimum per group.
    Int4 {
        group_size: u32,
        fit: Int4Fit,
    },
    /// `int4s` (format 1.4): int4 whose groups' scales and minimums are 6-bit codes under two f16
    /// factors per super-block of [`SUPER_BLOCK_GROUPS`] groups (spec section 4.6). Expands to
    /// `int4`'s per-group f16 parameters, exactly.
    Int4S {
        group_size: u32,
    },
}

/// How an int4 codec chooses each group's scale and minimum. The layout and the dequantization
/// are the same for both; only the parameters (and so the codes) differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int4Fit {
    /// `int4`: the group's minimum, and its range / 15 (spec section 4.3).
    MinMax,
    /// `int4m` (format 1.3): of a fixed list of candidates, the one of least squared error
    /// (spec section 4.5).
    MinError,
}

/// How a frame's stored bytes become its decoded bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Zstd,
    /// Byte planes of 2- or 4-byte elements, then zstd.
    BytePlanes(usize),
}

/// One stream a codec defines for a given tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    pub role: &'static str,
    pub encoding: Encoding,
    pub elem_size: usize,
    pub len: u64,
}

/// Group sizes of the group-wise codecs (`int4`, `int4m`, `int4s`, `int8g`).
pub const GROUP_SIZES: [u32; 3] = [32, 64, 128];

/// Groups per `int4s` super-block (a row's last one may hold fewer).
pub const SUPER_BLOCK_GROUPS: usize = 8;

/// Bits of one `int4s` group's sub-codes in the `subs` stream: a 6-bit scale and a 6-bit minimum.
pub const SUB_CODE_BITS: usize = 12;

impl Codec {
    pub fn id(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
            Codec::ZstdBp => "zstd-bp",
            Codec::Int8Row => "int8",
            Codec::Int8Group { .. } => "int8g",
            Codec::Int4 {
                fit: Int4Fit::MinMax,
                ..
            } => "int4",
            Codec::Int4 {
                fit: Int4Fit::MinError,
                ..
            } => "int4m",
            Codec::Int4S { .. } => "int4s",
        }
    }

    /// int4 fitted by min/max (`int4`) in groups of `group_size`.
    pub fn int4(group_size: u32) -> Codec {
        Codec::Int4 {
            group_size,
            fit: Int4Fit::MinMax,
        }
    }

    /// The lowest minor version of format 1 that defines this codec.
    pub fn min_minor(self) -> u16 {
        match self {
            Codec::Int8Group { .. } => 1,
            Codec::Int4 {
                fit: Int4Fit::MinError,
                ..
            } => 3,
            Codec::Int4S { .. } => 4,
            _ => 0,
        }
    }

    /// Whether the codec searches its group parameters for least error, the fit a calibration's
    /// importance vectors weight (spec section 4.7).
    pub fn is_searched(self) -> bool {
        matches!(
            self,
            Codec::Int4 {
                fit: Int4Fit::MinError,
                ..
            } | Codec::Int4S { .. }
        )
    }

    pub fn is_lossless(self) -> bool {
        matches!(self, Codec::Raw | Codec::Zstd | Codec::ZstdBp)
    }

    pub fn group_size(self) -> Option<u32> {
        match self {
            Codec::Int4 { group_size, .. }
            | Codec::Int4S { group_size }
            | Codec::Int8Group { group_size } => Some(group_size),
            _ => None,
        }
    }

    /// Parses an index entry's codec id and group size.
    pub fn from_id(id: &str, group_size: Option<u32>) -> Option<Codec> {
        Some(match id {
            "raw" => Codec::Raw,
            "zstd" => Codec::Zstd,
            "zstd-bp" => Codec::ZstdBp,
            "int8" => Codec::Int8Row,
            "int8g" => Codec::Int8Group {
                group_size: group_size?,
            },
            "int4" => Codec::int4(group_size?),
            "int4m" => Codec::Int4 {
                group_size: group_size?,
                fit: Int4Fit::MinError,
            },
            "int4s" => Codec::Int4S {
                group_size: group_size?,
            },
            _ => return None,
        })
    }

    /// The streams of a tensor of this dtype and shape, or why the codec cannot hold it.
    /// All lengths are computed with checked arithmetic.
    pub fn streams(self, name: &str, dtype: Dtype, shape: &[u64]) -> Result<Vec<StreamSpec>> {
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| FormatError::ShapeOverflow {
                tensor: name.to_string(),
                shape: shape.to_vec(),
            })?;
        let size = dtype.size();
        let bytes = numel
            .checked_mul(size as u64)
            .ok_or_else(|| FormatError::ShapeOverflow {
                tensor: name.to_string(),
                shape: shape.to_vec(),
            })?;
        let data = |encoding, elem_size, len| StreamSpec {
            role: "data",
            encoding,
            elem_size,
            len,
        };
        match self {
            Codec::Raw => Ok(vec![data(Encoding::Raw, size, bytes)]),
            Codec::Zstd => Ok(vec![data(Encoding::Zstd, size, bytes)]),
            Codec::ZstdBp => match dtype {
                Dtype::Bf16 | Dtype::F16 => Ok(vec![data(Encoding::BytePlanes(2), 2, bytes)]),
                Dtype::F32 => Ok(vec![data(Encoding::BytePlanes(4), 4, bytes)]),
                _ => Err(FormatError::tensor(
                    name,
                    format!("codec zstd-bp needs bf16, f16 or f32, not {dtype}"),
                )),
            },
            Codec::Int8Row | Codec::Int8Group { .. } | Codec::Int4 { .. } | Codec::Int4S { .. } => {
                if !dtype.is_float() {
                    return Err(FormatError::tensor(
                        name,
                        format!("codec {} needs bf16, f16 or f32, not {dtype}", self.id()),
                    ));
                }
                if shape.len() != 2 {
                    return Err(FormatError::tensor(
                        name,
                        format!("codec {} needs a 2-D tensor, shape is {shape:?}", self.id()),
                    ));
                }
                let (rows, cols) = (shape[0], shape[1]);
                let overflow = || FormatError::ShapeOverflow {
                    tensor: name.to_string(),
                    shape: shape.to_vec(),
                };
                // Groups per row, for the group-wise codecs (checked before any length).
                let groups = |group_size: u32| -> Result<u64> {
                    if !GROUP_SIZES.contains(&group_size) {
                        return Err(FormatError::tensor(
                            name,
                            format!("{} group size {group_size} is not 32, 64 or 128", self.id()),
                        ));
                    }
                    let g = group_size as u64;
                    if cols % g != 0 {
                        return Err(FormatError::tensor(
                            name,
                            format!(
                                "{} needs columns ({cols}) divisible by the group size {g}",
                                self.id()
                            ),
                        ));
                    }
                    Ok(cols / g)
                };
                let scales = |elem_size: usize, count: u64| -> Result<StreamSpec> {
                    Ok(StreamSpec {
                        role: "scales",
                        encoding: Encoding::Zstd,
                        elem_size,
                        len: count.checked_mul(elem_size as u64).ok_or_else(overflow)?,
                    })
                };
                match self {
                    Codec::Int4 { group_size, .. } => {
                        // cols is a multiple of g >= 32, so numel is even and rows * groups <= numel.
                        let count = rows * groups(group_size)?;
                        let scales = scales(2, count)?;
                        Ok(vec![
                            data(Encoding::Zstd, 1, numel / 2),
                            scales,
                            StreamSpec {
                                role: "mins",
                                ..scales
                            },
                        ])
                    }
                    Codec::Int4S { group_size } => {
                        let per_row = groups(group_size)?;
                        let blocks = per_row.div_ceil(SUPER_BLOCK_GROUPS as u64);
                        let count = rows * per_row;
                        let sub_bits = count
                            .checked_mul(SUB_CODE_BITS as u64)
                            .ok_or_else(overflow)?;
                        Ok(vec![
                            data(Encoding::Zstd, 1, numel / 2),
                            StreamSpec {
                                role: "factors",
                                encoding: Encoding::Zstd,
                                elem_size: 4,
                                len: (rows * blocks).checked_mul(4).ok_or_else(overflow)?,
                            },
                            StreamSpec {
                                role: "subs",
                                encoding: Encoding::Zstd,
                                elem_size: 1,
                                len: sub_bits.div_ceil(8),
                            },
                        ])
                    }
                    Codec::Int8Group { group_size } => {
                        let count = rows * groups(group_size)?;
                        Ok(vec![data(Encoding::Zstd, 1, numel), scales(4, count)?])
                    }
                    _ => Ok(vec![data(Encoding::Zstd, 1, numel), scales(4, rows)?]),
                }
            }
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::Int4 { group_size, .. } | Codec::Int4S { group_size } => {
                write!(f, "{}/g{group_size}", self.id())
            }
            Codec::Int8Group { group_size } => write!(f, "int8/g{group_size}"),
            c => f.write_str(c.id()),
        }
    }
}
