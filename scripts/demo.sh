#!/usr/bin/env bash
# The main job: sets up, builds, and compares routing policies with the offline simulator on
# the shipped Mooncake trace and on the built-in chat and RAG workloads. Plots go to out/.
# (The live demo over mock engines, `cache-router demo`, arrives with the HTTP and event-plane
# issues; until then this is the demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --bin cache-router
mkdir -p out
bin=target/release/cache-router
echo "== Mooncake trace (3,993 requests, 512-token blocks): 8 workers x 2,000 blocks"
"$bin" sim --trace testdata/mooncake_trace.jsonl --workers 8 --capacity-blocks 2000 \
  --plot out/sim-trace.png
echo
echo "== chat (200 sessions x 8 turns, 16-token blocks): 8 workers x 2,000 blocks"
"$bin" sim --workload chat --workers 8 --capacity-blocks 2000 --plot out/sim-chat.png
echo
echo "== rag (2,000 requests over 200 documents, 16-token blocks): 8 workers x 2,000 blocks"
"$bin" sim --workload rag --workers 8 --capacity-blocks 2000 --plot out/sim-rag.png
