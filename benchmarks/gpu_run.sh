#!/usr/bin/env bash
# The GPU checks of benchmarks/, as one prepared run for a lent H100/H200 (never needed by tests or CI).
#   bash benchmarks/gpu_run.sh [OUT_DIR]
# Expects python3 with torch + timm (+ opencv) on the machine; detectron2, fvcore and the MMSeg stack come
# as wheels in .whl/ (made by install/gpu_wheels.sh). Each benchmark prints ratios measured in
# the same process/run, so the numbers compare like with like on whatever card this is.
set -uo pipefail
OUT=${1:-${OUT:-output/gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"; } | tee "$OUT/machine.txt"
run() { name=$1; shift; echo "=== $name: $*"; timeout "$T" python3 "$@" 2>&1 | grep -v -i warn | tee "$OUT/$name.txt"; }
T=150 run pretrain_speed_bf16 benchmarks/pretrain_speed.py --device cuda --precision bf16 --batch 64 --json "$OUT/pretrain_speed_bf16.json"
T=150 run pretrain_speed_l_b256 benchmarks/pretrain_speed.py --device cuda --precision bf16 --batch 256 --models vit_large_patch16 --no-flops --json "$OUT/pretrain_speed_l_b256.json"
T=90  run pretrain_speed_fp32 benchmarks/pretrain_speed.py --device cuda --precision fp32 --batch 64 --models vit_base_patch16 --no-flops --json "$OUT/pretrain_speed_fp32.json"
T=90  run det_speed_b benchmarks/det_backbone_speed.py --device cuda --precision bf16 --model base --img-size 1024 --batch 4
T=90  run det_speed_l benchmarks/det_backbone_speed.py --device cuda --precision bf16 --model large --img-size 1024 --batch 2
T=90  run seg_speed_b benchmarks/seg_backbone_speed.py --device cuda --precision bf16 --json "$OUT/seg_speed_b.json"
echo "done"
