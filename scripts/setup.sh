#!/usr/bin/env bash
# Installs what cache-router's demo and tests need on a fresh machine, idempotently.
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

need_cargo() {
  if command -v cargo >/dev/null 2>&1; then return 0; fi
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; return 0; fi
  echo "setup: cargo not found; installing the stable toolchain with rustup" >&2
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
}

# plotters draws text through fontconfig/freetype: make sure the libraries and a font exist.
need_fonts() {
  if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists fontconfig freetype2 \
     && fc-list 2>/dev/null | grep -q .; then
    return 0
  fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing fontconfig/freetype development files and a font" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq \
      pkg-config libfontconfig1-dev libfreetype-dev fonts-dejavu-core >/dev/null
  else
    echo "setup: please install fontconfig and freetype development files" >&2
  fi
}

need_cargo
need_fonts
