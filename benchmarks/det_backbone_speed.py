#!/usr/bin/env python
"""ViTDet backbone speed and memory: mae_transfer's ViT vs detectron2's own ``ViT``, same size, same input,
same weights. Forward + backward of the backbone (sum of the output as the loss), timed per step.

    python benchmarks/det_backbone_speed.py                                   # CPU: ViT-mini, 128 px scenes
    python benchmarks/det_backbone_speed.py --model base --img-size 512 --batch 1 --steps 3   # CPU, ViT-B
    python benchmarks/det_backbone_speed.py --device cuda --precision bf16 --model base --img-size 1024 --batch 4
    python benchmarks/det_backbone_speed.py --device cuda --precision bf16 --model large --img-size 1024 --batch 2

Prints one table with both backbones and the ratios ours / detectron2 (time < 1: ours faster; memory < 1:
ours lighter). Steps of the two backbones alternate in one process, and the median is reported, so load
from other processes affects both alike. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above
the weights during a step; on CPU only with ``--rss``: the growth of the process's peak RSS from before
the first step, each backbone timed and measured in fresh child processes, alternating (CPU peak RSS
cannot be reset within a process; the ratio of such runs is more exposed to load changes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {  # name: (embed_dim, depth, heads, patch, pretrain_img_size, window, global blocks)
    "mini": (128, 6, 4, 4, 32, 8, (2, 5)),
    "base": (768, 12, 12, 16, 224, 14, (2, 5, 8, 11)),
    "large": (1024, 24, 16, 16, 224, 14, (5, 11, 17, 23)),
    "huge": (1280, 32, 16, 16, 224, 14, (7, 15, 23, 31)),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(which: str, args) -> nn.Module:
    from detectron2.modeling.backbone.vit import ViT

    from detection.backbone import ViTDetBackbone

    D, depth, heads, patch, pre, window, glob = SIZES[args.model]
    common = dict(img_size=args.img_size, pretrain_img_size=pre, patch_size=patch, embed_dim=D, depth=depth,
                  num_heads=heads, drop_path_rate=0.0, window_size=window)
    if which == "ours":
        return ViTDetBackbone(**common, global_blocks=glob, use_rel_pos=True)
    return ViT(**common, window_block_indexes=[i for i in range(depth) if i not in glob], use_rel_pos=True,
               norm_layer=partial(nn.LayerNorm, eps=1e-6))


def step_fn(model, x, args):
    dev = torch.device(args.device)
    amp = torch.autocast(dev.type, dtype=DTYPES[args.precision]) if args.precision != "fp32" else nullcontext()

    def step():
        with amp:
            out = next(iter(model(x).values()))
        out.float().sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return step


def prepare(which: str, args):
    torch.manual_seed(0)
    model = build(which, args).to(args.device).train()
    if which == "d2":  # same weights in both (our random init differs from detectron2's)
        model.load_state_dict(build("ours", args).state_dict())
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
    return model, step_fn(model, x, args)


def run_cpu_child(which: str, args) -> dict:
    """Child process: warm up, then time steps; report step times and peak-RSS growth in MiB."""
    model, step = prepare(which, args)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up (allocator, one-time init); counts for the peak
    model.zero_grad(set_to_none=True)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"times": times, "peak_mib": peak, "forms": attention_forms()}


def attention_forms() -> dict[str, str]:
    """The attention form ``attn_form="auto"`` measured faster, per (batch x windows, heads, tokens, C)."""
    from mae_transfer.models.vit import _FORM_CHOICE

    return {"x".join(map(str, k[2])) + ("" if k[-1] else " no-grad"): v for k, v in _FORM_CHOICE.items()}


def measure_interleaved(args) -> dict:
    """Both backbones in this process, steps alternating (the order flips every step), so that load from
    other processes hits both alike; on CUDA also the peak memory of one step each (on CPU: not measured
    here, see ``--rss``)."""
    res = {}
    prepared = {w: prepare(w, args) for w in ("ours", "d2")}
    for w, (m, step) in prepared.items():
        step()
        m.zero_grad(set_to_none=True)
    times = {w: [] for w in prepared}
    order = list(prepared)
    for i in range(args.steps):
        for w in order if i % 2 == 0 else order[::-1]:
            m, step = prepared[w]
            t = time.perf_counter()
            step()
            times[w].append(time.perf_counter() - t)
            m.zero_grad(set_to_none=True)
    if not args.device.startswith("cuda"):
        res = {w: {"times": times[w], "peak_mib": float("nan")} for w in prepared}
        res["ours"]["forms"] = attention_forms()
        return res
    for w, (m, step) in prepared.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        m.zero_grad(set_to_none=True)
        res[w] = {"times": times[w], "peak_mib": (torch.cuda.max_memory_allocated() - base) / 2 ** 20}
    res["ours"]["forms"] = attention_forms()
    return res


def measure_cpu(args) -> dict:
    """Alternate short child runs of the two backbones (rounds), so background load hits both alike."""
    res = {w: {"times": [], "peak_mib": 0.0} for w in ("ours", "d2")}
    argv = [a for a in sys.argv[1:] if not a.startswith("--child")]
    for _ in range(args.rounds):
        for w in ("ours", "d2"):
            out = subprocess.run([sys.executable, __file__, *argv, f"--child={w}"], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if out.returncode:
                raise SystemExit(f"child run for {w} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[w]["times"] += r["times"]
            res[w]["peak_mib"] = max(res[w]["peak_mib"], r["peak_mib"])
            res[w]["forms"] = r["forms"]
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SIZES), default="mini")
    p.add_argument("--img-size", type=int, default=128, help="square input side in pixels")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps per backbone (per round on CPU)")
    p.add_argument("--rss", action="store_true",
                   help="CPU: time in alternating fresh child processes (rounds) and report their peak-RSS growth; "
                        "default: both backbones in this process, steps interleaved, no memory figure")
    p.add_argument("--rounds", type=int, default=2, help="CPU with --rss: alternating child-process rounds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--child", choices=["ours", "d2"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_cpu_child(args.child, args)))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    res = measure_cpu(args) if args.rss and not args.device.startswith("cuda") else measure_interleaved(args)
    D, depth, heads, patch, *_ = SIZES[args.model]
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"ViTDet backbone forward+backward: {args.model} ({D}-d x {depth}, {heads} heads, patch {patch}), "
          f"input {args.batch}x3x{args.img_size}x{args.img_size}, {args.precision}, {dev}")
    print(f"{'backbone':<22}{'median step (s)':>16}{'min (s)':>10}{'peak mem (MiB)':>16}")
    for w, name in (("ours", "mae_transfer ViT"), ("d2", "detectron2 ViT")):
        t = res[w]["times"]
        print(f"{name:<22}{statistics.median(t):>16.4f}{min(t):>10.4f}{res[w]['peak_mib']:>16.1f}")
    tr = statistics.median(res["ours"]["times"]) / statistics.median(res["d2"]["times"])
    mr = res["ours"]["peak_mib"] / max(res["d2"]["peak_mib"], 1e-9)
    print(f"ratio ours / detectron2: time {tr:.3f}, peak memory {mr:.3f}")
    print("step times (s), in order: " + "; ".join(
        f"{w}: " + " ".join(f"{t:.2f}" for t in res[w]["times"]) for w in ("ours", "d2")))
    print("our attention forms (auto, measured): " + ", ".join(f"{k}: {v}" for k, v in res["ours"]["forms"].items()))


if __name__ == "__main__":
    main()
