//! Msgpack codec for vLLM's (and SGLang's) `KVEventBatch` payloads.
//!
//! Decoding goes through a small generic msgpack value tree rather than a typed serde model
//! because the wire shape varies by engine and release (tagged arrays up to vLLM 0.23, tagged
//! maps from 0.24 and in SGLang, trailing fields added over time, non-minimal headers from
//! msgspec). Interpreting a tree lets one decoder accept all of them and ignore what it does
//! not know. Encoding is hand-written so that the bytes match vLLM's msgspec output exactly,
//! which lets the mock engine stand in for a real one byte for byte.

use super::types::{BlockRemoved, BlockStored, EngineHash, KvEvent, KvEventBatch};

/// Why a payload could not be decoded as a KV-event batch.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("msgpack truncated: needed {needed} more byte(s) at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("unsupported msgpack marker 0x{marker:02x} at offset {offset}")]
    BadMarker { offset: usize, marker: u8 },
    #[error("msgpack nesting deeper than {max}")]
    TooDeep { max: usize },
    #[error("{trailing} trailing byte(s) after the batch")]
    TrailingBytes { trailing: usize },
    #[error("batch must be an array or map, got {got}")]
    BatchShape { got: &'static str },
    #[error("batch has no events (array of {len} element(s) or map without `events`)")]
    MissingEvents { len: usize },
    #[error("field `{field}`: expected {expected}, got {got}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("field `{field}`: value {value} out of range")]
    OutOfRange { field: &'static str, value: i128 },
    #[error("event {index}: {reason}")]
    BadEvent { index: usize, reason: String },
}

/// Which event shape to encode: vLLM switched from tagged arrays to tagged maps in 0.24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// vLLM >= 0.24 (and SGLang): each event is a map whose first key is `"type"`.
    Maps,
    /// vLLM <= 0.23: each event is `[tag, every field...]` (0.23 field set).
    Arrays,
}

// ---------------------------------------------------------------------------------------
// Generic msgpack value tree.
// ---------------------------------------------------------------------------------------

/// A msgpack value; ints are split by sign so that u64 >= 2^63 survives.
#[derive(Clone, Debug, PartialEq)]
enum Value {
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
    fn kind(&self) -> &'static str {
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

    fn as_str(&self) -> Option<&[u8]> {
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

// ---------------------------------------------------------------------------------------
// Interpretation.
// ---------------------------------------------------------------------------------------

fn type_err(field: &'static str, expected: &'static str, v: &Value) -> DecodeError {
    DecodeError::FieldType {
        field,
        expected,
        got: v.kind(),
    }
}

fn get_i64(field: &'static str, v: &Value) -> Result<i64, DecodeError> {
    match *v {
        Value::UInt(u) => i64::try_from(u).map_err(|_| DecodeError::OutOfRange {
            field,
            value: i128::from(u),
        }),
        Value::NegInt(i) => Ok(i),
        _ => Err(type_err(field, "int", v)),
    }
}

fn get_u32(field: &'static str, v: &Value) -> Result<u32, DecodeError> {
    let i = get_i64(field, v)?;
    u32::try_from(i).map_err(|_| DecodeError::OutOfRange {
        field,
        value: i128::from(i),
    })
}

fn opt<T>(
    v: Option<&Value>,
    f: impl FnOnce(&Value) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => f(v).map(Some),
    }
}

fn get_string(field: &'static str, v: &Value) -> Result<String, DecodeError> {
    match v {
        Value::Str(s) => Ok(String::from_utf8_lossy(s).into_owned()),
        _ => Err(type_err(field, "str", v)),
    }
}

/// vLLM sends u64 (or bin in bytes mode); SGLang sends i64, kept as its bit pattern so that
/// stored and removed hashes still match.
fn get_hash(field: &'static str, v: &Value) -> Result<EngineHash, DecodeError> {
    match v {
        Value::UInt(u) => Ok(EngineHash::Int(*u)),
        Value::NegInt(i) => Ok(EngineHash::Int(*i as u64)),
        Value::Bin(b) => Ok(EngineHash::Bytes(b.clone())),
        _ => Err(type_err(field, "int or bin hash", v)),
    }
}

fn get_array<'v>(field: &'static str, v: &'v Value) -> Result<&'v [Value], DecodeError> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(type_err(field, "array", v)),
    }
}

