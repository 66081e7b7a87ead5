//! The GGUF container, version 3 (llama.cpp's `docs/gguf.md`): the magic `GGUF`, the version, the
//! tensor and metadata counts, the metadata as typed key/value pairs, each tensor's name, dimensions
//! (innermost first), type and offset, then the tensor data, every piece aligned to 32 bytes. All
//! numbers little-endian.
use std::io::{self, Write};

/// The alignment of the data section and of each tensor in it (`general.alignment`'s default).
pub const ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// An array of strings.
    Strs(Vec<String>),
    /// An array of 32-bit integers.
    I32s(Vec<i32>),
}

impl Value {
    /// GGUF's type code: 4 uint32, 5 int32, 6 float32, 7 bool, 8 string, 9 array.
    fn code(&self) -> u32 {
        match self {
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Strs(_) | Value::I32s(_) => 9,
        }
    }
}

/// One tensor: its GGUF name, its dimensions innermost first (a `(rows, cols)` matrix is `[cols, rows]`),
/// its ggml type code and its bytes, already encoded in that type.
pub struct TensorData {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub bytes: Vec<u8>,
}

fn string(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::Str(s) => string(w, s),
        Value::Strs(items) => {
            w.write_all(&8u32.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|s| string(w, s))
        }
        Value::I32s(items) => {
            w.write_all(&5u32.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
        }
    }
}

fn padding(len: u64) -> usize {
    ((ALIGNMENT - len % ALIGNMENT) % ALIGNMENT) as usize
}

/// Writes a whole GGUF file: `metadata` in order, then `tensors` in order.
pub fn write(w: &mut impl Write, metadata: &[(String, Value)], tensors: &[TensorData]) -> io::Result<()> {
    let mut head = Vec::new();
    head.write_all(b"GGUF")?;
    head.write_all(&3u32.to_le_bytes())?;
    head.write_all(&(tensors.len() as u64).to_le_bytes())?;
    head.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (key, v) in metadata {
        string(&mut head, key)?;
        head.write_all(&v.code().to_le_bytes())?;
        value(&mut head, v)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        string(&mut head, &t.name)?;
        head.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        t.dims.iter().try_for_each(|d| head.write_all(&d.to_le_bytes()))?;
        head.write_all(&t.ggml_type.to_le_bytes())?;
        head.write_all(&offset.to_le_bytes())?;
        offset += t.bytes.len() as u64;
        offset += padding(offset) as u64;
    }
    head.resize(head.len() + padding(head.len() as u64), 0);
    w.write_all(&head)?;
    for t in tensors {
        w.write_all(&t.bytes)?;
        w.write_all(&vec![0u8; padding(t.bytes.len() as u64)])?;
    }
    w.flush()
}
