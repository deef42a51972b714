#!/usr/bin/env bash
# Sets up and runs every test: unit, property, end-to-end and the benches in test mode, then
# clippy with warnings as errors, after the dependency-floor check.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Benches run once each in test mode, on small data.
export CACHE_ROUTER_BENCH_SMALL=1
# The floors: the core and the sidecar link only what they may (tests/layering.rs, run by
# cargo test, checks the files for import loops).
bash scripts/check-layering.sh
cargo test --workspace --all-targets
cargo clippy --workspace --all-targets -- -D warnings
