//! A bounded GGUF (v2/v3) parser over a byte slice.
//!
//! Layout (all little-endian):
//!
//! ```text
//! "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count x   { key: string, value_type u32, value }
//! tensor_count x { name: string, n_dims u32, dims u64 x n_dims, type u32, offset u64 }
//! padding to `general.alignment` (default 32)
//! tensor data (each tensor at data_start + offset)
//! ```
//!
//! A string is `len u64` followed by `len` bytes of UTF-8; an array is
//! `elem_type u32, len u64` followed by the elements.
//!
//! Every read goes through [`Cursor`], whose reads return `Option` and never
//! index out of bounds; every size computation is checked; every count is
//! compared with [`Limits`] and with the bytes left in the file *before*
//! anything is allocated for it.

use std::collections::HashMap;

use crate::error::GgufError;
use crate::types::GgmlType;

/// File magic.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Bounds applied while parsing. Each is checked before the corresponding
/// allocation, so a hostile file cannot make the parser allocate more than
/// a small multiple of its own size, nor more than these limits allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of tensors.
    pub max_tensors: u64,
    /// Maximum number of metadata key/value pairs.
    pub max_kv: u64,
    /// Maximum length in bytes of a metadata key.
    pub max_key_len: u64,
    /// Maximum length in bytes of a tensor name.
    pub max_tensor_name_len: u64,
    /// Maximum length in bytes of a string value (chat templates can be large).
    pub max_string_len: u64,
    /// Maximum number of elements of one array (vocabularies, merges).
    pub max_array_len: u64,
    /// Maximum nesting depth of arrays (an array of scalars has depth 1).
    /// Nested arrays are read recursively: keep this small.
    pub max_array_depth: u32,
    /// Maximum number of array elements in the whole file, nested ones included.
    pub max_total_array_elems: u64,
    /// Maximum number of dimensions of a tensor (ggml has 4).
    pub max_dims: u32,
    /// Maximum value of `general.alignment`.
    pub max_alignment: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tensors: 1 << 16,
            max_kv: 1 << 16,
            max_key_len: (1 << 16) - 1,
            max_tensor_name_len: 1 << 10,
            max_string_len: 16 << 20,
            max_array_len: 1 << 24,
            max_array_depth: 8,
            max_total_array_elems: 1 << 26,
            max_dims: 4,
            max_alignment: 1 << 16,
        }
    }
}

// ---------------------------------------------------------------- cursor

/// A read position over a byte slice. Reads return `None` at end of input
/// and never panic.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, advancing past them.
    pub(crate) fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N as u64)?.try_into().ok()
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

// ---------------------------------------------------------------- values

/// The type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// The type for a GGUF type id.
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The size in bytes of a value of a fixed-size type.
    pub fn fixed_size(self) -> Option<u64> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes a value of this type can take in the file.
    fn min_encoded_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }

    /// The GGUF name of the type.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value. Strings borrow from the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(MetaArray<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> MetaValue<'a> {
    /// The type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value as `i128` (exact for all GGUF integer types).
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// An integer value of any width that fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// An integer value of any width that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// A float value (f32 widened to f64).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray<'a>> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short description for error messages: the type, with the element
    /// type for arrays.
    pub fn type_description(&self) -> String {
        match self {
            MetaValue::Array(a) => format!("array of {}", a.elem_type()),
            v => v.value_type().name().to_string(),
        }
    }
}

/// A metadata array. Fixed-size elements stay as raw bytes of the file and
/// are decoded on access; strings and nested arrays are indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaArray<'a> {
    elem_type: ValueType,
    repr: ArrayRepr<'a>,
}

