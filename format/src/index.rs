//! The index: the JSON document that describes every tensor, stream, frame and embedded file
//! (spec/FORMAT.md section 3). These types are its exact shape; `validate` checks what JSON cannot.

use serde::{Deserialize, Serialize};

use crate::Dtype;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub version: [u16; 2],
    pub alignment: u64,
    pub tensors: Vec<TensorEntry>,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub policy: PolicyRecord,
    #[serde(default)]
    pub provenance: Provenance,
    /// Present in the shards of a set (version 1.2, spec section 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<crate::shard::SetRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    #[serde(deserialize_with = "bounded::shape")]
    pub shape: Vec<u64>,
    /// Kept as a string so that an unknown codec is reported by name, with its tensor.
    pub codec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<u32>,
    pub source_xxh3: String,
    pub streams: Vec<StreamEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamEntry {
    pub role: String,
    pub len: u64,
    pub xxh3: String,
    pub frames: Vec<FrameEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameEntry {
    pub offset: u64,
    pub stored: u64,
    pub decoded: u64,
    #[serde(with = "hex64")]
    pub xxh3: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub len: u64,
    pub xxh3: String,
    pub frames: Vec<FrameEntry>,
}

/// The policy as given; the policy as resolved is each tensor's codec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    #[serde(default)]
    pub preset: String,
    #[serde(default)]
    pub quant: String,
    #[serde(default)]
    pub group_size: u32,
    #[serde(default, deserialize_with = "bounded::vec::<_, _, 4096>")]
    pub rules: Vec<String>,
    #[serde(default)]
    pub lossless: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    #[serde(default)]
    pub tool: String,
    #[serde(default)]
    pub frame_size: u64,
    #[serde(default)]
    pub zstd_level: i32,
    #[serde(default, deserialize_with = "bounded::vec::<_, _, 65536>")]
    pub source_files: Vec<SourceFile>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub len: u64,
    pub xxh3: String,
}

impl TensorEntry {
    /// Element count, or `None` when the shape's product overflows 64 bits.
    pub fn numel(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Stored bytes over all frames.
    pub fn stored_bytes(&self) -> u64 {
        self.streams
            .iter()
            .flat_map(|s| s.frames.iter())
            .map(|f| f.stored)
            .sum()
    }

    /// Bytes of the tensor in its source dtype (what unpack restores).
    pub fn raw_bytes(&self) -> u64 {
        self.numel()
            .unwrap_or(0)
            .saturating_mul(self.dtype.size() as u64)
    }

    /// Decoded payload bytes: what the tensor occupies in memory when resident in its codec's form.
    pub fn payload_bytes(&self) -> u64 {
        self.streams.iter().map(|s| s.len).sum()
    }
}

mod hex64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(D::Error::custom(format!(
                "frame hash '{s}' is not 16 lowercase hex digits"
            )));
        }
        u64::from_str_radix(&s, 16).map_err(D::Error::custom)
    }
}

/// Lists whose JSON elements can be far smaller than their parsed form (`""` is 3 bytes of JSON
/// and 24 of `String`) are capped while parsing, so an index's memory stays a small multiple of its
/// length whatever it holds.
pub(crate) mod bounded {
    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
    use std::marker::PhantomData;

    /// A tensor shape: far more dimensions than any limit allows is refused while parsing.
    pub fn shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        capped::<D, u64, 64>(d, "dimensions in a tensor shape")
    }

    pub fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>, const MAX: usize>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        capped::<D, T, MAX>(d, "elements")
    }

    fn capped<'de, D: Deserializer<'de>, T: Deserialize<'de>, const MAX: usize>(
        d: D,
        what: &'static str,
    ) -> Result<Vec<T>, D::Error> {
        struct Bounded<T, const MAX: usize>(PhantomData<T>, &'static str);
        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Bounded<T, MAX> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a list of at most {MAX} {}", self.1)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    if out.len() == MAX {
                        return Err(A::Error::custom(format!("more than {MAX} {}", self.1)));
                    }
                    out.push(v);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Bounded::<T, MAX>(PhantomData, what))
    }
}
