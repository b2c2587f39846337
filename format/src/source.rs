//! A source tensor's bytes as packing reads them: borrowed from memory, memory-mapped with each
//! read part handed back to the kernel, or generated on demand. Reads are a window at a time, so
//! packing never needs the model in memory.

use std::borrow::Cow;
use std::ops::Range;

use crate::Dtype;

/// A source tensor's bytes: in memory, memory-mapped (pages handed back once read), or produced
/// on demand (a synthetic model larger than the disk). Packing reads them a window at a time.
pub enum SourceBytes<'a> {
    Slice(&'a [u8]),
    /// Mapped bytes; `release` is called with each sub-slice once it has been read.
    Mapped {
        bytes: &'a [u8],
        release: &'a (dyn Fn(&[u8]) + Sync),
    },
    /// `fill(offset, out)` writes the `out.len()` bytes at `offset`; the same bytes every call.
    Generated {
        len: usize,
        fill: &'a (dyn Fn(usize, &mut [u8]) + Sync),
    },
}

impl<'a> From<&'a [u8]> for SourceBytes<'a> {
    fn from(b: &'a [u8]) -> Self {
        SourceBytes::Slice(b)
    }
}

impl<'a> From<&'a Vec<u8>> for SourceBytes<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        SourceBytes::Slice(b)
    }
}

impl<'a> SourceBytes<'a> {
    pub fn len(&self) -> usize {
        match self {
            SourceBytes::Slice(b) | SourceBytes::Mapped { bytes: b, .. } => b.len(),
            SourceBytes::Generated { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in `range` (borrowed where they are in memory).
    pub fn read(&self, range: Range<usize>) -> Cow<'a, [u8]> {
        match self {
            SourceBytes::Slice(b) | SourceBytes::Mapped { bytes: b, .. } => {
                Cow::Borrowed(&b[range])
            }
            SourceBytes::Generated { fill, .. } => {
                let mut out = vec![0u8; range.len()];
                fill(range.start, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// `range` has been read and will not be needed again soon.
    pub fn done(&self, range: Range<usize>) {
        if let SourceBytes::Mapped { bytes, release } = self {
            release(&bytes[range]);
        }
    }
}

/// A tensor of the source model: its little-endian row-major bytes.
pub struct SourceTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub bytes: SourceBytes<'a>,
}
