//! The errors of reading, validating and writing a container. Each names the region it is about:
//! the preamble, the footer, the index, a tensor, a stream, a frame or an embedded file.

use thiserror::Error;

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum FormatError {
    #[error("file is {len} bytes, too short for a .cllm container (at least {min} bytes)")]
    TooShort { len: u64, min: u64 },
    #[error(
        "preamble: bad magic {found:02x?} (not a .cllm file, or mangled by a text-mode transfer)"
    )]
    BadMagic { found: [u8; 8] },
    #[error("preamble: format version {major}.{minor} is not readable by this reader (reads {reader_major}.x); upgrade cllm")]
    UnsupportedMajor {
        major: u16,
        minor: u16,
        reader_major: u16,
    },
    #[error("preamble: reserved field is {0:#x}, must be 0 (corrupted preamble)")]
    ReservedNotZero(u32),
    #[error("footer: end magic missing (file truncated, or bytes appended after the footer)")]
    BadEndMagic,
    #[error("footer: index at {offset} + {length} bytes + 32-byte footer does not end at file length {file_len} (truncated or corrupted footer)")]
    FooterMismatch {
        offset: u64,
        length: u64,
        file_len: u64,
    },
    #[error("footer: index_offset {0} is not a multiple of 64 or lies before the frames")]
    MisalignedIndex(u64),
    #[error("index: {length} bytes exceeds the limit of {limit} bytes")]
    IndexTooLarge { length: u64, limit: u64 },
    #[error("footer: index checksum mismatch (footer says {stored:016x}, preamble and index hash to {computed:016x}): the preamble, the index or the footer's checksum is corrupted")]
    IndexChecksum { stored: u64, computed: u64 },
    #[error("index: not valid JSON: {0}")]
    IndexJson(String),
    #[error("index: {0}")]
    Index(String),
    #[error("index: version {index:?} disagrees with the preamble's {preamble:?}")]
    VersionMismatch { index: [u16; 2], preamble: [u16; 2] },
    #[error("tensor {tensor}: {msg}")]
    Tensor { tensor: String, msg: String },
    #[error("tensor {tensor}: unknown codec '{codec}' (the file may need a newer cllm)")]
    UnknownCodec { tensor: String, codec: String },
    #[error("tensor {tensor}: element count of shape {shape:?} overflows 64 bits")]
    ShapeOverflow { tensor: String, shape: Vec<u64> },
    #[error("{owner} stream '{role}' frame {frame}: {msg}")]
    Frame {
        owner: String,
        role: String,
        frame: usize,
        msg: String,
    },
    #[error("{owner} stream '{role}': decoded bytes hash {computed}, index says {stored}")]
    StreamHash {
        owner: String,
        role: String,
        stored: String,
        computed: String,
    },
    #[error("padding at bytes {start}..{end} is not zero (corrupted)")]
    Padding { start: u64, end: u64 },
    #[error("embedded file {name}: {msg}")]
    File { name: String, msg: String },
    #[error("shard set: {0}")]
    Set(String),
    #[error("policy: {0}")]
    Policy(String),
    #[error("quantizing {tensor}: {msg}")]
    Quantize { tensor: String, msg: String },
    #[error("write failed")]
    Io(#[from] std::io::Error),
}

impl FormatError {
    pub(crate) fn tensor(tensor: &str, msg: impl Into<String>) -> Self {
        FormatError::Tensor {
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }
}