#[derive(Debug, Clone, PartialEq)]
enum ArrayRepr<'a> {
    /// Little-endian elements of `elem_type.fixed_size()` bytes each.
    Scalars(&'a [u8]),
    Strings(Vec<&'a str>),
    Arrays(Vec<MetaArray<'a>>),
}

impl<'a> MetaArray<'a> {
    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.repr {
            ArrayRepr::Scalars(raw) => {
                let size = self.elem_type.fixed_size().unwrap_or(1) as usize;
                raw.len() / size.max(1)
            }
            ArrayRepr::Strings(v) => v.len(),
            ArrayRepr::Arrays(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element at `index`.
    pub fn get(&self, index: usize) -> Option<MetaValue<'a>> {
        match &self.repr {
            ArrayRepr::Strings(v) => v.get(index).map(|s| MetaValue::String(s)),
            ArrayRepr::Arrays(v) => v.get(index).map(|a| MetaValue::Array(a.clone())),
            ArrayRepr::Scalars(raw) => {
                let size = usize::try_from(self.elem_type.fixed_size()?).ok()?;
                let start = index.checked_mul(size)?;
                let bytes = raw.get(start..start.checked_add(size)?)?;
                decode_scalar(self.elem_type, bytes)
            }
        }
    }

    /// All elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = MetaValue<'a>> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }

    /// The elements as strings, if this is an array of strings.
    pub fn as_strs(&self) -> Option<&[&'a str]> {
        match &self.repr {
            ArrayRepr::Strings(v) => Some(v),
            _ => None,
        }
    }

    /// The nested arrays, if this is an array of arrays.
    pub fn as_arrays(&self) -> Option<&[MetaArray<'a>]> {
        match &self.repr {
            ArrayRepr::Arrays(v) => Some(v),
            _ => None,
        }
    }

    /// The elements as `i64`, if this is an array of integers that fit.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        if !matches!(
            self.elem_type,
            ValueType::U8
                | ValueType::I8
                | ValueType::U16
                | ValueType::I16
                | ValueType::U32
                | ValueType::I32
                | ValueType::U64
                | ValueType::I64
        ) {
            return None;
        }
        self.iter().map(|v| v.as_i64()).collect()
    }

    /// The elements as `f64`, if this is an array of floats.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        if !matches!(self.elem_type, ValueType::F32 | ValueType::F64) {
            return None;
        }
        self.iter().map(|v| v.as_f64()).collect()
    }
}

fn decode_scalar<'a>(ty: ValueType, b: &[u8]) -> Option<MetaValue<'a>> {
    Some(match ty {
        ValueType::U8 => MetaValue::U8(u8::from_le_bytes(b.try_into().ok()?)),
        ValueType::I8 => MetaValue::I8(i8::from_le_bytes(b.try_into().ok()?)),
        ValueType::U16 => MetaValue::U16(u16::from_le_bytes(b.try_into().ok()?)),
        ValueType::I16 => MetaValue::I16(i16::from_le_bytes(b.try_into().ok()?)),
        ValueType::U32 => MetaValue::U32(u32::from_le_bytes(b.try_into().ok()?)),
        ValueType::I32 => MetaValue::I32(i32::from_le_bytes(b.try_into().ok()?)),
        ValueType::F32 => MetaValue::F32(f32::from_le_bytes(b.try_into().ok()?)),
        ValueType::U64 => MetaValue::U64(u64::from_le_bytes(b.try_into().ok()?)),
        ValueType::I64 => MetaValue::I64(i64::from_le_bytes(b.try_into().ok()?)),
        ValueType::F64 => MetaValue::F64(f64::from_le_bytes(b.try_into().ok()?)),
        ValueType::Bool => match b {
            [0] => MetaValue::Bool(false),
            [1] => MetaValue::Bool(true),
            _ => return None,
        },
        ValueType::String | ValueType::Array => return None,
    })
}

/// The metadata key/value pairs, in file order, with lookup by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata<'a> {
    entries: Vec<(&'a str, MetaValue<'a>)>,
    index: HashMap<&'a str, usize>,
}

impl<'a> Metadata<'a> {
    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue<'a>> {
        self.index
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|(_, v)| v)
    }

    /// All pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &MetaValue<'a>)> + '_ {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A string value (`None` if absent or not a string).
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(|v| v.as_str())
    }

    /// An integer value of any width that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }

    /// A float value.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.as_f64())
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.as_bool())
    }

    pub fn get_array(&self, key: &str) -> Option<&MetaArray<'a>> {
        self.get(key).and_then(|v| v.as_array())
    }
}

// ---------------------------------------------------------------- tensors

/// One tensor's description, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The llama.cpp tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` varies fastest (the row length).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: u64,
    /// Number of bytes of data.
    pub n_bytes: u64,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
}

