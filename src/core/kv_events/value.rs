//! A small generic msgpack value tree and its reader, bounded against hostile input.
//!
//! vLLM's batches change shape between releases (tagged arrays up to 0.23, tagged maps from
//! 0.24 and in SGLang, trailing fields added over time, non-minimal headers from msgspec), so
//! [`super::decode`] interprets a tree instead of deserializing a fixed serde model. The
//! reader never panics: lengths are checked against the bytes left, nesting is capped.

use super::error::DecodeError;

/// A msgpack value; ints are split by sign so that u64 >= 2^63 survives.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Value {
    Nil,
    Bool(bool),
    UInt(u64),
    /// Only negative values land here.
    NegInt(i64),
    Float(f64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Ext,
}

impl Value {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::UInt(_) | Value::NegInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bin(_) => "bin",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Ext => "ext",
        }
    }

    pub(super) fn as_str(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Deep enough for any real batch (batch → events → event → extra_keys → entry → item);
/// bounds recursion on hostile input.
const MAX_DEPTH: usize = 32;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - (self.buf.len() - self.pos),
            }),
        }
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.be::<1>()?[0])
    }
    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(u16::from_be_bytes(self.be()?) as usize)
    }
    fn u32(&mut self) -> Result<usize, DecodeError> {
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, DecodeError> {
        Ok(self.take(n)?.to_vec())
    }

    /// Every element needs at least one byte, so a declared length beyond the remaining
    /// input is rejected before allocating for it.
    fn check_len(&self, n: usize) -> Result<(), DecodeError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - left,
            });
        }
        Ok(())
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        self.check_len(n)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(v))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        self.check_len(n.saturating_mul(2))?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let val = self.value(depth + 1)?;
            v.push((k, val));
        }
        Ok(Value::Map(v))
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep { max: MAX_DEPTH });
        }
        let offset = self.pos;
        let m = self.u8()?;
        Ok(match m {
            0x00..=0x7f => Value::UInt(u64::from(m)),
            0x80..=0x8f => return self.map(usize::from(m & 0x0f), depth),
            0x90..=0x9f => return self.array(usize::from(m & 0x0f), depth),
            0xa0..=0xbf => Value::Str(self.bytes(usize::from(m & 0x1f))?),
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let n = usize::from(self.u8()?);
                Value::Bin(self.bytes(n)?)
            }
            0xc5 => {
                let n = self.u16()?;
                Value::Bin(self.bytes(n)?)
            }
            0xc6 => {
                let n = self.u32()?;
                Value::Bin(self.bytes(n)?)
            }
            0xc7 => {
                let n = usize::from(self.u8()?);
                self.take(n + 1)?;
                Value::Ext
            }
            0xc8 => {
                let n = self.u16()?;
                self.take(n + 1)?;
                Value::Ext
            }
            0xc9 => {
                let n = self.u32()?;
                self.take(n.saturating_add(1))?;
                Value::Ext
            }
            0xca => Value::Float(f64::from(f32::from_be_bytes(self.be()?))),
            0xcb => Value::Float(f64::from_be_bytes(self.be()?)),
            0xcc => Value::UInt(u64::from(self.u8()?)),
            0xcd => Value::UInt(u64::from(u16::from_be_bytes(self.be()?))),
            0xce => Value::UInt(u64::from(u32::from_be_bytes(self.be()?))),
            0xcf => Value::UInt(u64::from_be_bytes(self.be()?)),
            0xd0 => int(i64::from(i8::from_be_bytes(self.be()?))),
            0xd1 => int(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => int(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => int(i64::from_be_bytes(self.be()?)),
            0xd4..=0xd8 => {
                let n = 1usize << (m - 0xd4);
                self.take(n + 1)?;
                Value::Ext
            }
            0xd9 => {
                let n = usize::from(self.u8()?);
                Value::Str(self.bytes(n)?)
            }
            0xda => {
                let n = self.u16()?;
                Value::Str(self.bytes(n)?)
            }
            0xdb => {
                let n = self.u32()?;
                Value::Str(self.bytes(n)?)
            }
            0xdc => {
                let n = self.u16()?;
                return self.array(n, depth);
            }
            0xdd => {
                let n = self.u32()?;
                return self.array(n, depth);
            }
            0xde => {
                let n = self.u16()?;
                return self.map(n, depth);
            }
            0xdf => {
                let n = self.u32()?;
                return self.map(n, depth);
            }
            0xe0..=0xff => Value::NegInt(i64::from(m as i8)),
            0xc1 => return Err(DecodeError::BadMarker { offset, marker: m }),
        })
    }
}

/// Signed msgpack ints that are non-negative are normalised to `UInt`.
fn int(v: i64) -> Value {
    if v >= 0 {
        Value::UInt(v as u64)
    } else {
        Value::NegInt(v)
    }
}

/// Reads exactly one value from `payload`; trailing bytes are an error.
pub(super) fn read_value(payload: &[u8]) -> Result<Value, DecodeError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let root = r.value(0)?;
    if r.pos != payload.len() {
        return Err(DecodeError::TrailingBytes {
            trailing: payload.len() - r.pos,
        });
    }
    Ok(root)
}
