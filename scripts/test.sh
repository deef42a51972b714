#!/usr/bin/env bash
# Sets up and runs every test: the dependency-floor check, the images and the compose smoke
# test (where Docker runs), unit, property, end-to-end, cluster and the benches in test mode,
# then clippy with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Benches run once each in test mode, on small data.
export CACHE_ROUTER_BENCH_SMALL=1
# The floors: the core and the sidecar link only what they may (tests/layering.rs, run by
# cargo test, checks the files for import loops).
bash scripts/check-layering.sh
# Where a Docker engine runs (this project's machines and CI): build the images, run the
# NATS suites against containers (testcontainers), the cluster scenarios, and the compose
# fleet's smoke test. Elsewhere the local nats-server binary stands in and the rest is skipped.
if docker info >/dev/null 2>&1; then
  bash docker/build.sh
  export CACHE_ROUTER_TEST_NATS=docker
  bash docker/fleet-smoke.sh
else
  echo "test.sh: no Docker engine answers: NATS suites use the local nats-server binary;" \
       "the cluster scenarios and the compose smoke test are skipped" >&2
fi
cargo test --workspace --all-targets
cargo clippy --workspace --all-targets -- -D warnings
