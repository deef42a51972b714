//! `worker-reporter`: the sidecar beside one unmodified vLLM/SGLang engine. It turns the
//! engine's native KV events (msgpack over ZMQ) and its `/metrics` load into cache-router's
//! protocol on NATS, and keeps the worker registered while the engine is alive.
//!
//! - [`mirror`]: engine block hash → our chained hash (I/O-free).
//! - [`load`]: Prometheus text → [`cache_router::protocol::Load`] (I/O-free).
//! - [`reporter`]: the async loops (events with gap replay and resync, digests, load,
//!   registry) and [`reporter::run`].

pub mod load;
pub mod mirror;
pub mod reporter;

pub use reporter::{run, ReporterArgs};
