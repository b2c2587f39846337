//! The fixed parts of the file: preamble, footer, alignment (spec/FORMAT.md section 1).

use crate::error::{FormatError, Result};

pub const MAGIC: [u8; 8] = [0x89, b'C', b'L', b'M', b'\r', b'\n', 0x1a, b'\n'];
pub const END_MAGIC: [u8; 8] = *b"CLLMEND\x1a";
pub const MAJOR: u16 = 1;
/// The newest minor version this implementation defines (1.1 added the `int8g` codec, 1.2 shard
/// sets, 1.3 the `int4m` codec, 1.4 `int4s`). A writer writes the lowest minor its features need
/// ([`crate::Codec::min_minor`]).
pub const MINOR: u16 = 4;
pub const PREAMBLE_LEN: u64 = 16;
pub const FOOTER_LEN: u64 = 32;
pub const ALIGNMENT: u64 = 64;
/// Where the first frame (or, with no frames, the index) starts.
pub const DATA_START: u64 = 64;
/// Smallest file: data start, a two-byte index (`{}`), a footer.
pub const MIN_FILE_LEN: u64 = DATA_START + 2 + FOOTER_LEN;

/// Rounds up to the container's alignment; `None` on overflow.
pub fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGNMENT - 1).map(|v| v & !(ALIGNMENT - 1))
}

pub fn preamble(major: u16, minor: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&MAGIC);
    p[8..10].copy_from_slice(&major.to_le_bytes());
    p[10..12].copy_from_slice(&minor.to_le_bytes());
    p
}

pub fn index_checksum(preamble: &[u8], index: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(preamble);
    h.update(index);
    h.digest()
}

pub fn footer(index_offset: u64, index: &[u8], preamble: &[u8]) -> [u8; 32] {
    let mut f = [0u8; 32];
    f[..8].copy_from_slice(&index_offset.to_le_bytes());
    f[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
    f[16..24].copy_from_slice(&index_checksum(preamble, index).to_le_bytes());
    f[24..].copy_from_slice(&END_MAGIC);
    f
}

/// What the fixed parts say, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub major: u16,
    pub minor: u16,
    pub index_offset: u64,
    pub index_length: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks preamble and footer in the order the spec gives, without looking at the index bytes
/// beyond their checksum. `index_limit` is spent before the index is touched.
pub fn read_framing(file: &[u8], index_limit: u64) -> Result<Framing> {
    let len = file.len() as u64;
    if len < MIN_FILE_LEN {
        return Err(FormatError::TooShort {
            len,
            min: MIN_FILE_LEN,
        });
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&file[..8]);
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let major = u16::from_le_bytes([file[8], file[9]]);
    let minor = u16::from_le_bytes([file[10], file[11]]);
    if major != MAJOR {
        return Err(FormatError::UnsupportedMajor {
            major,
            minor,
            reader_major: MAJOR,
        });
    }
    let reserved = u32::from_le_bytes([file[12], file[13], file[14], file[15]]);
    if reserved != 0 {
        return Err(FormatError::ReservedNotZero(reserved));
    }
    let foot = &file[file.len() - FOOTER_LEN as usize..];
    if foot[24..] != END_MAGIC {
        return Err(FormatError::BadEndMagic);
    }
    let index_offset = u64_at(foot, 0);
    let index_length = u64_at(foot, 8);
    let stored = u64_at(foot, 16);
    let end = index_offset
        .checked_add(index_length)
        .and_then(|e| e.checked_add(FOOTER_LEN));
    if end != Some(len) {
        return Err(FormatError::FooterMismatch {
            offset: index_offset,
            length: index_length,
            file_len: len,
        });
    }
    if index_offset < DATA_START || !index_offset.is_multiple_of(ALIGNMENT) {
        return Err(FormatError::MisalignedIndex(index_offset));
    }
    if index_length < 2 {
        return Err(FormatError::IndexJson(format!(
            "index of {index_length} bytes cannot hold a JSON object"
        )));
    }
    if index_length > index_limit {
        return Err(FormatError::IndexTooLarge {
            length: index_length,
            limit: index_limit,
        });
    }
    // In range: index_offset + index_length + 32 == len was checked above.
    let index = &file[index_offset as usize..(index_offset + index_length) as usize];
    let computed = index_checksum(&file[..PREAMBLE_LEN as usize], index);
    if computed != stored {
        return Err(FormatError::IndexChecksum { stored, computed });
    }
    Ok(Framing {
        major,
        minor,
        index_offset,
        index_length,
    })
}