impl TensorInfo {
    /// The row-major (PyTorch / Hugging Face) shape: `dims` reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

// ---------------------------------------------------------------- file

/// A parsed GGUF file borrowing the bytes it was parsed from (typically a
/// memory map).
#[derive(Debug, Clone)]
pub struct GgufFile<'a> {
    bytes: &'a [u8],
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Metadata<'a>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// A lazily built description of what was being read, for error messages.
type What<'w> = &'w dyn Fn() -> String;

fn truncated(what: What<'_>, c: &Cursor<'_>, needed: u64) -> GgufError {
    GgufError::Truncated {
        what: what(),
        offset: c.pos(),
        needed: needed.saturating_sub(c.remaining() as u64).max(1),
    }
}

fn read_u32(c: &mut Cursor<'_>, what: What<'_>) -> Result<u32, GgufError> {
    c.u32().ok_or_else(|| truncated(what, c, 4))
}

fn read_u64(c: &mut Cursor<'_>, what: What<'_>) -> Result<u64, GgufError> {
    c.u64().ok_or_else(|| truncated(what, c, 8))
}

/// Reads a length-prefixed UTF-8 string of at most `max` bytes.
fn read_str<'a>(c: &mut Cursor<'a>, max: u64, what: What<'_>) -> Result<&'a str, GgufError> {
    let len = read_u64(c, &|| format!("length of {}", what()))?;
    if len > max {
        return Err(GgufError::StringTooLong {
            what: what(),
            len,
            max,
        });
    }
    let bytes = c.take(len).ok_or_else(|| truncated(what, c, len))?;
    std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { what: what() })
}

struct ValueReader<'l> {
    limits: &'l Limits,
    /// Array elements still allowed in the file.
    elems_left: u64,
}

impl ValueReader<'_> {
    fn value<'a>(
        &mut self,
        c: &mut Cursor<'a>,
        ty: ValueType,
        key: &str,
    ) -> Result<MetaValue<'a>, GgufError> {
        let what = || format!("value of key `{key}`");
        match ty {
            ValueType::String => {
                read_str(c, self.limits.max_string_len, &what).map(MetaValue::String)
            }
            ValueType::Array => self.array(c, key, 1).map(MetaValue::Array),
            _ => {
                let size = ty.fixed_size().unwrap_or(1);
                let bytes = c.take(size).ok_or_else(|| truncated(&what, c, size))?;
                decode_scalar(ty, bytes).ok_or_else(|| match bytes {
                    [b] if ty == ValueType::Bool => GgufError::InvalidBool {
                        key: key.to_string(),
                        value: *b,
                    },
                    _ => truncated(&what, c, size),
                })
            }
        }
    }

    fn array<'a>(
        &mut self,
        c: &mut Cursor<'a>,
        key: &str,
        depth: u32,
    ) -> Result<MetaArray<'a>, GgufError> {
        if depth > self.limits.max_array_depth {
            return Err(GgufError::ArrayTooDeep {
                key: key.to_string(),
                max: self.limits.max_array_depth,
            });
        }
        let what = || format!("array of key `{key}`");
        let ty_id = read_u32(c, &what)?;
        let elem_type = ValueType::from_id(ty_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_string(),
            ty: ty_id,
        })?;
        let len = read_u64(c, &what)?;
        if len > self.limits.max_array_len {
            return Err(GgufError::ArrayTooLong {
                key: key.to_string(),
                len,
                max: self.limits.max_array_len,
            });
        }
        self.elems_left =
            self.elems_left
                .checked_sub(len)
                .ok_or_else(|| GgufError::TooManyArrayElements {
                    key: key.to_string(),
                    max: self.limits.max_total_array_elems,
                })?;
        // Every element takes at least `min_encoded_size` bytes: refuse a
        // count the rest of the file cannot hold before allocating for it.
        let remaining = c.remaining();
        match len.checked_mul(elem_type.min_encoded_size()) {
            Some(need) if need <= remaining as u64 => {}
            _ => {
                return Err(GgufError::ArrayExceedsFile {
                    key: key.to_string(),
                    len,
                    remaining,
                })
            }
        }
        // `len * min_size <= remaining <= usize::MAX`, so `len` fits in usize.
        let n = usize::try_from(len).map_err(|_| GgufError::ArrayExceedsFile {
            key: key.to_string(),
            len,
            remaining,
        })?;
        let repr = match elem_type {
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    let s = read_str(c, self.limits.max_string_len, &|| {
                        format!("element {i} of key `{key}`")
                    })?;
                    v.push(s);
                }
                ArrayRepr::Strings(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(c, key, depth + 1)?);
                }
                ArrayRepr::Arrays(v)
            }
            scalar => {
                let size = scalar.fixed_size().unwrap_or(1);
                let total = len.saturating_mul(size);
                let raw = c.take(total).ok_or_else(|| truncated(&what, c, total))?;
                if scalar == ValueType::Bool {
                    if let Some(&bad) = raw.iter().find(|&&b| b > 1) {
                        return Err(GgufError::InvalidBool {
                            key: key.to_string(),
                            value: bad,
                        });
                    }
                }
                ArrayRepr::Scalars(raw)
            }
        };
        Ok(MetaArray { elem_type, repr })
    }
}

