#!/usr/bin/env bash
# Collect, into .whl/, the pure-Python (or abi3) wheels that benchmarks/gpu_run.sh installs on a GPU
# machine which already has python3.12 + torch + timm + opencv but no detectron2 / MMSeg stack.
# Run here (after `make setup`), then carry .whl/ to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=.whl
mkdir -p "$W"
cp "$(install/repack_detectron2.sh "$PY" .venv/wheels)" "$W/"
# sdists (built here as py3-none-any wheels)
"$PY" -m pip wheel -q --no-deps -w "$W" fvcore==0.1.5.post20221221 iopath==0.1.9 antlr4-python3-runtime==4.9.3 \
    yacs==0.1.8 onedl-mmcv==2.3.6 onedl-mmsegmentation==1.4.2
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$W" \
    termcolor omegaconf==2.3.0 pycocotools==2.0.11 onedl-mmengine==0.10.12 addict yapf ftfy wcwidth platformdirs prettytable
du -sh "$W"
