#!/usr/bin/env bash
# Build a pure-Python detectron2 wheel from the PyPI wheel sal-detectron2==0.7.2, whose Python code
# equals upstream detectron2 at commit a59f0563. Its bundled _C extension is for cp310/CUDA 12/torch 2.3
# and cannot load here, and its top-level `tools` package would shadow ours: both are removed.
# Usage: install/repack_detectron2.sh PYTHON OUTDIR   -> prints the path of the wheel it made
set -euo pipefail
PY=$1; OUT=$2
SHA=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
mkdir -p "$OUT"
existing=$(ls "$OUT"/sal_detectron2-0.7.2-py3-none-any.whl 2>/dev/null || true)
if [ -n "$existing" ]; then echo "$existing"; exit 0; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$work/dl" sal-detectron2==0.7.2 >&2
whl=$(ls "$work"/dl/*.whl)
echo "$SHA  $whl" | sha256sum -c --quiet - >&2 || { echo "repack_detectron2: checksum mismatch for $whl" >&2; exit 1; }
"$PY" -m wheel unpack -d "$work/src" "$whl" >&2
root=$(ls -d "$work"/src/*/)
rm -f "$root"detectron2/_C*.so
rm -rf "$root"tools
info=$(ls -d "$root"*.dist-info)
sed -i -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' -e 's/^Tag: .*/Tag: py3-none-any/' "$info/WHEEL"
sed -i -e '/^detectron2\/_C/d' -e '/^tools\//d' "$info/RECORD"
# The wheel claims numpy<2 and pins that do not hold in practice; we install its real needs ourselves.
sed -i -e '/^Requires-Dist:/d' "$info/METADATA"
mkdir -p "$work/out"
"$PY" -m wheel pack -d "$work/out" "$root" >&2
built=$(ls "$work"/out/*.whl)
mv "$built" "$OUT/"
echo "$OUT/$(basename "$built")"
