//! ZMQ multipart framing of vLLM's KV-event stream (live PUB and replay ROUTER) and the
//! `.bin` frame-capture files. I/O-free: frames in, frames out; see
//! `testdata/vllm-kv-events/frames.md` for the observed protocol.

/// Sequence number of the replay end marker (-1 as a signed 8-byte big-endian int).
pub const END_OF_REPLAY: u64 = u64::MAX;

/// Why a multipart message or a capture file could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("expected {expected} frames, got {got}")]
    FrameCount { expected: &'static str, got: usize },
    #[error("sequence frame must be 8 bytes, got {got}")]
    SeqLength { got: usize },
    #[error("replay reply must start with an empty delimiter frame, got {got} byte(s)")]
    Delimiter { got: usize },
    #[error("capture file truncated at offset {offset}")]
    TruncatedCapture { offset: usize },
}

/// One live message as a SUB socket receives it: `[topic, seq (u64 BE), payload]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveFrame<'a> {
    pub topic: &'a [u8],
    pub seq: u64,
    pub payload: &'a [u8],
}

fn parse_seq(frame: &[u8]) -> Result<u64, FrameError> {
    let bytes: [u8; 8] = frame
        .try_into()
        .map_err(|_| FrameError::SeqLength { got: frame.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Splits a live message; vLLM and SGLang always send exactly three frames.
pub fn parse_live<'a>(frames: &[&'a [u8]]) -> Result<LiveFrame<'a>, FrameError> {
    match *frames {
        [topic, seq, payload] => Ok(LiveFrame {
            topic,
            seq: parse_seq(seq)?,
            payload,
        }),
        _ => Err(FrameError::FrameCount {
            expected: "3",
            got: frames.len(),
        }),
    }
}

/// Builds a live message as vLLM's PUB socket sends it.
pub fn live_frames(topic: &[u8], seq: u64, payload: &[u8]) -> [Vec<u8>; 3] {
    [topic.to_vec(), seq.to_be_bytes().to_vec(), payload.to_vec()]
}

/// A replay request as a DEALER sends it: `["", start_seq (u64 BE)]`. (A REQ socket sends
/// only the second frame; the ROUTER rejects any other shape without replying.)
pub fn replay_request(start_seq: u64) -> [Vec<u8>; 2] {
    [Vec::new(), start_seq.to_be_bytes().to_vec()]
}

/// One replay message as a DEALER receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReply {
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl ReplayReply {
    /// The end marker closes a replay; it carries no batch.
    pub fn is_end(&self) -> bool {
        self.seq == END_OF_REPLAY
    }
}

/// Parses a replay message received on a DEALER: `["", topic, seq, payload]` (vLLM >= 0.26,
/// SGLang) or `["", seq, payload]` (vLLM <= 0.25). The topic is dropped: it is the same as
/// on the live stream (and empty on the end marker).
pub fn parse_replay_reply(frames: &[&[u8]]) -> Result<ReplayReply, FrameError> {
    let (delim, seq, payload) = match *frames {
        [delim, _topic, seq, payload] => (delim, seq, payload),
        [delim, seq, payload] => (delim, seq, payload),
        _ => {
            return Err(FrameError::FrameCount {
                expected: "3 or 4",
                got: frames.len(),
            })
        }
    };
    if !delim.is_empty() {
        return Err(FrameError::Delimiter { got: delim.len() });
    }
    Ok(ReplayReply {
        seq: parse_seq(seq)?,
        payload: payload.to_vec(),
    })
}

/// Builds a replay message in the >= 0.26 form, `["", topic, seq, payload]`, for a ROUTER to
/// send after prepending the peer identity frame. The end marker is
/// `replay_reply(b"", END_OF_REPLAY, b"")`.
pub fn replay_reply(topic: &[u8], seq: u64, payload: &[u8]) -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        topic.to_vec(),
        seq.to_be_bytes().to_vec(),
        payload.to_vec(),
    ]
}

/// Reads a capture file: repeated `u32 LE frame_count`, then per frame `u32 LE length` and
/// the bytes. Returns the messages, each as its frames.
pub fn read_bin(bytes: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, FrameError> {
    let mut pos = 0usize;
    let read_u32 = |pos: &mut usize| -> Result<usize, FrameError> {
        let b = bytes
            .get(*pos..*pos + 4)
            .ok_or(FrameError::TruncatedCapture { offset: *pos })?;
        *pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut messages = Vec::new();
    while pos < bytes.len() {
        let count = read_u32(&mut pos)?;
        let mut frames = Vec::with_capacity(count.min(bytes.len() - pos));
        for _ in 0..count {
            let len = read_u32(&mut pos)?;
            let frame = pos
                .checked_add(len)
                .and_then(|end| bytes.get(pos..end))
                .ok_or(FrameError::TruncatedCapture { offset: pos })?;
            frames.push(frame.to_vec());
            pos += len;
        }
        messages.push(frames);
    }
    Ok(messages)
}
