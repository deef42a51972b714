//! Helpers shared by the bench binaries.

/// Small (test) sizes: under `cargo test` (no `--bench` argument), with criterion's `--test` or
/// `--list`, or when `CACHE_ROUTER_BENCH_SMALL` is set to anything but "" or "0". CI runs the
/// benches this way so they finish in seconds while still checking their own results.
pub(crate) fn small_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let env_small =
        std::env::var("CACHE_ROUTER_BENCH_SMALL").is_ok_and(|v| !v.is_empty() && v != "0");
    env_small || has("--test") || has("--list") || !has("--bench")
}
