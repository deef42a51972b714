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
//! - [`policy`]: the cost function and the baselines (round-robin, random, least-loaded,
//!   approx).
//! - [`sim`]: the offline discrete-event simulator that drives the same index and policies
//!   over simulated vLLM-like workers.
//!
//! Dependencies flow one way: protocol/hashing ← index ← policy ← sim.

pub mod bus;
pub mod fleet;
pub mod hashing;
pub mod http;
pub mod index;
pub mod policy;
pub mod protocol;
pub mod sim;