/// Smallest encoding of one tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_LEN: u64 = 8 + 4 + 4 + 8;
/// Smallest encoding of one key/value pair: key length, type, 1-byte value.
const MIN_KV_LEN: u64 = 8 + 4 + 1;

impl<'a> GgufFile<'a> {
    /// Parses and validates a whole GGUF file held in `bytes`.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Self, GgufError> {
        let mut c = Cursor::new(bytes);

        // ---- header
        let magic: [u8; 4] = c
            .array()
            .ok_or_else(|| truncated(&|| "magic".into(), &c, 4))?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = read_u32(&mut c, &|| "version".into())?;
        match version {
            2 | 3 => {}
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => return Err(GgufError::BigEndian),
            v => return Err(GgufError::UnsupportedVersion(v)),
        }
        let tensor_count = read_u64(&mut c, &|| "tensor count".into())?;
        let kv_count = read_u64(&mut c, &|| "metadata count".into())?;
        if tensor_count > limits.max_tensors {
            return Err(GgufError::TooManyTensors {
                count: tensor_count,
                max: limits.max_tensors,
            });
        }
        if kv_count > limits.max_kv {
            return Err(GgufError::TooManyKv {
                count: kv_count,
                max: limits.max_kv,
            });
        }

        // ---- metadata
        let kv_cap = capacity(kv_count, c.remaining(), MIN_KV_LEN);
        let mut entries: Vec<(&'a str, MetaValue<'a>)> = Vec::with_capacity(kv_cap);
        let mut index: HashMap<&'a str, usize> = HashMap::with_capacity(kv_cap);
        let mut values = ValueReader {
            limits,
            elems_left: limits.max_total_array_elems,
        };
        for i in 0..kv_count {
            let key = read_str(&mut c, limits.max_key_len, &|| format!("key #{i}"))?;
            let ty_id = read_u32(&mut c, &|| format!("type of key `{key}`"))?;
            let ty = ValueType::from_id(ty_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.to_string(),
                ty: ty_id,
            })?;
            let value = values.value(&mut c, ty, key)?;
            if index.insert(key, entries.len()).is_some() {
                return Err(GgufError::DuplicateKey {
                    key: key.to_string(),
                });
            }
            entries.push((key, value));
        }
        let metadata = Metadata { entries, index };

        // ---- alignment
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.as_u64().ok_or_else(|| GgufError::WrongMetadataType {
                    key: "general.alignment".into(),
                    expected: "unsigned integer",
                    found: v.type_description(),
                })?;
                if a == 0 || !a.is_power_of_two() || a > limits.max_alignment {
                    return Err(GgufError::BadAlignment {
                        value: a,
                        max: limits.max_alignment,
                    });
                }
                a
            }
        };

        // ---- tensor infos
        let t_cap = capacity(tensor_count, c.remaining(), MIN_TENSOR_INFO_LEN);
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(t_cap);
        let mut tensor_index: HashMap<String, usize> = HashMap::with_capacity(t_cap);
        for i in 0..tensor_count {
            let name = read_str(&mut c, limits.max_tensor_name_len, &|| {
                format!("name of tensor #{i}")
            })?;
            let info = read_tensor_info(&mut c, name, alignment, limits)?;
            if tensor_index.contains_key(name) {
                return Err(GgufError::DuplicateTensor {
                    name: name.to_string(),
                });
            }
            tensor_index.insert(name.to_string(), tensors.len());
            tensors.push(info);
        }

        // ---- data section
        let end_of_infos = c.pos() as u64;
        let data_offset =
            align_up(end_of_infos, alignment).ok_or(GgufError::DataSectionOutOfBounds {
                start: u64::MAX,
                file_len: bytes.len(),
            })?;
        let file_len = bytes.len() as u64;
        if !tensors.is_empty() && data_offset > file_len {
            return Err(GgufError::DataSectionOutOfBounds {
                start: data_offset,
                file_len: bytes.len(),
            });
        }
        for t in &mut tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => t.file_offset = start,
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        tensor: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len: bytes.len(),
                    })
                }
            }
        }
        check_overlaps(&tensors)?;

        Ok(GgufFile {
            bytes,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            tensor_index,
        })
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of each tensor's offset.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata<'a> {
        &self.metadata
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&'a str> {
        self.metadata.get_str("general.architecture")
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// The raw bytes of a tensor of this file (empty for a tensor that is
    /// not from this file and lies outside it).
    pub fn tensor_data(&self, t: &TensorInfo) -> &'a [u8] {
        let range = usize::try_from(t.file_offset).ok().and_then(|start| {
            let len = usize::try_from(t.n_bytes).ok()?;
            Some(start..start.checked_add(len)?)
        });
        range.and_then(|r| self.bytes.get(r)).unwrap_or(&[])
    }
}

