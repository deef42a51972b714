#!/usr/bin/env bash
# The main job: sets up (nats-server, the tokenizer fixture, fonts), builds, and runs
# `cache-router demo`: its own nats-server, 4 mock vLLM engines with a worker-reporter each,
# a router per policy, and a chat + RAG replay through the router's OpenAI endpoint. Prints the
# policy comparison (live and as the simulator predicts it) and writes PNGs to out/.
# Extra arguments go to `cache-router demo` (see `cache-router demo --help`), e.g.
#   bash scripts/demo.sh --workers 8 --policy cache-aware,round-robin
#   bash scripts/demo.sh --trace testdata/mooncake_trace.jsonl --workers 8 --num-blocks 2000 \
#       --max-requests 1000 --speedup 10 --policy cache-aware,round-robin
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --workspace --bins
mkdir -p out
exec target/release/cache-router demo "$@"
