//! Fixture-driven tests: every golden payload produced by vLLM's own code decodes to the
//! meaning its `.json` twin records, representable batches re-encode byte-identically, and
//! the captured ZMQ frames parse.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::frames::{
    live_frames, parse_live, parse_replay_reply, read_bin, replay_reply, replay_request,
    END_OF_REPLAY,
};
use super::types::{BlockRemoved, BlockStored, EngineHash, KvEvent, KvEventBatch};
use super::{decode_batch, encode_batch, Layout};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vllm-kv-events");
const VERSIONS: [(&str, Layout); 2] = [("v0.33.0", Layout::Maps), ("v0.23.0", Layout::Arrays)];

fn fixtures(version: &str) -> Vec<(PathBuf, Json)> {
    let dir = Path::new(ROOT).join(version);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "msgpack"))
        .map(|p| {
            let json = std::fs::read(p.with_extension("json")).unwrap();
            (p, serde_json::from_slice(&json).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 18, "{version}: fixture count");
    out
}

fn j_hash(v: &Json) -> EngineHash {
    match v {
        Json::Object(o) => EngineHash::Bytes(hex(o["$bytes"].as_str().unwrap())),
        Json::Number(n) => {
            EngineHash::Int(n.as_u64().or_else(|| n.as_i64().map(|i| i as u64)).unwrap())
        }
        other => panic!("bad hash {other}"),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn j_hashes(v: &Json) -> Vec<EngineHash> {
    v.as_array().unwrap().iter().map(j_hash).collect()
}

fn j_str(v: &Json) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn j_u32(v: &Json) -> Option<u32> {
    v.as_u64().map(|u| u32::try_from(u).unwrap())
}

/// The `decoded` meaning of a fixture, projected onto what [`KvEventBatch`] carries.
fn expected(decoded: &Json) -> KvEventBatch {
    let events = decoded["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "BlockStored" => KvEvent::BlockStored(BlockStored {
                block_hashes: j_hashes(&e["block_hashes"]),
                parent_block_hash: (!e["parent_block_hash"].is_null())
                    .then(|| j_hash(&e["parent_block_hash"])),
                token_ids: e["token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| j_u32(t).unwrap())
                    .collect(),
                block_size: j_u32(&e["block_size"]).unwrap(),
                lora_id: e["lora_id"].as_i64(),
                medium: j_str(&e["medium"]),
                lora_name: j_str(&e["lora_name"]),
                extra_keys: e["extra_keys"]
                    .as_array()
                    .map(|a| a.iter().map(|k| !k.is_null()).collect()),
                group_idx: j_u32(&e["group_idx"]),
                kv_cache_spec_kind: j_str(&e["kv_cache_spec_kind"]),
                kv_cache_spec_sliding_window: j_u32(&e["kv_cache_spec_sliding_window"]),
            }),
            "BlockRemoved" => KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: j_hashes(&e["block_hashes"]),
                medium: j_str(&e["medium"]),
                group_idx: j_u32(&e["group_idx"]),
            }),
            "AllBlocksCleared" => KvEvent::AllBlocksCleared,
            other => KvEvent::Unknown {
                tag: other.to_owned(),
            },
        })
        .collect();
    KvEventBatch {
        ts: decoded["ts"].as_f64().unwrap(),
        events,
        data_parallel_rank: decoded["data_parallel_rank"].as_i64(),
    }
}

/// Whether the `decoded` meaning fits [`KvEventBatch`] without loss, so that re-encoding
/// must reproduce vLLM's bytes.
fn representable(decoded: &Json) -> bool {
    const NOT_CARRIED: [&str; 4] = ["locality", "ownership", "session_id", "lookahead_token_ids"];
    decoded["events"].as_array().unwrap().iter().all(|e| {
        NOT_CARRIED.iter().all(|k| e[*k].is_null())
            && e["extra_keys"]
                .as_array()
                .is_none_or(|a| a.iter().all(Json::is_null))
    })
}

