//! Interprets a msgpack value tree as vLLM's (and SGLang's) `KVEventBatch`: every layout
//! seen in the wild is accepted, unknown event types and trailing fields are tolerated, and
//! anything malformed is a typed [`DecodeError`], never a panic.

use super::error::DecodeError;
use super::types::{BlockRemoved, BlockStored, EngineHash, KvEvent, KvEventBatch};
use super::value::{read_value, Value};

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
    let root = read_value(payload)?;
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
