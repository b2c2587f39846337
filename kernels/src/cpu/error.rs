//! The one error type of the CPU kernels: inconsistent weights, wrong buffer sizes, bad parameters.

/// Why a kernel refused its input. Kernels never panic on bad shapes; they return one of these.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    #[error(
        "{what}: weight data holds {actual} values, but a {rows}x{cols} matrix needs {expected}"
    )]
    WeightLength {
        what: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error("int4 weight: group size must be even and nonzero, got {0}")]
    Int4GroupSize(usize),
    #[error("int4 weight: column count {0} is odd (rows must be whole bytes)")]
    Int4OddColumns(usize),
    #[error(
        "int8 group-wise weight: group size must be a nonzero multiple of 16 dividing the \
         column count {cols}, got {group_size}"
    )]
    Int8GroupSize { group_size: usize, cols: usize },
    #[error("{what}: expected {expected} values, got {actual}")]
    BufferLength {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("row {row} is out of range for a weight with {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },
    #[error("a norm weight must be a single row, got {rows}x{cols}")]
    NormWeightShape { rows: usize, cols: usize },
    #[error("RoPE: head_dim must be even and nonzero, got {0}")]
    RopeHeadDim(usize),
    #[error("RoPE: position {pos} is beyond the table's {len} positions")]
    RopePosition { pos: usize, len: usize },
    #[error("RoPE scaling: {0}")]
    RopeScaling(String),
    #[error("attention: {0}")]
    Attention(String),
}

/// Checks a buffer length, naming the buffer in the error.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::BufferLength {
            what,
            expected,
            actual,
        })
    }
}
