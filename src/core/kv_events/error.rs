//! Why a KV-event payload could not be decoded.

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
