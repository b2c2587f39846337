//! A GGUF v3 writer over any [`Write`]: little endian, the metadata and tensor table first, then
//! each tensor's data in the order declared, every tensor starting at a multiple of the
//! alignment (`general.alignment`, 32 unless the metadata says otherwise).
//!
//! The header is written from declarations alone (name, shape, type), so a tensor's data can be
//! streamed in pieces of any size afterwards and nothing has to be held whole; the writer checks
//! that every tensor gets exactly the bytes its type and shape need.
//!
//! ```text
//! "GGUF" u32 version=3  u64 n_tensors  u64 n_kv
//! n_kv × (string key, u32 value type, value)
//! n_tensors × (string name, u32 n_dims, u64 dims[n_dims] innermost first, u32 type, u64 offset)
//! zero padding to the alignment, then the data (each tensor zero-padded to the alignment)
//! ```

use std::collections::HashSet;
use std::io::{self, Write};

use crate::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::types::GgmlType;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// An array of values of one scalar type (not checked to be uniform beyond the first
    /// element's type; [`GgufWriter::new`] refuses a mixed array).
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF value type id.
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    pub fn strs<S: AsRef<str>>(v: &[S]) -> Value {
        Value::Array(
            v.iter()
                .map(|s| Value::Str(s.as_ref().to_string()))
                .collect(),
        )
    }
}

