//! Our wire format, version 1: one envelope for every producer (worker-reporter, simulator,
//! benches), encoded as msgpack with `rmp-serde`.
//!
//! An envelope is a msgpack array `[version, worker, epoch, seq, ts_ms, body]`. The version
//! comes first and is read on its own before anything else, so a message of a version we do
//! not know is reported as [`DecodeError::UnknownVersion`] rather than as garbage. Decoding
//! never panics: every failure is a typed [`DecodeError`] the caller counts and logs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocol version this build writes and the only one it applies.
pub const PROTOCOL_VERSION: u16 = 1;

/// A chained 64-bit block hash (see [`crate::hashing`]). One hash names a whole prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockHash(pub u64);

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A worker's stable name as its reporter announces it (not its URL: a worker may move).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl WorkerId {
    /// Worker ids become NATS subject tokens and KV keys: 1 to 128 characters of
    /// `[A-Za-z0-9_-]`. Anything else is refused before it reaches a subject.
    pub fn validate(&self) -> Result<(), InvalidWorkerId> {
        let ok = !self.0.is_empty()
            && self.0.len() <= 128
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(())
        } else {
            Err(InvalidWorkerId(self.0.clone()))
        }
    }
}

/// A worker id that cannot be used as a subject token.
#[derive(Debug, thiserror::Error)]
#[error("invalid worker id {0:?}: use 1-128 characters of A-Z, a-z, 0-9, '-' and '_'")]
pub struct InvalidWorkerId(pub String);

impl From<&str> for WorkerId {
    fn from(s: &str) -> Self {
        WorkerId(s.to_owned())
    }
}

/// A worker's load as its engine reports it.
///
/// Trailing fields carry `#[serde(default)]` so that a later minor revision can append fields
/// without breaking older routers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Load {
    /// Requests the engine is running (prefilling or decoding).
    pub running: u32,
    /// Requests queued in the engine.
    pub waiting: u32,
    /// Fraction of KV cache blocks in use, 0..=1.
    pub kv_usage: f32,
    /// Total KV blocks of the engine, when known.
    #[serde(default)]
    pub num_blocks: Option<u64>,
}

/// What a message says about a worker's cache or load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// The worker now holds `blocks`, a chain: `blocks[0]`'s parent is `parent` (None for a
    /// chain that starts at the root), `blocks[i]`'s parent is `blocks[i-1]`.
    Stored {
        blocks: Vec<BlockHash>,
        parent: Option<BlockHash>,
    },
    /// The worker no longer holds these blocks.
    Removed { blocks: Vec<BlockHash> },
    /// The worker dropped its whole cache.
    Cleared,
    /// Anti-entropy: the size and order-independent checksum of the worker's whole held set
    /// (see [`crate::index::digest_term`]).
    Digest { block_count: u64, checksum: u64 },
    /// The engine's current load.
    Load(Load),
}

impl Body {
    /// Short name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Stored { .. } => "stored",
            Body::Removed { .. } => "removed",
            Body::Cleared => "cleared",
            Body::Digest { .. } => "digest",
            Body::Load(_) => "load",
        }
    }
}

/// One message from one worker.
///
/// `seq` starts at 1 for each `(worker, epoch)` and grows by one per message, so a receiver
/// can tell a duplicate (`seq` already seen) from a gap (`seq` skipped).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub worker: WorkerId,
    /// A new epoch each time the engine (or its reporter's view of it) restarts.
    pub epoch: u64,
    pub seq: u64,
    /// Milliseconds since the Unix epoch at the producer.
    pub ts_ms: u64,
    pub body: Body,
}

/// Why a message could not be decoded. Nothing that fails to decode is ever applied.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message is a valid envelope header of a protocol version we do not speak.
    #[error("unknown protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnknownVersion(u64),
    /// The bytes are not an envelope at all.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// Short name for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::Malformed(_) => "malformed",
        }
    }
}

/// Why a message could not be encoded (in practice never: our types always serialize).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

impl Envelope {
    /// A version-1 envelope.
    pub fn new(worker: WorkerId, epoch: u64, seq: u64, ts_ms: u64, body: Body) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            worker,
            epoch,
            seq,
            ts_ms,
            body,
        }
    }

    /// Encodes as msgpack (struct as array, the compact form).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    /// Decodes a message, checking the version before the rest.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let version = peek_version(bytes)?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(DecodeError::UnknownVersion(version));
        }
        let mut de = rmp_serde::Deserializer::new(bytes);
        let env =
            Envelope::deserialize(&mut de).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !de.get_ref().is_empty() {
            return Err(DecodeError::Malformed(format!(
                "{} trailing bytes after the envelope",
                de.get_ref().len()
            )));
        }
        Ok(env)
    }
}

/// Reads the array header and the version integer that open every envelope.
fn peek_version(mut bytes: &[u8]) -> Result<u64, DecodeError> {
    let len = rmp::decode::read_array_len(&mut bytes)
        .map_err(|e| DecodeError::Malformed(format!("not an envelope array: {e}")))?;
    if len == 0 {
        return Err(DecodeError::Malformed("empty envelope array".into()));
    }
    rmp::decode::read_int::<u64, _>(&mut bytes)
        .map_err(|e| DecodeError::Malformed(format!("version is not an unsigned integer: {e}")))
}

/// A router asks a worker's reporter for its whole held set (after a gap, a new epoch or a
/// digest mismatch). Sent to `<prefix>.sync.<worker>` with a reply inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub version: u16,
    pub worker: WorkerId,
}

