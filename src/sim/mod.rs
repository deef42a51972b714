//! `cache-router sim`: the offline simulator's command line, its table and its plots. The
//! model itself (workloads, engine caches, timing, the event loop) is the core's
//! [`cache_router_core::sim`].

pub mod cli;
pub mod report;
