//! # cache-router
//!
//! A router for fleets of LLM inference servers (vLLM, SGLang) that knows which worker holds
//! which prefix blocks in its KV cache, and sends each request where
//! `cost = uncached prefill work + load` is lowest.
//!
//! # Layout
//! Three crates, so the build keeps the floors:
//! - `cache-router-core` (`src/core/`): the I/O-free core — protocol, hashing, index, policy,
//!   fleet state machine, routing, liveness, KV-event codec, the reporter's sequencer, the
//!   simulator's model. No tokio, clap or axum.
//! - `cache-router-bus` (`src/bus/`): the transports the router and the `worker-reporter`
//!   sidecar share — NATS JetStream (connection, subjects, publisher, snapshot store) and
//!   vLLM's ZMQ KV-event sockets; the signal handler and retry pauses.
//! - this crate: the router's async shell and the user-facing tools.
//!
//! This crate's modules, from the request path outwards:
//! - [`server`]: the library server — [`RouterConfig`], [`Router::start`],
//!   [`Router::serve`]`(listener, shutdown)`, [`Router::spawn`] for tests.
//! - `fleet_actor`: the thread that owns the fleet and routing state; typed commands and
//!   views through [`FleetHandle`].
//! - `plane`: the event plane feeding the actor from NATS (consume, resync, registry watch,
//!   load watch, snapshots).
//! - `http`: the axum app (completions, dry-run `/route`, models, health/readiness/metrics,
//!   admin behind a bearer layer).
//! - `proxy`: forwarding with failover, the streamed passthrough, header filtering, in-flight
//!   accounting.
//! - `openai`: request parsing and errors in OpenAI's shape (shared with the mock engine).
//! - `metrics`: every metric declared once, exposed with `prometheus-client`.
//! - `worker_url`: a worker URL is `http://host:port` only, optionally from an allow-list.
//! - [`tokenize`]: chat templates and HF tokenizers, with a piece cache.
//! - [`flags`]: flag groups and value parsers shared by the subcommands.
//! - Tools, not on the request path: [`mock`] (a vLLM simulator speaking vLLM's wire
//!   formats), [`sim`] (the offline simulator's command line and plots), [`demo`] (the live
//!   demo), `plot` (the embedded font).
//!
//! Dependencies flow one way: core ← bus ← fleet_actor ← plane / http / proxy ← server ←
//! the binary; the tools use the server and the core, never the reverse.

pub mod demo;
pub mod flags;
pub mod mock;
pub mod plot;
pub mod proxy;
pub mod sim;
pub mod tokenize;

mod clock;
mod fleet_actor;
mod http;
mod metrics;
mod openai;
mod plane;

mod server;
mod worker_url;

pub use cache_router_core::liveness::EjectionPolicy;
pub use fleet_actor::{FleetHandle, FleetOffline, FleetStats, WorkerView};
pub use http::listener::ConnectionLimits;
pub use server::{
    serve, NatsConfig, Router, RouterConfig, RouterCounters, RouterError, RunningRouter,
};
pub use worker_url::{AllowList, BadWorkerUrl};
