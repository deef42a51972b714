//! # cache-router
//!
//! A router for fleets of LLM inference servers (vLLM, SGLang) that knows which worker holds
//! which prefix blocks in its KV cache, and sends each request where
//! `cost = uncached prefill work + load` is lowest.
//!
//! # Layout
//! The I/O-free core (no tokio in any signature):
//! - [`protocol`]: our wire format v1 (envelope + bodies, msgpack), with typed decode errors.
//! - [`hashing`]: chained 64-bit block hashes over token ids, namespaced by model and adapter;
//!   the one function the router and every reporter share.
//! - [`index`]: the global cache map (block hash → workers, worker → blocks), longest-prefix
//!   look-ups, digests, a memory bound, and speculative entries.
//! - [`kv_events`]: vLLM's native KV-cache events: the msgpack codec and the ZMQ framing.
//! - [`policy`]: the cost function and the baselines (round-robin, random, least-loaded,
//!   approx).
//! - [`fleet`]: the router's state machine over the index: per-worker sequencing, gap, epoch
//!   and digest resyncs, registry, snapshots.
//! - [`routing`]: one routing decision (candidates, overlaps + speculation, load, policy).
//! - [`sim`]: the offline discrete-event simulator that drives the same index and policies
//!   over simulated vLLM-like workers.
//!
//! The async shell:
//! - [`owner`]: the thread that owns the fleet and routing state, and its handle.
//! - [`bus`]: NATS: connection, JetStream infrastructure, the publisher, the router's ingest.
//! - [`http`]: the axum app.
//!
//! Dependencies flow one way: protocol/hashing ← index ← policy ← fleet/routing ← sim / owner
//! ← bus / http.

pub mod bus;
pub mod demo;
pub mod fleet;
pub mod hashing;
pub mod http;
pub mod index;
pub mod kv_events;
pub mod mock;
pub mod owner;
pub mod policy;
pub mod protocol;
pub mod routing;
pub mod sim;
pub mod tokenize;
