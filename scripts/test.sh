#!/usr/bin/env bash
# Sets up and runs every test: unit, property, end-to-end and the benches in test mode, then
# clippy with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Benches run once each in test mode, on small data.
export CACHE_ROUTER_BENCH_SMALL=1
cargo test --workspace --all-targets
cargo clippy --workspace --all-targets -- -D warnings
