#!/usr/bin/env bash
# The floors the build keeps, checked on the dependency graph (tests/layering.rs checks the
# files: no import loops):
# - the core (cache-router-core) builds on its own and pulls in no async runtime, CLI, HTTP
#   or NATS crate;
# - the sidecar (worker-reporter) links no HTTP server, tokenizer, template engine or plotting;
# - nothing links fontconfig/freetype: plots use an embedded font.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
deps() { cargo tree -q -p "$1" -e normal --prefix none | sed 's/ (.*//; s/ v[0-9].*//' | sort -u; }
forbid() {
  local pkg="$1" pattern="$2" why="$3" hits
  hits=$(deps "$pkg" | grep -E "^($pattern)$" || true)
  if [ -n "$hits" ]; then
    echo "check-layering: $pkg depends on $(echo "$hits" | tr '\n' ' ')— $why" >&2
    fail=1
  else
    echo "check-layering: $pkg: none of $pattern"
  fi
}

forbid cache-router-core 'tokio|tokio-util|mio|clap|axum|hyper|reqwest|async-nats|zeromq|tracing' \
  "the core must stay I/O-free"
forbid worker-reporter 'axum|tokenizers|onig|minijinja|minijinja-contrib|plotters|font-kit|freetype-sys|servo-fontconfig-sys|yeslogic-fontconfig-sys' \
  "the sidecar links only what it uses"
forbid cache-router 'font-kit|freetype-sys|servo-fontconfig-sys|yeslogic-fontconfig-sys' \
  "plots use the embedded font, no system font libraries"
cargo build -q -p cache-router-core
echo "check-layering: cache-router-core builds on its own"
echo "check-layering: worker-reporter links $(deps worker-reporter | wc -l) crates, cache-router $(deps cache-router | wc -l)"
exit "$fail"
