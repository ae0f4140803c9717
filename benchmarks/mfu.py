#!/usr/bin/env python
"""Model FLOPs utilisation (MFU) of MAE pretraining: FLOPs of a training step / (step time x peak).

The step is the pretraining engine's: forward at mask ratio 0.75 (norm-pix loss), backward, AdamW
(0.9, 0.95), under the chosen autocast precision; median of ``--steps`` after ``--warmup``.

FLOPs are the model's, counted analytically for the matmuls (2 per multiply-add; the patch embedding,
every linear layer of the encoder on the 1 + 49 visible tokens and of the decoder on 1 + 196, the two
attention matmuls, the prediction head) and x3 for forward + backward, the usual MFU convention
(elementwise ops, norms and softmax not counted; with ``grad_checkpointing`` the recomputation is not
counted either, so MFU stays comparable). ``torch.utils.flop_counter.FlopCounterMode`` counts the same
step as a cross-check (its SDPA formulas cover the CUDA kernels, not the CPU one).

Peak: ``--peak-tflops``; by default 989 TFLOP/s for an H100/H200 (SXM, dense bf16 tensor cores, NVIDIA's
datasheet figure, no sparsity), else none and only the achieved TFLOP/s is printed.

    python benchmarks/mfu.py --device cuda --precision bf16                   # MAE ViT-L, batch 256
    python benchmarks/mfu.py --model vit_base_patch16 --batch 2 --steps 1     # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mae_transfer.models.mae import MAE_PRESETS, mae_from_preset  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DENSE_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # NVIDIA datasheets, SXM, dense (no sparsity)


def analytic_train_flops(kw: dict, batch: int, img_size: int, mask_ratio: float) -> float:
    """3 x the forward matmul FLOPs of the MAE ``kw`` (MAE_PRESETS entry) on ``batch`` images."""
    p, C, D, depth = kw["patch_size"], 3, kw["embed_dim"], kw["depth"]
    Dd, dd, mlp = kw["decoder_embed_dim"], kw["decoder_depth"], kw.get("mlp_ratio", 4.0)
    L = (img_size // p) ** 2
    n = 1 + int(L * (1 - mask_ratio))  # encoder tokens: cls + visible
    N = 1 + L                          # decoder tokens

    def block(tokens, dim):  # qkv + proj + MLP, then q k^T and attn v
        return 2 * tokens * dim * dim * (3 + 1 + 2 * mlp) + 2 * 2 * tokens * tokens * dim

    fwd = 2 * L * C * p * p * D + depth * block(n, D) + 2 * n * D * Dd + dd * block(N, Dd) + 2 * N * Dd * p * p * C
    return 3.0 * fwd * batch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="bf16", choices=tuple(DTYPES))
    ap.add_argument("--model", default="vit_large_patch16", help="encoder preset (MAE_PRESETS['mae_' + it])")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 CPU, 20 CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 CPU, 5 CUDA)")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for this precision")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    steps, warmup = args.steps or (20 if cuda else 3), args.warmup if args.warmup is not None else (5 if cuda else 1)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if cuda else f"CPU x{torch.get_num_threads()} threads"
    peak = args.peak_tflops
    if peak is None and cuda and args.precision in ("bf16", "fp16"):
        peak = next((v for k, v in DENSE_BF16_TFLOPS.items() if k in name), None)

    torch.manual_seed(0)
    model = mae_from_preset("mae_" + args.model, norm_pix_loss=True, grad_checkpointing=args.grad_checkpointing)
    model = model.to(device).train()
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    dtype = DTYPES[args.precision]

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x, mask_ratio=0.75)[0]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        step()
    counted = fc.get_total_flops()
    flops = analytic_train_flops(MAE_PRESETS["mae_" + args.model], args.batch, 224, 0.75)
    t = statistics.median(times)
    res = {"device": name, "torch": torch.__version__, "model": args.model, "batch": args.batch,
           "precision": args.precision, "grad_checkpointing": args.grad_checkpointing, "step_s": t,
           "step_s_range": [min(times), max(times)], "train_tflop_per_step_analytic": flops / 1e12,
           "train_tflop_per_step_flop_counter": counted / 1e12, "achieved_tflops": flops / t / 1e12,
           "peak_tflops": peak, "mfu": (flops / t / 1e12 / peak) if peak else None,
           "images_per_s": args.batch / t}
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))
    mfu = f"{100 * res['mfu']:.1f} % of {peak:.0f} TFLOP/s" if peak else "no peak figure for this device (--peak-tflops)"
    print(f"MAE {args.model} batch {args.batch} {args.precision} on {name}: step {t:.3f} s, "
          f"{flops / 1e12:.4g} TFLOP per step (flop counter: {counted / 1e12:.4g}), "
          f"{res['achieved_tflops']:.4g} TFLOP/s achieved, MFU {mfu}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