/// A tensor as the header declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDecl {
    pub name: String,
    /// Row-major (outermost dimension first, as safetensors and PyTorch write it); the file
    /// stores it innermost first, as ggml's `ne`.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorDecl {
    /// Bytes of the tensor's data (`None`: the innermost dimension is not a whole number of
    /// the type's blocks, or the size overflows).
    pub fn data_len(&self) -> Option<u64> {
        let inner = self.shape.last().copied().unwrap_or(1);
        if inner % self.ty.block_size() != 0 {
            return None;
        }
        let n = self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        self.ty.bytes_for(n)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Writes one GGUF file: [`GgufWriter::new`] writes the header, then each declared tensor's
/// data goes through [`GgufWriter::write`] (any number of pieces) and
/// [`GgufWriter::end_tensor`], in declaration order; [`GgufWriter::finish`] checks that all
/// were written.
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    /// Bytes written so far.
    pos: u64,
    /// Each declared tensor's name and data length.
    tensors: Vec<(String, u64)>,
    /// The tensor being written, and its bytes so far.
    current: usize,
    in_current: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header: `metadata` in the order given (keys must be unique; a
    /// `general.alignment` entry, a u32 power of two, sets the alignment), then `tensors`.
    pub fn new(out: W, metadata: &[(String, Value)], tensors: &[TensorDecl]) -> io::Result<Self> {
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut keys = HashSet::new();
        for (k, v) in metadata {
            if !keys.insert(k.as_str()) {
                return Err(invalid(format!("metadata key {k} given twice")));
            }
            if k == "general.alignment" {
                match v {
                    Value::U32(a) if a.is_power_of_two() => alignment = *a as u64,
                    _ => {
                        return Err(invalid(format!(
                            "general.alignment must be a u32 power of two, not {v:?}"
                        )))
                    }
                }
            }
            if let Value::Array(items) = v {
                if let Some(first) = items.first() {
                    let t = first.type_id();
                    if t == 9 || items.iter().any(|x| x.type_id() != t) {
                        return Err(invalid(format!(
                            "metadata {k}: arrays must hold scalars of one type"
                        )));
                    }
                }
            }
        }
        let mut w = GgufWriter {
            out,
            alignment,
            pos: 0,
            tensors: Vec::with_capacity(tensors.len()),
            current: 0,
            in_current: 0,
        };
        let mut head = Vec::with_capacity(1 << 16);
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut head, v);
            w.flush_head(&mut head)?;
        }
        let mut names = HashSet::new();
        let mut offset = 0u64;
        for t in tensors {
            if !names.insert(t.name.as_str()) {
                return Err(invalid(format!("tensor {} declared twice", t.name)));
            }
            let len = t.data_len().ok_or_else(|| {
                invalid(format!(
                    "tensor {}: shape {:?} does not fit type {}",
                    t.name,
                    t.shape,
                    t.ty.name()
                ))
            })?;
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(len.next_multiple_of(alignment))
                .ok_or_else(|| invalid("the data size overflows".into()))?;
            w.tensors.push((t.name.clone(), len));
            w.flush_head(&mut head)?;
        }
        w.out.write_all(&head)?;
        w.pos += head.len() as u64;
        w.pad()?;
        Ok(w)
    }

    fn flush_head(&mut self, head: &mut Vec<u8>) -> io::Result<()> {
        if head.len() >= 1 << 16 {
            self.out.write_all(head)?;
            self.pos += head.len() as u64;
            head.clear();
        }
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = self.pos.next_multiple_of(self.alignment) - self.pos;
        self.out.write_all(&vec![0u8; n as usize])?;
        self.pos += n;
        Ok(())
    }

    /// The name of the tensor whose data comes next (`None` once all are written).
    pub fn current(&self) -> Option<&str> {
        self.tensors.get(self.current).map(|(n, _)| n.as_str())
    }

    /// Appends `bytes` to the current tensor's data.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some((name, len)) = self.tensors.get(self.current) else {
            return Err(invalid("data written after the last tensor".into()));
        };
        if self.in_current + bytes.len() as u64 > *len {
            return Err(invalid(format!(
                "tensor {name}: more than its {len} bytes written"
            )));
        }
        self.out.write_all(bytes)?;
        self.in_current += bytes.len() as u64;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Ends the current tensor (which must have all its bytes), padding to the alignment.
    pub fn end_tensor(&mut self) -> io::Result<()> {
        let Some((name, len)) = self.tensors.get(self.current) else {
            return Err(invalid("no tensor left to end".into()));
        };
        if self.in_current != *len {
            return Err(invalid(format!(
                "tensor {name}: {} of its {len} bytes written",
                self.in_current
            )));
        }
        self.current += 1;
        self.in_current = 0;
        self.pad()
    }

    /// Checks that every tensor was written, flushes, and returns the writer and the file size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        if let Some(name) = self.current() {
            return Err(invalid(format!("tensor {name} was not written")));
        }
        self.out.flush()?;
        Ok((self.out, self.pos))
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.push(*x as u8),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::Str(s) => put_str(b, s),
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            // An empty array is written as an array of u8 (its type is not observable).
            let t = items.first().map_or(0, Value::type_id);
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(b, x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{GgufFile, Limits};

    #[test]
    fn written_file_reads_back() {
        let md = vec![
            ("general.architecture".to_string(), Value::str("llama")),
            ("general.alignment".to_string(), Value::U32(32)),
            ("x.f".to_string(), Value::F32(1.5)),
            ("x.toks".to_string(), Value::strs(&["a", "b c"])),
            (
                "x.ids".to_string(),
                Value::Array(vec![Value::I32(1), Value::I32(-2)]),
            ),
        ];
        let tensors = vec![
            TensorDecl {
                name: "a".into(),
                shape: vec![2, 3],
                ty: GgmlType::F32,
            },
            TensorDecl {
                name: "b".into(),
                shape: vec![1, 32],
                ty: GgmlType::Q8_0,
            },
        ];
        let mut w = GgufWriter::new(Vec::new(), &md, &tensors).unwrap();
        let a: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.write(&a[..5]).unwrap();
        assert!(w.end_tensor().is_err());
        w.write(&a[5..]).unwrap();
        w.end_tensor().unwrap();
        assert!(w.write(&[0; 35]).is_err());
        w.write(&[0; 34]).unwrap();
        w.end_tensor().unwrap();
        let (bytes, n) = w.finish().unwrap();
        assert_eq!(n, bytes.len() as u64);
        let f = GgufFile::parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.metadata().get_str("general.architecture"), Some("llama"));
        let t = f.tensor("a").unwrap();
        assert_eq!(t.shape(), vec![2, 3]);
        assert_eq!(f.tensor_data(t), &a[..]);
        assert_eq!(f.tensor("b").unwrap().ggml_type, GgmlType::Q8_0);
    }

    #[test]
    fn bad_declarations_are_refused() {
        let t = |shape: Vec<u64>, ty| TensorDecl {
            name: "t".into(),
            shape,
            ty,
        };
        assert!(GgufWriter::new(Vec::new(), &[], &[t(vec![2, 33], GgmlType::Q4_1)]).is_err());
        assert!(GgufWriter::new(
            Vec::new(),
            &[],
            &[t(vec![2], GgmlType::F32), t(vec![2], GgmlType::F32)]
        )
        .is_err());
        let w = GgufWriter::new(Vec::new(), &[], &[t(vec![2], GgmlType::F32)]).unwrap();
        assert!(w.finish().is_err());
    }
}
