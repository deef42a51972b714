#!/usr/bin/env bash
# Regenerates src/plot/DejaVuSans-subset.ttf, the font the plots embed: Latin-1 plus the few
# symbols the plots print (µ, ×, ≤, ≥, arrows, dashes), from Debian's fonts-dejavu-core with
# fonttools' pyftsubset (PyPI `fonttools`). Not part of setup: the subset is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}"
python3 -m pip install --quiet fonttools
pyftsubset "$src" \
  --unicodes="U+0020-007E,U+00A0-00FF,U+00B5,U+00D7,U+2013,U+2014,U+2018,U+2019,U+201C,U+201D,U+2026,U+2190-2193,U+2212,U+2264,U+2265,U+221E,U+0394,U+03BC" \
  --layout-features='*' --output-file=src/plot/DejaVuSans-subset.ttf
