//! # cache-router-bus
//!
//! The transports the router and the `worker-reporter` sidecar share, and nothing the sidecar
//! does not need (no HTTP server, tokenizer or plotting):
//!
//! - [`args`]: the NATS flags (connection, auth, TLS) and the stream/registry limits.
//! - [`connect`]: the NATS connection, reconnecting forever with backoff.
//! - [`subjects`] and [`infra`]: the names and the JetStream objects of one fleet.
//! - [`publisher`]: one worker's side of our protocol (sequenced events, digests, load, the
//!   resync responder).
//! - [`snapshot_store`]: router snapshots in the JetStream object store.
//! - [`zmq`]: vLLM's KV-event sockets (engine-side PUB + replay, consumer-side SUB + replay).
//! - [`retry`] and [`shutdown`]: sleeping the core's backoff schedule; the one signal handler.
//! - [`duration`]: the value parsers of every duration flag (humantime, old integer spellings).
//!
//! Subjects (prefix configurable, default `kvr`):
//! - `<prefix>.events.<worker>`: cache events and digests, captured by the JetStream stream
//!   `<PREFIX>_EVENTS` (age and size limits are flags);
//! - `<prefix>.load.<worker>`: load reports on core NATS, not stored;
//! - `<prefix>.sync.<worker>`: request/reply for a worker's full set, answered in chunks;
//! - KV bucket `<prefix>-workers`: the worker registry (a key per worker, refreshed by its
//!   reporter; an entry older than the TTL means the worker is gone);
//! - object store `<prefix>-snapshots`: router snapshots.

pub mod args;
pub mod connect;
pub mod duration;
pub mod error;
pub mod infra;
pub mod publisher;
pub mod registry;
pub mod retry;
pub mod shutdown;
pub mod snapshot_store;
pub mod subjects;
pub mod zmq;

pub use args::{NatsArgs, StreamArgs};
pub use connect::connect;
pub use error::BusError;
pub use infra::{ensure_infra, Infra};
pub use subjects::Subjects;

#[cfg(test)]
mod tests {
    use super::*;
    use cache_router_core::protocol::WorkerId;

    #[test]
    fn subjects_and_names() {
        let s = Subjects::new("kvr");
        let w = WorkerId::from("gpu-1");
        assert_eq!(s.events(&w), "kvr.events.gpu-1");
        assert_eq!(s.events_all(), "kvr.events.>");
        assert_eq!(s.load_all(), "kvr.load.*");
        assert_eq!(s.sync(&w), "kvr.sync.gpu-1");
        assert_eq!(s.stream(), "KVR_EVENTS");
        assert_eq!(s.registry_bucket(), "kvr-workers");
    }

    #[test]
    fn prefix_is_validated() {
        let mut a = NatsArgs::for_url("nats://127.0.0.1:1");
        assert!(a.validate().is_ok());
        a.prefix = "a.b".into();
        assert!(a.validate().is_err());
    }
}
