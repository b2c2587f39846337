//! Errors: one variant per failure, naming the key or tensor involved.

use std::path::PathBuf;

/// Everything that can go wrong reading or importing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    // ---- header ----
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("unsupported GGUF version {0} (versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error("file ends while reading {what} (at byte {offset}, {needed} more bytes needed)")]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
    },
    #[error("tensor count {count} exceeds the limit of {max}")]
    TooManyTensors { count: u64, max: u64 },
    #[error("metadata key/value count {count} exceeds the limit of {max}")]
    TooManyKv { count: u64, max: u64 },

    // ---- metadata ----
    #[error("{what}: string length {len} exceeds the limit of {max}")]
    StringTooLong { what: String, len: u64, max: u64 },
    #[error("{what}: string is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("duplicate metadata key `{key}`")]
    DuplicateKey { key: String },
    #[error("metadata key `{key}`: unknown value type {ty}")]
    UnknownValueType { key: String, ty: u32 },
    #[error("metadata key `{key}`: bool value {value} is neither 0 nor 1")]
    InvalidBool { key: String, value: u8 },
    #[error("metadata key `{key}`: array length {len} exceeds the limit of {max}")]
    ArrayTooLong { key: String, len: u64, max: u64 },
    #[error("metadata key `{key}`: array of {len} elements cannot fit in the {remaining} bytes left in the file")]
    ArrayExceedsFile {
        key: String,
        len: u64,
        remaining: usize,
    },
    #[error("metadata key `{key}`: arrays nested deeper than {max}")]
    ArrayTooDeep { key: String, max: u32 },
    #[error("metadata key `{key}`: total array elements in the file exceed the limit of {max}")]
    TooManyArrayElements { key: String, max: u64 },
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongMetadataType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("general.alignment = {value} is not a non-zero power of two (or exceeds the limit of {max})")]
    BadAlignment { value: u64, max: u64 },

    // ---- tensor infos ----
    #[error("duplicate tensor name `{name}`")]
    DuplicateTensor { name: String },
    #[error("tensor `{tensor}`: {n_dims} dimensions exceed the limit of {max}")]
    TooManyDims {
        tensor: String,
        n_dims: u32,
        max: u32,
    },
    #[error(
        "tensor `{tensor}`: dimension {index} = {value} does not fit in a signed 64-bit count"
    )]
    DimTooLarge {
        tensor: String,
        index: usize,
        value: u64,
    },
    #[error("tensor `{tensor}`: element count overflows (dims {dims:?})")]
    ElementCountOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor `{tensor}`: unknown ggml type id {ty}")]
    UnknownTensorType { tensor: String, ty: u32 },
    #[error("tensor `{tensor}`: first dimension {dim0} is not a multiple of the {ty} block size {block}")]
    BlockMisaligned {
        tensor: String,
        ty: crate::GgmlType,
        dim0: u64,
        block: u64,
    },
    #[error("tensor `{tensor}`: byte size overflows")]
    ByteSizeOverflow { tensor: String },
    #[error("tensor `{tensor}`: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor data section would start at {start}, beyond the end of the file ({file_len} bytes)"
    )]
    DataSectionOutOfBounds { start: u64, file_len: usize },
    #[error("tensor `{tensor}`: bytes {start}..{end} lie outside the file ({file_len} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        file_len: usize,
    },
    #[error("tensors `{first}` and `{second}` overlap in the data section")]
    TensorsOverlap { first: String, second: String },

    // ---- dequantization ----
    #[error("tensor `{tensor}`: dequantizing type {ty} is not supported")]
    UnsupportedTensorType { tensor: String, ty: crate::GgmlType },
    #[error("{ty} data of {bytes} bytes does not hold {elements} elements")]
    DataLengthMismatch {
        ty: crate::GgmlType,
        bytes: usize,
        elements: usize,
    },

    // ---- import ----
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output folder {0} exists and is not empty")]
    OutDirNotEmpty(PathBuf),
    #[error("output path {0} exists and is not a folder")]
    OutDirNotDir(PathBuf),
    #[error("missing metadata key `{key}`")]
    MissingMetadata { key: String },
    #[error("metadata key `{key}`: {reason}")]
    BadMetadataValue { key: String, reason: String },
    #[error("unsupported architecture `{0}` (supported: {supported})", supported = cllm_model::Family::supported_gguf())]
    UnsupportedArchitecture(String),
    #[error("tensor `{0}` has no Hugging Face name mapping")]
    UnknownTensorName(String),
    #[error("tensor `{tensor}`: shape {shape:?} does not fit {reason}")]
    BadTensorShape {
        tensor: String,
        shape: Vec<u64>,
        reason: String,
    },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("unsupported tokenizer model `{0}` (supported: {supported})", supported = crate::tokenizer::SUPPORTED_MODELS)]
    UnsupportedTokenizer(String),
    #[error("unsupported tokenizer pre-tokenizer `{0}`")]
    UnsupportedPreTokenizer(String),
    #[error("tokenizer: {0}")]
    BadTokenizer(String),
    #[error("writing model.safetensors: {0}")]
    Safetensors(String),
    #[error("writing {file}: {source}")]
    Json {
        file: &'static str,
        source: serde_json::Error,
    },
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io {
            path: path.into(),
            source,
        }
    }
}
