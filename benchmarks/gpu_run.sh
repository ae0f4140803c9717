#!/usr/bin/env bash
# The GPU checks of benchmarks/ (issue 14's GPU rows), as one prepared run for a lent H100/H200; never
# needed by tests or CI.
#   bash benchmarks/gpu_run.sh [OUT_DIR]          # raw output in OUT_DIR/benchmarks/results/<date>-<gpu>/
# Expects python3 with torch + timm (+ opencv) on the machine; detectron2, fvcore and the MMSeg stack come
# as wheels in .whl/ (made by install/gpu_wheels.sh), the official MAE code as a copy of its git directory
# in .official-mae.git (cp -r /work/.mirror/facebookresearch+mae/repo .official-mae.git; or MAE_OFFICIAL=DIR).
# Carry both. Each benchmark prints ratios measured in the same process/run (steps interleaved), so the
# numbers compare like with like on whatever card this is.
#
# Time: every step has its own timeout and the whole run stops starting steps at BUDGET seconds (default
# 500, under 9 minutes on one H200 with the install); the most wanted rows run first. Fail soft: a step
# that fails or times out is recorded in status.txt and the next one runs.
set -uo pipefail
START=$SECONDS
BUDGET=${BUDGET:-500}
OUT=${1:-${OUT:-output/gpu}}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        || echo "wheel install failed: the detectron2 / mmseg rows will fail"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -o -E '[A-Z][0-9]{2,4}' | head -1)
RES="$OUT/benchmarks/results/$(date -u +%F)-${GPU:-gpu}"
RES=$(echo "$RES" | tr 'A-Z' 'a-z')
mkdir -p "$RES"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$RES/machine.txt"
: > "$RES/status.txt"

# run NAME TIMEOUT_S SCRIPT ARGS...: one benchmark, capped by the time left in BUDGET
run() {
    local name=$1 t=$2; shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then
        echo "$name: skipped (budget of ${BUDGET} s spent)" | tee -a "$RES/status.txt"; return
    fi
    [ "$t" -gt "$left" ] && t=$left
    echo "=== $name (timeout ${t} s): $*"
    local t0=$SECONDS
    timeout -k 5 "$t" python3 "$@" > "$RES/$name.txt" 2>&1
    local rc=$?
    grep -v -i -E "warn|^\s*$" "$RES/$name.txt" | tail -n 25
    echo "$name: rc $rc, $((SECONDS - t0)) s$([ $rc -eq 124 ] && echo ' (timed out)')" | tee -a "$RES/status.txt"
}

OFFICIAL=${MAE_OFFICIAL:-.official-mae.git}
# 1. grad_checkpointing: peak memory and step time off / on, ViT-L ViTDet backbone at 2x1024², MAE ViT-L batch 256
run memory_l 110 benchmarks/memory.py --device cuda --precision bf16 --json "$RES/memory_l.json"
# 2. MFU of MAE ViT-L bf16 pretraining, batch 256 (analytic FLOPs x3 / step time / 989 TFLOP/s dense bf16)
run mfu_mae_l 50 benchmarks/mfu.py --device cuda --precision bf16 --model vit_large_patch16 --batch 256 \
    --json "$RES/mfu_mae_l.json"
# 3. pretraining vs the official MAE code (ours at precision=auto, whose probe logs fp32 / bf16 times and
#    its choice: the GPU row of "precision auto"; theirs fp32 and with their AMP)
if [ -f benchmarks/pretrain_vs_official.py ] && [ -e "$OFFICIAL" ]; then
    run pretrain_vs_official_b 80 benchmarks/pretrain_vs_official.py --official "$OFFICIAL" --device cuda \
        --batch 64 --steps 20 --warmup 5 --json "$RES/pretrain_vs_official_b.json"
else
    echo "pretrain_vs_official_b: skipped (benchmarks/pretrain_vs_official.py or $OFFICIAL missing)" | tee -a "$RES/status.txt"
fi
# 4. segmentation backbone vs mmseg's MAE, ViT-B 8x512², bf16
run seg_speed_b 50 benchmarks/seg_backbone_speed.py --device cuda --precision bf16 --json "$RES/seg_speed_b.json"
# 5. ViTDet backbone vs detectron2's ViT at 1024², bf16
run det_speed_b 50 benchmarks/det_backbone_speed.py --device cuda --precision bf16 --model base --img-size 1024 --batch 4
run det_speed_l 50 benchmarks/det_backbone_speed.py --device cuda --precision bf16 --model large --img-size 1024 --batch 2
# 6. MAE asymmetric speed-up, ViT-L, 8-block decoder, batch 256, vs mask tokens in the encoder (Table 2)
run pretrain_speed_l_b256 90 benchmarks/pretrain_speed.py --device cuda --precision bf16 --batch 256 \
    --models vit_large_patch16 --decoder-depths 8,1 --steps 10 --warmup 3 --no-flops --json "$RES/pretrain_speed_l_b256.json"
echo "done in $((SECONDS - START)) s; raw output in $RES"
cat "$RES/status.txt"
