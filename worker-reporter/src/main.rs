//! `worker-reporter`: the sidecar that runs beside one engine (vLLM, SGLang or the mock
//! engine), turns its native KV events and `/metrics` load into cache-router's protocol and
//! publishes them on NATS.
//!
//! This is a stub: the event plane (NATS ingest) and the sidecar itself are built by later
//! issues. It already links the router library so that both sides share one hashing module.

use clap::Parser;

/// Sidecar for one inference engine (not yet implemented; see the README's roadmap).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    // Proves at build time that the sidecar and the router share one hash function.
    let seed = cache_router::hashing::namespace_seed("demo-model", None);
    anyhow::bail!(
        "worker-reporter is not implemented yet (protocol v{}, namespace seed {seed:#018x})",
        cache_router::protocol::PROTOCOL_VERSION
    )
}
