//! # cache-router-core
//!
//! The I/O-free core of cache-router: plain data structures and state machines, no tokio,
//! no sockets, no command line. The router, the `worker-reporter` sidecar and the simulator
//! all drive the same code, and this crate's manifest keeps it that way (CI checks that
//! `cargo tree -p cache-router-core` holds no async runtime, CLI or HTTP crate).
//!
//! # Layout
//! - [`protocol`]: our wire format v1 (envelope + bodies, msgpack), with typed decode errors.
//! - [`hashing`]: chained 64-bit block hashes over token ids, namespaced by model and adapter;
//!   the one function the router and every reporter share.
//! - [`index`]: the global cache map (block hash → workers, worker → blocks), longest-prefix
//!   look-ups, digests, a memory bound, and speculative entries.
//! - [`policy`]: the cost function and the baselines (round-robin, random, least-loaded,
//!   approx).
//! - [`fleet`]: the router's consistency state machine over the index: per-worker sequencing,
//!   gap, epoch and digest resyncs, registry, snapshots; a byte budget for resync buffers and
//!   a quarantine for worker ids nobody registered.
//! - [`resync_pace`]: how soon a worker's next resync may start (a burst backs off).
//! - [`routing`]: one routing decision (candidates, overlaps + speculation, load, liveness,
//!   policy).
//! - [`leases`]: which workers' registry entries lapsed, and when a router must not believe
//!   it (registry unreachable, most workers lapsing at once).
//! - [`liveness`]: which workers the proxy has ejected after failures, with exponential
//!   backoff; read by routing so a dry run never ranks an ejected worker first.
//! - [`kv_events`]: vLLM's native KV-cache events: the msgpack reader and writer, the
//!   interpreter into typed events, and the ZMQ frame layout (the sockets live in the bus
//!   crate).
//! - [`sequencer`]: the reporter's live/replay sequencing of an engine's event batches
//!   (duplicate, gap, restart, tail probe) as a pure state machine.
//! - [`sim`]: the simulator's model: workloads, vLLM-like engine caches, the timing model and
//!   the discrete-event loop over the same index and policies.
//! - [`prom_text`]: the one Prometheus text-format reader (engine load scrapes, the demo).
//! - [`backoff`]: the one exponential backoff schedule every retry loop uses.
//!
//! Dependencies flow one way: protocol/hashing ← index ← policy ← fleet/routing ← sim.

pub mod backoff;
pub mod fleet;
pub mod hashing;
pub mod index;
pub mod kv_events;
pub mod leases;
pub mod liveness;
pub mod policy;
pub mod prom_text;
pub mod protocol;
pub mod resync_pace;
pub mod routing;
pub mod sequencer;
pub mod sim;