#[test]
fn every_fixture_decodes_to_its_meaning() {
    for (version, _) in VERSIONS {
        for (path, json) in fixtures(version) {
            let raw = std::fs::read(&path).unwrap();
            let got = decode_batch(&raw).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert_eq!(got, expected(&json["decoded"]), "{path:?}");
        }
    }
}

#[test]
fn representable_fixtures_reencode_byte_identically() {
    for (version, layout) in VERSIONS {
        let mut checked = Vec::new();
        for (path, json) in fixtures(version) {
            if !representable(&json["decoded"]) {
                continue;
            }
            let raw = std::fs::read(&path).unwrap();
            let batch = decode_batch(&raw).unwrap();
            assert_eq!(encode_batch(&batch, layout), raw, "{path:?}");
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
        // All but 04/05 (real extra keys, kept as one flag per block) and 10 (hand-built
        // with fields `BlockStored` does not keep).
        let names: Vec<_> = checked.iter().map(|n| &n[..2]).collect();
        let all = [
            "01", "02", "03", "06", "07", "08", "09", "11", "12", "13", "14", "15", "16", "17",
            "18",
        ];
        assert_eq!(names, all, "{version}");
    }
}

#[test]
fn encode_then_decode_is_lossless_for_both_layouts() {
    for (version, _) in VERSIONS {
        for (path, _) in fixtures(version) {
            let batch = decode_batch(&std::fs::read(&path).unwrap()).unwrap();
            for layout in [Layout::Maps, Layout::Arrays] {
                let again = decode_batch(&encode_batch(&batch, layout)).unwrap();
                assert_eq!(again, batch, "{path:?} {layout:?}");
            }
        }
    }
}

fn frame_files() -> Vec<PathBuf> {
    let mut out = vec![Path::new(ROOT).join("captured-frames.bin")];
    for (version, _) in VERSIONS {
        for name in [
            "captured-frames.bin",
            "captured-frames-topic.bin",
            "replay-frames.bin",
            "replay-frames-topic.bin",
        ] {
            let p = Path::new(ROOT).join(version).join(name);
            if p.exists() {
                out.push(p);
            }
        }
    }
    assert_eq!(out.len(), 8);
    out
}

#[test]
fn captured_frames_parse_and_decode() {
    for bin in frame_files() {
        let json: Json =
            serde_json::from_slice(&std::fs::read(bin.with_extension("json")).unwrap()).unwrap();
        let fixture_dir = if bin.parent().unwrap() == Path::new(ROOT) {
            Path::new(ROOT).join("v0.33.0")
        } else {
            bin.parent().unwrap().to_path_buf()
        };
        let messages = read_bin(&std::fs::read(&bin).unwrap()).unwrap();
        let want = json["messages"].as_array().unwrap();
        assert_eq!(messages.len(), want.len(), "{bin:?}");
        let is_replay = bin
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("replay");
        for (msg, want) in messages.iter().zip(want) {
            let frames: Vec<&[u8]> = msg.iter().map(Vec::as_slice).collect();
            let want_frames = want["frames"].as_array().unwrap();
            assert_eq!(frames.len(), want_frames.len(), "{bin:?}");
            let want_seq = want_frames
                .iter()
                .find_map(|f| f["as_i64_be"].as_i64())
                .unwrap() as u64;
            let want_payload = want_frames
                .iter()
                .find_map(|f| f["payload_equals_fixture"].as_str())
                .map(|name| std::fs::read(fixture_dir.join(name)).unwrap());
            let (seq, payload) = if is_replay {
                let r = parse_replay_reply(&frames).unwrap();
                assert_eq!(r.is_end(), want_payload.is_none(), "{bin:?}");
                (r.seq, r.payload)
            } else {
                let live = parse_live(&frames).unwrap();
                assert_eq!(
                    live.topic,
                    &want_frames[0]["hex"].as_str().map(hex).unwrap()[..]
                );
                (live.seq, live.payload.to_vec())
            };
            assert_eq!(seq, want_seq, "{bin:?}");
            match want_payload {
                Some(p) => {
                    assert_eq!(payload, p, "{bin:?}");
                    decode_batch(&payload).unwrap();
                }
                None => {
                    assert_eq!(seq, END_OF_REPLAY);
                    assert!(payload.is_empty());
                }
            }
        }
        // The final replay message is always the end marker.
        if is_replay {
            let last: Vec<&[u8]> = messages.last().unwrap().iter().map(Vec::as_slice).collect();
            assert!(parse_replay_reply(&last).unwrap().is_end());
        }
    }
}

#[test]
fn frame_builders_match_captures() {
    let live =
        read_bin(&std::fs::read(Path::new(ROOT).join("captured-frames.bin")).unwrap()).unwrap();
    let f = parse_live(&live[1].iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    assert_eq!(live_frames(f.topic, f.seq, f.payload).to_vec(), live[1]);

    let replay =
        read_bin(&std::fs::read(Path::new(ROOT).join("v0.33.0/replay-frames-topic.bin")).unwrap())
            .unwrap();
    let first =
        parse_replay_reply(&replay[0].iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    assert_eq!(
        replay_reply(b"kv-events", first.seq, &first.payload),
        replay[0]
    );
    assert_eq!(
        replay_reply(b"", END_OF_REPLAY, b""),
        *replay.last().unwrap()
    );

    assert_eq!(replay_request(1), [vec![], vec![0, 0, 0, 0, 0, 0, 0, 1]]);
}

#[test]
fn malformed_frames_are_errors() {
    assert!(parse_live(&[b"", b"1234567", b"x"]).is_err());
    assert!(parse_live(&[b"", b"12345678"]).is_err());
    assert!(parse_replay_reply(&[b"x", b"12345678", b""]).is_err());
    assert!(parse_replay_reply(&[b"", b"12345678"]).is_err());
    assert!(read_bin(&[1, 0, 0, 0, 5, 0, 0, 0, 1]).is_err());
    assert!(read_bin(&[1, 0]).is_err());
    assert_eq!(read_bin(&[]).unwrap(), Vec::<Vec<Vec<u8>>>::new());
}

// ----- hand-built payloads ---------------------------------------------------------------

/// Minimal msgpack writer for hand-built inputs (deliberately independent of the codec).
fn s(out: &mut Vec<u8>, v: &str) {
    out.push(0xa0 | v.len() as u8);
    out.extend_from_slice(v.as_bytes());
}

fn i64be(out: &mut Vec<u8>, v: i64) {
    out.push(0xd3);
    out.extend_from_slice(&v.to_be_bytes());
}

#[test]
fn sglang_style_batch_decodes() {
    let mut p = vec![0x93, 0xcb];
    p.extend_from_slice(&1.5f64.to_be_bytes());
    p.push(0x93); // three events
                  // BlockStored with signed hashes, bigram token ids, an unknown key, medium only if set.
    p.push(0x87);
    s(&mut p, "type");
    s(&mut p, "BlockStored");
    s(&mut p, "block_hashes");
    p.push(0x91);
    i64be(&mut p, -5);
    s(&mut p, "parent_block_hash");
    p.push(0xd0);
    p.push(0xfe); // -2 as int8
    s(&mut p, "token_ids");
    p.extend_from_slice(&[0x92, 0x92, 0x01, 0x02, 0x92, 0x03, 0x04]);
    s(&mut p, "block_size");
    p.push(0x02);
    s(&mut p, "lora_id");
    p.push(0xc0);
    s(&mut p, "cache_salt");
    s(&mut p, "salty");
    // BlockRemoved without medium.
    p.push(0x82);
    s(&mut p, "type");
    s(&mut p, "BlockRemoved");
    s(&mut p, "block_hashes");
    p.push(0x91);
    i64be(&mut p, -5);
    // An event type this build does not know.
    p.push(0x82);
    s(&mut p, "type");
    s(&mut p, "SomethingNew");
    s(&mut p, "x");
    p.push(0x01);
    // attn_dp_rank
    p.push(0x02);

    let b = decode_batch(&p).unwrap();
    assert_eq!(b.ts, 1.5);
    assert_eq!(b.data_parallel_rank, Some(2));
    let neg5 = EngineHash::Int(-5i64 as u64);
    assert_eq!(
        b.events,
        [
            KvEvent::BlockStored(BlockStored {
                block_hashes: vec![neg5.clone()],
                parent_block_hash: Some(EngineHash::Int(-2i64 as u64)),
                token_ids: vec![1, 3],
                block_size: 2,
                ..Default::default()
            }),
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![neg5],
                ..Default::default()
            }),
            KvEvent::Unknown {
                tag: "SomethingNew".into()
            },
        ]
    );
}

#[test]
fn map_batch_with_attn_dp_rank_decodes() {
    let mut p = vec![0x83];
    s(&mut p, "ts");
    p.push(0x07); // integer ts
    s(&mut p, "events");
    p.push(0x91);
    p.push(0x91);
    s(&mut p, "AllBlocksCleared");
    s(&mut p, "attn_dp_rank");
    p.push(0x01);
    let b = decode_batch(&p).unwrap();
    assert_eq!(b.ts, 7.0);
    assert_eq!(b.events, [KvEvent::AllBlocksCleared]);
    assert_eq!(b.data_parallel_rank, Some(1));
}

#[test]
fn non_minimal_headers_and_legacy_short_arrays_decode() {
    // map32 header, u64 hash 0xcf for a small value, array32 and str8 headers.
    let mut p = vec![0x92, 0xcb];
    p.extend_from_slice(&2.0f64.to_be_bytes());
    p.extend_from_slice(&[0xdd, 0, 0, 0, 2]);
    p.extend_from_slice(&[0xdf, 0, 0, 0, 4]);
    s(&mut p, "type");
    p.extend_from_slice(&[0xd9, 12]);
    p.extend_from_slice(b"BlockRemoved");
    s(&mut p, "block_hashes");
    p.push(0x91);
    p.push(0xcf);
    p.extend_from_slice(&7u64.to_be_bytes());
    s(&mut p, "medium");
    s(&mut p, "CPU");
    s(&mut p, "group_idx");
    p.extend_from_slice(&[0xce, 0, 0, 0, 3]);
    // vLLM 0.9-style 6-element BlockStored array (tag + 5 fields).
    p.push(0x96);
    s(&mut p, "BlockStored");
    p.extend_from_slice(&[0x91, 0x09, 0xc0, 0x92, 0x05, 0x06, 0x02, 0xc0]);

    let b = decode_batch(&p).unwrap();
    assert_eq!(b.data_parallel_rank, None);
    assert_eq!(
        b.events,
        [
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![EngineHash::Int(7)],
                medium: Some("CPU".into()),
                group_idx: Some(3),
            }),
            KvEvent::BlockStored(BlockStored {
                block_hashes: vec![EngineHash::Int(9)],
                token_ids: vec![5, 6],
                block_size: 2,
                ..Default::default()
            }),
        ]
    );
}

#[test]
fn malformed_payloads_are_errors_not_panics() {
    let raw = std::fs::read(Path::new(ROOT).join("v0.33.0/15-mixed-batch.msgpack")).unwrap();
    // Every truncation fails cleanly.
    for n in 0..raw.len() {
        assert!(decode_batch(&raw[..n]).is_err(), "prefix {n}");
    }
    // Every single-byte corruption returns rather than panicking.
    for i in 0..raw.len() {
        for x in [0x00, 0xc1, 0xdd, 0xdf, 0xff] {
            let mut c = raw.clone();
            c[i] = x;
            let _ = decode_batch(&c);
        }
    }
    assert!(decode_batch(&[0xc1]).is_err());
    assert!(decode_batch(&[0x01]).is_err());
    assert!(decode_batch(&[0x91, 0x01]).is_err());
    assert!(decode_batch(&[0x92, 0x01, 0x91, 0x90]).is_err()); // empty event array
    assert!(decode_batch(&[0x92, 0x01, 0x90, 0x00]).is_err()); // trailing byte
    assert!(decode_batch(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err()); // huge claimed length
    let deep = vec![0x91; 10_000];
    assert!(decode_batch(&deep).is_err());
}