/// One chunk of a resync reply. The set is `(block, parent)` pairs as of the worker's message
/// `seq` in `epoch`: every event with a higher sequence number comes after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncChunk {
    pub version: u16,
    pub worker: WorkerId,
    pub epoch: u64,
    pub seq: u64,
    /// 0-based chunk number and chunk count.
    pub index: u32,
    pub total: u32,
    pub entries: Vec<(BlockHash, Option<BlockHash>)>,
}

/// What one router has in flight to each worker, published a few times a second on core NATS
/// (`<prefix>.router-load.<router>`) so that every router of a fleet counts the others'
/// requests, not only its own. Workers with nothing in flight are left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterLoad {
    pub version: u16,
    /// The publishing router's id (also the last subject token).
    pub router: WorkerId,
    pub ts_ms: u64,
    pub workers: Vec<WorkerInFlight>,
}

/// One worker's share of a [`RouterLoad`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInFlight {
    pub worker: WorkerId,
    pub requests: u32,
    /// Uncached prefill blocks of requests not yet past their first byte.
    pub prefill_blocks: f64,
    /// Requests decoding.
    pub decoding: f64,
}

/// A worker's registry entry (JSON in the registry KV bucket, keyed by worker id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    /// Base URL of the engine's OpenAI-compatible API.
    pub url: String,
    /// Model the engine serves (the hash namespace).
    pub model: String,
    pub block_size: u32,
    pub epoch: u64,
}

/// Decodes any msgpack message of ours whose first field is the protocol version.
pub fn decode_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let version = peek_version(bytes)?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnknownVersion(version));
    }
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_bodies() -> Vec<Body> {
        vec![
            Body::Stored {
                blocks: vec![BlockHash(1), BlockHash(u64::MAX), BlockHash(1 << 63)],
                parent: Some(BlockHash(42)),
            },
            Body::Stored {
                blocks: vec![BlockHash(7)],
                parent: None,
            },
            Body::Removed {
                blocks: vec![BlockHash(9), BlockHash(10)],
            },
            Body::Cleared,
            Body::Digest {
                block_count: 3,
                checksum: 0xdead_beef,
            },
            Body::Load(Load {
                running: 3,
                waiting: 1,
                kv_usage: 0.5,
                num_blocks: Some(1000),
            }),
        ]
    }

    #[test]
    fn every_body_round_trips() {
        for (i, body) in sample_bodies().into_iter().enumerate() {
            let env = Envelope::new("worker-a".into(), 7, i as u64 + 1, 1_700_000_000_000, body);
            let bytes = env.encode().unwrap();
            assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        }
    }

    #[test]
    fn sync_messages_round_trip_and_worker_ids_are_checked() {
        let chunk = SyncChunk {
            version: PROTOCOL_VERSION,
            worker: "w-1".into(),
            epoch: 3,
            seq: 99,
            index: 0,
            total: 1,
            entries: vec![(BlockHash(1), None), (BlockHash(2), Some(BlockHash(1)))],
        };
        let bytes = rmp_serde::to_vec(&chunk).unwrap();
        assert_eq!(decode_versioned::<SyncChunk>(&bytes).unwrap(), chunk);
        assert!(decode_versioned::<SyncChunk>(b"\x93\x02").is_err());
        assert!(WorkerId::from("gpu-01_a").validate().is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(WorkerId::from(bad).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_version_is_reported_as_such() {
        let mut env = Envelope::new("w".into(), 1, 1, 0, Body::Cleared);
        env.version = 2;
        let bytes = rmp_serde::to_vec(&env).unwrap();
        match Envelope::decode(&bytes) {
            Err(DecodeError::UnknownVersion(2)) => {}
            other => panic!("expected UnknownVersion(2), got {other:?}"),
        }
    }

    #[test]
    fn garbage_and_truncation_are_malformed() {
        let env = Envelope::new(
            "w".into(),
            1,
            1,
            0,
            Body::Removed {
                blocks: vec![BlockHash(5); 4],
            },
        );
        let bytes = env.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    Envelope::decode(&bytes[..cut]),
                    Err(DecodeError::Malformed(_))
                ),
                "truncated at {cut} must be malformed"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0xc0);
        assert!(matches!(
            Envelope::decode(&trailing),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::decode(b"hello"),
            Err(DecodeError::Malformed(_))
        ));
    }

    fn arb_hash() -> impl Strategy<Value = BlockHash> {
        any::<u64>().prop_map(BlockHash)
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (
                proptest::collection::vec(arb_hash(), 0..20),
                proptest::option::of(arb_hash())
            )
                .prop_map(|(blocks, parent)| Body::Stored { blocks, parent }),
            proptest::collection::vec(arb_hash(), 0..20)
                .prop_map(|blocks| Body::Removed { blocks }),
            Just(Body::Cleared),
            (any::<u64>(), any::<u64>()).prop_map(|(block_count, checksum)| Body::Digest {
                block_count,
                checksum
            }),
            (
                any::<u32>(),
                any::<u32>(),
                0.0f32..1.0,
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(running, waiting, kv_usage, num_blocks)| Body::Load(
                    Load {
                        running,
                        waiting,
                        kv_usage,
                        num_blocks
                    }
                )),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn mutated_envelopes_never_panic(
            body in arb_body(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = Envelope::new("w".into(), 1, 1, 0, body).encode().unwrap();
            for (pos, val) in flips {
                let n = bytes.len();
                bytes[pos % n] = val;
            }
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn arbitrary_envelopes_round_trip(
            body in arb_body(),
            worker in "[a-z0-9-]{1,16}",
            epoch in any::<u64>(),
            seq in any::<u64>(),
            ts in any::<u64>(),
        ) {
            let env = Envelope::new(WorkerId(worker), epoch, seq, ts, body);
            let bytes = env.encode().unwrap();
            prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        }
    }
}
