//! vLLM's (and SGLang's) native KV-cache events: the engine-side wire format the
//! `worker-reporter` sidecar consumes and the mock engine produces.
//!
//! I/O-free: [`codec`] decodes msgpack batches tolerantly (tagged arrays of vLLM <= 0.23,
//! tagged maps of vLLM >= 0.24 and SGLang) and encodes them byte-identically to vLLM's own
//! publisher; [`frames`] handles the ZMQ multipart framing (live and replay) and the captured
//! `.bin` files. The sockets live in [`zmq`].

pub mod codec;
pub mod frames;
pub mod types;
pub mod zmq;

#[cfg(test)]
mod tests;

pub use codec::{decode_batch, encode_batch, DecodeError, Layout};
pub use types::{BlockRemoved, BlockStored, EngineHash, KvEvent, KvEventBatch};
