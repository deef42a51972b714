#!/usr/bin/env bash
# Brings the compose fleet up under its own project name and ports, runs docker/smoke.sh
# against it, and tears it down (also on failure): what CI runs to keep the README's compose
# commands working. Needs the images (bash docker/build.sh) and docker compose (v2 plugin or
# v1 docker-compose).
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
project="${COMPOSE_PROJECT:-cache-router-smoke}"
export ROUTER_1_PORT="${ROUTER_1_PORT:-18080}" ROUTER_2_PORT="${ROUTER_2_PORT:-18081}"
down() { "${compose[@]}" -p "$project" -f docker/compose.yaml down -v >/dev/null 2>&1 || true; }
trap down EXIT
started=$SECONDS
"${compose[@]}" -p "$project" -f docker/compose.yaml up -d >/dev/null
ROUTER_1="http://127.0.0.1:$ROUTER_1_PORT" ROUTER_2="http://127.0.0.1:$ROUTER_2_PORT" bash docker/smoke.sh || {
  "${compose[@]}" -p "$project" -f docker/compose.yaml logs --tail 20 >&2 || true
  exit 1
}
echo "fleet-smoke: passed $((SECONDS - started)) s after 'up'"