fn get_hashes(field: &'static str, v: &Value) -> Result<Vec<EngineHash>, DecodeError> {
    get_array(field, v)?
        .iter()
        .map(|h| get_hash(field, h))
        .collect()
}

/// SGLang's EAGLE bigram entries are `[a, b]`; the first id is the token at that position.
fn get_token_ids(v: &Value) -> Result<Vec<u32>, DecodeError> {
    get_array("token_ids", v)?
        .iter()
        .map(|t| match t {
            Value::Array(pair) => match pair.first() {
                Some(first) => get_u32("token_ids", first),
                None => Err(type_err("token_ids", "int or non-empty array", t)),
            },
            _ => get_u32("token_ids", t),
        })
        .collect()
}

/// Only whether a block carries any extra key matters to the router (its content is then
/// not determined by token ids alone), so entries collapse to a flag.
fn get_extra_keys(v: &Value) -> Result<Vec<bool>, DecodeError> {
    Ok(get_array("extra_keys", v)?
        .iter()
        .map(|e| !matches!(e, Value::Nil))
        .collect())
}

/// Field lookup over either an event map (by key) or a tagged array (by position).
enum Fields<'v> {
    Map(&'v [(Value, Value)]),
    Array(&'v [Value]),
}

impl<'v> Fields<'v> {
    /// `pos` is the field's index in the legacy array after the tag.
    fn get(&self, key: &str, pos: usize) -> Option<&'v Value> {
        match self {
            Fields::Map(m) => m
                .iter()
                .find(|(k, _)| k.as_str() == Some(key.as_bytes()))
                .map(|(_, v)| v),
            Fields::Array(a) => a.get(pos + 1),
        }
    }

    fn required(&self, key: &'static str, pos: usize) -> Result<&'v Value, DecodeError> {
        self.get(key, pos).ok_or(DecodeError::FieldType {
            field: key,
            expected: "present",
            got: "absent",
        })
    }
}

fn decode_event(v: &Value) -> Result<KvEvent, DecodeError> {
    let (tag, fields) = match v {
        Value::Map(m) => {
            let tag = m
                .iter()
                .find(|(k, _)| k.as_str() == Some(b"type"))
                .map(|(_, t)| t)
                .ok_or(DecodeError::FieldType {
                    field: "type",
                    expected: "present",
                    got: "absent",
                })?;
            (tag, Fields::Map(m))
        }
        Value::Array(a) => match a.first() {
            Some(tag) => (tag, Fields::Array(a)),
            None => return Err(type_err("event", "non-empty tagged array", v)),
        },
        _ => return Err(type_err("event", "map or array", v)),
    };
    let tag = tag.as_str().ok_or_else(|| type_err("type", "str", tag))?;
    match tag {
        b"BlockStored" => {
            let f = &fields;
            Ok(KvEvent::BlockStored(BlockStored {
                block_hashes: get_hashes("block_hashes", f.required("block_hashes", 0)?)?,
                parent_block_hash: opt(f.get("parent_block_hash", 1), |v| {
                    get_hash("parent_block_hash", v)
                })?,
                token_ids: get_token_ids(f.required("token_ids", 2)?)?,
                block_size: get_u32("block_size", f.required("block_size", 3)?)?,
                lora_id: opt(f.get("lora_id", 4), |v| get_i64("lora_id", v))?,
                medium: opt(f.get("medium", 5), |v| get_string("medium", v))?,
                lora_name: opt(f.get("lora_name", 6), |v| get_string("lora_name", v))?,
                extra_keys: opt(f.get("extra_keys", 7), get_extra_keys)?,
                group_idx: opt(f.get("group_idx", 8), |v| get_u32("group_idx", v))?,
                kv_cache_spec_kind: opt(f.get("kv_cache_spec_kind", 9), |v| {
                    get_string("kv_cache_spec_kind", v)
                })?,
                kv_cache_spec_sliding_window: opt(
                    f.get("kv_cache_spec_sliding_window", 10),
                    |v| get_u32("kv_cache_spec_sliding_window", v),
                )?,
            }))
        }
        b"BlockRemoved" => Ok(KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: get_hashes("block_hashes", fields.required("block_hashes", 0)?)?,
            medium: opt(fields.get("medium", 1), |v| get_string("medium", v))?,
            group_idx: opt(fields.get("group_idx", 2), |v| get_u32("group_idx", v))?,
        })),
        b"AllBlocksCleared" => Ok(KvEvent::AllBlocksCleared),
        other => Ok(KvEvent::Unknown {
            tag: String::from_utf8_lossy(other).into_owned(),
        }),
    }
}

