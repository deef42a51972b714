//! Simulator tests: the engines' caches and the router's index stay equal, and the policies
//! behave as their definitions say on small workloads.

use super::workload::{generate_chat, GeneratorConfig};
use super::*;
use crate::policy::{PolicyConfig, PolicyKind};

fn fleet(workers: usize, capacity_blocks: usize) -> FleetConfig {
    FleetConfig {
        workers,
        capacity_blocks,
        timing: Default::default(),
        policy: PolicyConfig::default(),
    }
}

fn small_chat() -> workload::Workload {
    generate_chat(&GeneratorConfig {
        sessions: 40,
        turns: 6,
        ..GeneratorConfig::default()
    })
}

#[test]
fn every_request_completes_and_index_mirrors_caches() {
    let w = small_chat();
    for kind in [
        PolicyKind::CacheAware,
        PolicyKind::RoundRobin,
        PolicyKind::Approx,
    ] {
        // Small caches force evictions, so Removed events are exercised too.
        let r = simulate(&w, &fleet(4, 300), kind);
        assert_eq!(r.requests, w.requests.len(), "{kind:?}");
        assert!(r.evictions > 0, "{kind:?} should evict with small caches");
        assert_eq!(
            r.index_mismatches, 0,
            "{kind:?}: index must equal the caches"
        );
        assert!(r.index_entries > 0 && r.index_entries <= 4 * 300);
        assert!(r.hit_rate > 0.0 && r.hit_rate < 1.0);
        assert!(r.ttft_p50_ms <= r.ttft_p99_ms);
    }
}

#[test]
fn cache_aware_beats_round_robin_on_chat() {
    let w = small_chat();
    let ca = simulate(&w, &fleet(4, 2000), PolicyKind::CacheAware);
    let rr = simulate(&w, &fleet(4, 2000), PolicyKind::RoundRobin);
    assert!(
        ca.hit_rate > rr.hit_rate * 1.2,
        "cache-aware {:.3} vs round-robin {:.3}",
        ca.hit_rate,
        rr.hit_rate
    );
    assert!(ca.ttft_mean_ms < rr.ttft_mean_ms);
}

#[test]
fn simulation_is_deterministic() {
    let w = small_chat();
    let a = simulate(&w, &fleet(3, 500), PolicyKind::Random);
    let b = simulate(&w, &fleet(3, 500), PolicyKind::Random);
    assert_eq!(a.hit_rate, b.hit_rate);
    assert_eq!(a.ttft_cdf_ms, b.ttft_cdf_ms);
}
