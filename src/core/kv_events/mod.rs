//! vLLM's (and SGLang's) native KV-cache events: the engine-side wire format the
//! `worker-reporter` sidecar consumes and the mock engine produces.
//!
//! I/O-free: [`value`] reads msgpack into a bounded value tree, [`decode`] interprets it
//! tolerantly (tagged arrays of vLLM <= 0.23, tagged maps of vLLM >= 0.24 and SGLang),
//! [`encode`] writes batches byte-identically to vLLM's own publisher, and [`frames`] holds
//! the ZMQ multipart framing (live and replay) and the captured `.bin` files. The sockets
//! live in the bus crate (`cache_router_bus::zmq`).

mod decode;
mod encode;
mod error;
pub mod frames;
mod types;
mod value;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use decode::decode_batch;
pub use encode::{encode_batch, Layout};
pub use error::DecodeError;
pub use types::{BlockRemoved, BlockStored, EngineHash, KvEvent, KvEventBatch};