fn get_ts(v: &Value) -> Result<f64, DecodeError> {
    match *v {
        Value::Float(f) => Ok(f),
        Value::UInt(u) => Ok(u as f64),
        Value::NegInt(i) => Ok(i as f64),
        _ => Err(type_err("ts", "float or int", v)),
    }
}

/// Decodes one payload frame into a batch.
///
/// Accepts every layout seen in the wild: `[ts, events]` (vLLM 0.9),
/// `[ts, events, dp_rank]` (later; extra trailing elements ignored), and a map batch with
/// `ts`/`events`/`data_parallel_rank`/`attn_dp_rank` (some nightly builds); events as tagged
/// arrays or tagged maps. Unknown event types decode to [`KvEvent::Unknown`].
pub fn decode_batch(payload: &[u8]) -> Result<KvEventBatch, DecodeError> {
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
    let (ts, events, rank) = match &root {
        Value::Array(a) => {
            let (Some(ts), Some(events)) = (a.first(), a.get(1)) else {
                return Err(DecodeError::MissingEvents { len: a.len() });
            };
            (Some(ts), events, a.get(2))
        }
        Value::Map(m) => {
            let get = |key: &[u8]| {
                m.iter()
                    .find(|(k, _)| k.as_str() == Some(key))
                    .map(|(_, v)| v)
            };
            let events = get(b"events").ok_or(DecodeError::MissingEvents { len: m.len() })?;
            let rank = match get(b"data_parallel_rank") {
                None | Some(Value::Nil) => get(b"attn_dp_rank"),
                some => some,
            };
            (get(b"ts"), events, rank)
        }
        other => return Err(DecodeError::BatchShape { got: other.kind() }),
    };
    let ts = match ts {
        Some(v) => get_ts(v)?,
        None => 0.0,
    };
    let events = get_array("events", events)?
        .iter()
        .enumerate()
        .map(|(index, e)| {
            decode_event(e).map_err(|err| DecodeError::BadEvent {
                index,
                reason: err.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data_parallel_rank = opt(rank, |v| get_i64("data_parallel_rank", v))?;
    Ok(KvEventBatch {
        ts,
        events,
        data_parallel_rank,
    })
}

// ---------------------------------------------------------------------------------------
// Encoding (msgspec-identical).
// ---------------------------------------------------------------------------------------

struct Writer(Vec<u8>);

impl Writer {
    fn nil(&mut self) {
        self.0.push(0xc0);
    }

    /// Minimal unsigned encoding, as msgspec writes Python ints >= 0.
    fn uint(&mut self, v: u64) {
        if v < 0x80 {
            self.0.push(v as u8);
        } else if v <= u64::from(u8::MAX) {
            self.0.extend_from_slice(&[0xcc, v as u8]);
        } else if v <= u64::from(u16::MAX) {
            self.0.push(0xcd);
            self.0.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= u64::from(u32::MAX) {
            self.0.push(0xce);
            self.0.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            self.0.push(0xcf);
            self.0.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// Minimal signed encoding; non-negative values use the unsigned forms.
    fn int(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else if v >= -32 {
            self.0.push(v as i8 as u8);
        } else if v >= i64::from(i8::MIN) {
            self.0.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= i64::from(i16::MIN) {
            self.0.push(0xd1);
            self.0.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= i64::from(i32::MIN) {
            self.0.push(0xd2);
            self.0.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            self.0.push(0xd3);
            self.0.extend_from_slice(&v.to_be_bytes());
        }
    }

    fn len_header(&mut self, n: usize, fix: u8, fix_max: usize, m8: Option<u8>, m16: u8, m32: u8) {
        if n <= fix_max {
            self.0.push(fix | n as u8);
        } else if let (Some(m8), true) = (m8, n <= usize::from(u8::MAX)) {
            self.0.extend_from_slice(&[m8, n as u8]);
        } else if n <= usize::from(u16::MAX) {
            self.0.push(m16);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.0.push(m32);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    fn array_len(&mut self, n: usize) {
        self.len_header(n, 0x90, 15, None, 0xdc, 0xdd);
    }

    fn map_len(&mut self, n: usize) {
        self.len_header(n, 0x80, 15, None, 0xde, 0xdf);
    }

    /// msgspec writes a map16 header for structs that could hold more than 15 fields,
    /// whatever the actual count (vLLM 0.33 BlockStored).
    fn map16(&mut self, n: usize) {
        self.0.push(0xde);
        self.0.extend_from_slice(&(n as u16).to_be_bytes());
    }

    fn str(&mut self, s: &str) {
        self.len_header(s.len(), 0xa0, 31, Some(0xd9), 0xda, 0xdb);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.nil(),
        }
    }

    fn opt_int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int(v),
            None => self.nil(),
        }
    }

    fn hash(&mut self, h: &EngineHash) {
        match h {
            EngineHash::Int(v) => self.uint(*v),
            EngineHash::Bytes(b) => self.bin(b),
        }
    }

    /// Bin has no fix form: bin8 up to 255 bytes.
    fn bin(&mut self, b: &[u8]) {
        if b.len() <= usize::from(u8::MAX) {
            self.0.extend_from_slice(&[0xc4, b.len() as u8]);
        } else if b.len() <= usize::from(u16::MAX) {
            self.0.push(0xc5);
            self.0.extend_from_slice(&(b.len() as u16).to_be_bytes());
        } else {
            self.0.push(0xc6);
            self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        }
        self.0.extend_from_slice(b);
    }

    fn hashes(&mut self, hs: &[EngineHash]) {
        self.array_len(hs.len());
        for h in hs {
            self.hash(h);
        }
    }

    fn opt_hash(&mut self, h: Option<&EngineHash>) {
        match h {
            Some(h) => self.hash(h),
            None => self.nil(),
        }
    }

    fn token_ids(&mut self, t: &[u32]) {
        self.array_len(t.len());
        for &id in t {
            self.uint(u64::from(id));
        }
    }

    /// Only the per-block flag is kept on decode, so a block with extra keys is written as
    /// an empty array: it decodes back to `true` but is not the engine's original content.
    fn extra_keys(&mut self, e: &[bool]) {
        self.array_len(e.len());
        for &has in e {
            if has {
                self.array_len(0);
            } else {
                self.nil();
            }
        }
    }
}

const STORED: &str = "BlockStored";
const REMOVED: &str = "BlockRemoved";
const CLEARED: &str = "AllBlocksCleared";

fn encode_stored_map(w: &mut Writer, s: &BlockStored) {
    let n = 8
        + usize::from(s.extra_keys.is_some())
        + usize::from(s.group_idx.is_some())
        + usize::from(s.kv_cache_spec_kind.is_some())
        + usize::from(s.kv_cache_spec_sliding_window.is_some());
    w.map16(n);
    w.str("type");
    w.str(STORED);
    w.str("block_hashes");
    w.hashes(&s.block_hashes);
    w.str("parent_block_hash");
    w.opt_hash(s.parent_block_hash.as_ref());
    w.str("token_ids");
    w.token_ids(&s.token_ids);
    w.str("block_size");
    w.uint(u64::from(s.block_size));
    w.str("lora_id");
    w.opt_int(s.lora_id);
    w.str("medium");
    w.opt_str(s.medium.as_deref());
    w.str("lora_name");
    w.opt_str(s.lora_name.as_deref());
    if let Some(e) = &s.extra_keys {
        w.str("extra_keys");
        w.extra_keys(e);
    }
    if let Some(g) = s.group_idx {
        w.str("group_idx");
        w.uint(u64::from(g));
    }
    if let Some(k) = &s.kv_cache_spec_kind {
        w.str("kv_cache_spec_kind");
        w.str(k);
    }
    if let Some(sw) = s.kv_cache_spec_sliding_window {
        w.str("kv_cache_spec_sliding_window");
        w.uint(u64::from(sw));
    }
}

fn encode_stored_array(w: &mut Writer, s: &BlockStored) {
    w.array_len(12);
    w.str(STORED);
    w.hashes(&s.block_hashes);
    w.opt_hash(s.parent_block_hash.as_ref());
    w.token_ids(&s.token_ids);
    w.uint(u64::from(s.block_size));
    w.opt_int(s.lora_id);
    w.opt_str(s.medium.as_deref());
    w.opt_str(s.lora_name.as_deref());
    match &s.extra_keys {
        Some(e) => w.extra_keys(e),
        None => w.nil(),
    }
    w.opt_int(s.group_idx.map(i64::from));
    w.opt_str(s.kv_cache_spec_kind.as_deref());
    w.opt_int(s.kv_cache_spec_sliding_window.map(i64::from));
}

fn encode_removed(w: &mut Writer, r: &BlockRemoved, layout: Layout) {
    match layout {
        Layout::Maps => {
            w.map_len(3 + usize::from(r.group_idx.is_some()));
            w.str("type");
            w.str(REMOVED);
            w.str("block_hashes");
            w.hashes(&r.block_hashes);
            w.str("medium");
            w.opt_str(r.medium.as_deref());
            if let Some(g) = r.group_idx {
                w.str("group_idx");
                w.uint(u64::from(g));
            }
        }
        Layout::Arrays => {
            w.array_len(4);
            w.str(REMOVED);
            w.hashes(&r.block_hashes);
            w.opt_str(r.medium.as_deref());
            w.opt_int(r.group_idx.map(i64::from));
        }
    }
}

fn encode_tag_only(w: &mut Writer, tag: &str, layout: Layout) {
    match layout {
        Layout::Maps => {
            w.map_len(1);
            w.str("type");
            w.str(tag);
        }
        Layout::Arrays => {
            w.array_len(1);
            w.str(tag);
        }
    }
}

/// Encodes a batch exactly as vLLM's publisher (msgspec) would: `[ts (float64), events,
/// dp_rank or nil]`, events in the given layout.
///
/// Fields [`BlockStored`] does not carry (`kv_cache_spec_kind`, `locality`, ...) are left
/// out (maps) or nil (arrays), and `extra_keys` entries that were present are written as
/// empty arrays. [`KvEvent::Unknown`] is written as a tag-only event.
pub fn encode_batch(batch: &KvEventBatch, layout: Layout) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + 128 * batch.events.len()));
    w.array_len(3);
    w.0.push(0xcb);
    w.0.extend_from_slice(&batch.ts.to_be_bytes());
    w.array_len(batch.events.len());
    for e in &batch.events {
        match (e, layout) {
            (KvEvent::BlockStored(s), Layout::Maps) => encode_stored_map(&mut w, s),
            (KvEvent::BlockStored(s), Layout::Arrays) => encode_stored_array(&mut w, s),
            (KvEvent::BlockRemoved(r), _) => encode_removed(&mut w, r, layout),
            (KvEvent::AllBlocksCleared, _) => encode_tag_only(&mut w, CLEARED, layout),
            (KvEvent::Unknown { tag }, _) => encode_tag_only(&mut w, tag, layout),
        }
    }
    w.opt_int(batch.data_parallel_rank);
    w.0
}
