//! Encodes KV-event batches byte for byte as vLLM's msgspec publisher does, so the mock
//! engine stands in for a real one on the wire (checked against captured fixtures).

use super::types::{BlockRemoved, BlockStored, EngineHash, KvEvent, KvEventBatch};

/// Which event shape to encode: vLLM switched from tagged arrays to tagged maps in 0.24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// vLLM >= 0.24 (and SGLang): each event is a map whose first key is `"type"`.
    Maps,
    /// vLLM <= 0.23: each event is `[tag, every field...]` (0.23 field set).
    Arrays,
}

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
