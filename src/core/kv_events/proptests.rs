//! Property tests over the engine-side decoders: whatever an engine (or anyone who can reach
//! its ZMQ socket) sends, decoding returns a value or an error — never a panic, never an
//! allocation sized by a length field instead of by the bytes present.
//!
//! Cases per property: proptest's `PROPTEST_CASES` (256 by default), so a long run is one
//! command: `PROPTEST_CASES=100000 cargo test -p cache-router-core --release kv_events`.

use std::path::Path;

use proptest::prelude::*;

use super::frames::{parse_live, parse_replay_reply, read_bin};
use super::types::{BlockRemoved, BlockStored, EngineHash, KvEvent, KvEventBatch};
use super::{decode_batch, encode_batch, Layout};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vllm-kv-events");

/// Every golden payload vLLM's own publisher produced, both layouts.
fn golden_payloads() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for version in ["v0.33.0", "v0.23.0"] {
        let dir = Path::new(ROOT).join(version);
        for entry in std::fs::read_dir(&dir).expect("fixture directory") {
            let path = entry.expect("fixture entry").path();
            if path.extension().is_some_and(|e| e == "msgpack") {
                out.push(std::fs::read(&path).expect("fixture file"));
            }
        }
    }
    assert!(out.len() >= 36, "fixtures missing under {ROOT}");
    out
}

/// The captured ZMQ frames (live and replay), one message per entry.
fn captured_messages() -> Vec<Vec<Vec<u8>>> {
    let bin = std::fs::read(Path::new(ROOT).join("captured-frames.bin")).expect("captured frames");
    read_bin(&bin).expect("the capture parses")
}

fn arb_hash() -> impl Strategy<Value = EngineHash> {
    prop_oneof![
        any::<u64>().prop_map(EngineHash::Int),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(EngineHash::Bytes),
    ]
}

fn arb_event() -> impl Strategy<Value = KvEvent> {
    prop_oneof![
        (
            proptest::collection::vec(arb_hash(), 0..6),
            proptest::option::of(arb_hash()),
            proptest::collection::vec(0u32..200_000, 0..64),
            1u32..64,
            proptest::option::of(any::<i64>()),
        )
            .prop_map(
                |(block_hashes, parent_block_hash, token_ids, block_size, lora_id)| {
                    KvEvent::BlockStored(BlockStored {
                        block_hashes,
                        parent_block_hash,
                        token_ids,
                        block_size,
                        lora_id,
                        ..BlockStored::default()
                    })
                }
            ),
        proptest::collection::vec(arb_hash(), 0..6).prop_map(|block_hashes| {
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes,
                ..BlockRemoved::default()
            })
        }),
        Just(KvEvent::AllBlocksCleared),
    ]
}

fn arb_batch() -> impl Strategy<Value = KvEventBatch> {
    (
        proptest::collection::vec(arb_event(), 0..8),
        proptest::option::of(0i64..8),
        0u32..2_000_000_000,
    )
        .prop_map(|(events, data_parallel_rank, ts)| KvEventBatch {
            ts: f64::from(ts) / 1000.0,
            events,
            data_parallel_rank,
        })
}

fn mutate(bytes: &mut Vec<u8>, flips: &[(usize, u8)], cut: Option<usize>) {
    if bytes.is_empty() {
        return;
    }
    for &(pos, val) in flips {
        let n = bytes.len();
        bytes[pos % n] = val;
    }
    if let Some(c) = cut {
        let n = bytes.len();
        bytes.truncate(c % (n + 1));
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_batch(&bytes);
    }

    #[test]
    fn mutated_golden_payloads_never_panic(
        pick in any::<usize>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        thread_local! {
            static GOLDEN: Vec<Vec<u8>> = golden_payloads();
        }
        let mut bytes = GOLDEN.with(|g| g[pick % g.len()].clone());
        mutate(&mut bytes, &flips, cut);
        let _ = decode_batch(&bytes);
    }

    #[test]
    fn encoded_batches_round_trip_in_both_layouts(batch in arb_batch(), maps in any::<bool>()) {
        let layout = if maps { Layout::Maps } else { Layout::Arrays };
        let bytes = encode_batch(&batch, layout);
        prop_assert_eq!(decode_batch(&bytes).unwrap(), batch);
    }

    #[test]
    fn mutated_encoded_batches_never_panic(
        batch in arb_batch(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = encode_batch(&batch, Layout::Maps);
        mutate(&mut bytes, &flips, cut);
        let _ = decode_batch(&bytes);
    }

    #[test]
    fn mutated_zmq_frames_never_panic(
        pick in any::<usize>(),
        frame in any::<usize>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        thread_local! {
            static CAPTURED: Vec<Vec<Vec<u8>>> = captured_messages();
        }
        let mut msg = CAPTURED.with(|c| c[pick % c.len()].clone());
        let n = msg.len();
        mutate(&mut msg[frame % n], &flips, cut);
        let frames: Vec<&[u8]> = msg.iter().map(Vec::as_slice).collect();
        if let Ok(live) = parse_live(&frames) {
            let _ = decode_batch(live.payload);
        }
        let _ = parse_replay_reply(&frames);
    }

    #[test]
    fn random_capture_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = read_bin(&bytes);
    }
}