/// How many entries to reserve: the count, bounded by what the rest of the
/// file could hold.
fn capacity(count: u64, remaining: usize, min_len: u64) -> usize {
    let fit = remaining as u64 / min_len;
    usize::try_from(count.min(fit)).unwrap_or(0)
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    let rem = x % alignment;
    if rem == 0 {
        Some(x)
    } else {
        x.checked_add(alignment - rem)
    }
}

fn read_tensor_info(
    c: &mut Cursor<'_>,
    name: &str,
    alignment: u64,
    limits: &Limits,
) -> Result<TensorInfo, GgufError> {
    let what = || format!("info of tensor `{name}`");
    let n_dims = read_u32(c, &what)?;
    if n_dims > limits.max_dims {
        return Err(GgufError::TooManyDims {
            tensor: name.to_string(),
            n_dims,
            max: limits.max_dims,
        });
    }
    // Refuse a dims count the file cannot hold before reserving for it.
    let dims_len = u64::from(n_dims) * 8;
    if dims_len > c.remaining() as u64 {
        return Err(truncated(&what, c, dims_len));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut n_elements: u64 = 1;
    for index in 0..n_dims as usize {
        let d = read_u64(c, &what)?;
        // ggml keeps dims as int64_t.
        if d > i64::MAX as u64 {
            return Err(GgufError::DimTooLarge {
                tensor: name.to_string(),
                index,
                value: d,
            });
        }
        dims.push(d);
        n_elements = match n_elements.checked_mul(d) {
            Some(n) if n <= i64::MAX as u64 => n,
            _ => {
                return Err(GgufError::ElementCountOverflow {
                    tensor: name.to_string(),
                    dims,
                })
            }
        };
    }
    let ty_id = read_u32(c, &what)?;
    let ggml_type = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnknownTensorType {
        tensor: name.to_string(),
        ty: ty_id,
    })?;
    let offset = read_u64(c, &what)?;

    let block = ggml_type.block_size();
    let dim0 = dims.first().copied().unwrap_or(1);
    if dim0 % block != 0 {
        return Err(GgufError::BlockMisaligned {
            tensor: name.to_string(),
            ty: ggml_type,
            dim0,
            block,
        });
    }
    let n_bytes = ggml_type
        .bytes_for(n_elements)
        .ok_or_else(|| GgufError::ByteSizeOverflow {
            tensor: name.to_string(),
        })?;
    if offset % alignment != 0 {
        return Err(GgufError::MisalignedOffset {
            tensor: name.to_string(),
            offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dims,
        ggml_type,
        offset,
        n_elements,
        n_bytes,
        file_offset: 0,
    })
}

fn check_overlaps(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.file_offset);
    for pair in order.windows(2) {
        if let [a, b] = pair {
            // Bounds were checked, so `file_offset + n_bytes` does not overflow.
            if a.file_offset.saturating_add(a.n_bytes) > b.file_offset {
                return Err(GgufError::TensorsOverlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                });
            }
        }
    }
    Ok(())
}
