#!/usr/bin/env python
"""Segmentation backbone speed and peak memory: our ``PlainViTBackbone`` vs mmseg's own ``MAE`` backbone.

Both are built with the ADE20K recipe's settings (BEiT relative position bias, layer scale, cls token,
drop path 0.1, outputs of blocks 3/5/7/11 for B or 7/11/15/23 for L) and hold the same weights (mmseg's
converted by ``mae_transfer.checkpoint_keys``). One training step = forward + backward of the mean of the four
feature maps; inference = forward under ``no_grad``. Each model runs in its own fresh process so peak
memory is its own (CUDA: ``max_memory_allocated`` above the weights; CPU: the process's peak RSS,
weights and libraries included, so CPU memory ratios understate the difference). Printed: images/s, ms/step and peak memory of each, and the ratios ours / mmseg.

    python benchmarks/seg_backbone_speed.py                                    # CPU: ViT-B at 224², batch 2
    python benchmarks/seg_backbone_speed.py --device cuda --precision bf16     # GPU: ViT-B at 512², batch 8
    python benchmarks/seg_backbone_speed.py --device cuda --arch vit_large_patch16 --batch-size 4
    python benchmarks/seg_backbone_speed.py --interleaved --threads 1 --steps 8   # CPU: train steps alternating
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT_INDICES = {"vit_base_patch16": (3, 5, 7, 11), "vit_large_patch16": (7, 11, 15, 23),
               "vit_small_patch16": (3, 5, 7, 11), "vit_mini_patch4": (1, 2, 3, 5)}


def build_pair(arch: str, img_size: int):
    """Our PlainViTBackbone and mmseg's MAE with identical weights (train mode)."""
    import torch
    from mmengine.config import ConfigDict

    import segmentation  # noqa: F401  (registers PlainViTBackbone)
    from mae_transfer.checkpoint import to_mae_transfer_keys
    from mae_transfer.models.vit import VIT_PRESETS
    from mmseg.registry import MODELS

    p = VIT_PRESETS[arch]
    out_indices = OUT_INDICES.get(arch, (p["depth"] - 1,))
    ref = MODELS.build(ConfigDict(type="MAE", img_size=img_size, patch_size=p["patch_size"], embed_dims=p["embed_dim"],
                                  num_layers=p["depth"], num_heads=p["num_heads"], mlp_ratio=4,
                                  out_indices=list(out_indices), drop_path_rate=0.1, init_values=1.0,
                                  norm_cfg=dict(type="LN", eps=1e-6)))
    ref.init_weights()
    ours = MODELS.build(ConfigDict(type="PlainViTBackbone", arch=arch, img_size=img_size, out_indices=out_indices,
                                   drop_path_rate=0.1, rel_pos="bias", init_values=1.0))
    sd, _ = to_mae_transfer_keys(ref.state_dict())
    ours.vit.load_state_dict(sd, strict=True)
    torch.manual_seed(0)
    return ours, ref


def _measure(kind: str, args, queue):
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    dev = torch.device(args.device)
    models = dict(zip(("ours", "mmseg"), build_pair(args.arch, args.img_size)))
    model = models[kind].to(dev)
    del models
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(train: bool):
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            if train:
                outs = model(x)
                sum(o.float().mean() for o in outs).backward()
            else:
                with torch.no_grad():
                    model(x)

    result = {"kind": kind, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    # inference first: on CPU the peak RSS only grows, so the train figure then includes training buffers
    for mode, train in (("infer", False), ("train", True)):
        model.train(train)
        for _ in range(args.warmup):
            step(train)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step(train)
            sync()
            times.append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
        med = sorted(times)[len(times) // 2]
        if dev.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20
        else:  # ru_maxrss: the process's peak RSS in KiB (Linux), weights and libraries included
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result[mode] = {"ms_per_step": round(med * 1e3, 2), "img_per_s": round(args.batch_size / med, 2),
                        "peak_mem_MiB": round(peak, 1)}
    queue.put(result)


def interleaved(args) -> dict:
    """Both backbones in this process, training steps alternating (the order flips every step), so load
    from other processes hits both alike; median ms per step of each and the speed ratio, no memory."""
    import statistics

    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    dev = torch.device(args.device)
    models = dict(zip(("ours", "mmseg"), build_pair(args.arch, args.img_size)))
    for m in models.values():
        m.to(dev)
        m.train()  # not chained: mmseg's backbones' train() returns None
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)

    def step(model) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            outs = model(x)
            sum(o.float().mean() for o in outs).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    for m in models.values():
        for _ in range(args.warmup):
            step(m)
    times = {k: [] for k in models}
    order = list(models)
    for i in range(args.steps):
        for k in order if i % 2 == 0 else order[::-1]:
            times[k].append(step(models[k]))
        print(f"step {i + 1}/{args.steps}: " + ", ".join(f"{k} {times[k][-1] * 1e3:.0f} ms" for k in order), flush=True)
    from mae_transfer.models.vit import _FORM_CHOICE

    med = {k: statistics.median(t) for k, t in times.items()}
    res = {"median_ms": {k: round(v * 1e3, 1) for k, v in med.items()},
           "times_ms": {k: [round(t * 1e3, 1) for t in v] for k, v in times.items()},
           "train_speed_ratio": round(med["mmseg"] / med["ours"], 3),
           "attention_forms": {"x".join(map(str, k[2])): v for k, v in _FORM_CHOICE.items()}}
    print(json.dumps(dict(arch=args.arch, img_size=args.img_size, batch_size=args.batch_size, device=args.device,
                          precision=args.precision, threads=torch.get_num_threads(), steps=args.steps)))
    print(f"train step, median: ours {res['median_ms']['ours']} ms, mmseg {res['median_ms']['mmseg']} ms; "
          f"speed ours / mmseg x{res['train_speed_ratio']} (> 1: ours faster); attention forms: {res['attention_forms']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vit_base_patch16", choices=sorted(OUT_INDICES))
    ap.add_argument("--img-size", type=int, default=None, help="default: 512 on cuda, 224 on cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 8 on cuda, 2 on cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 cuda, 3 cpu)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 cuda, 1 cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--interleaved", action="store_true",
                    help="train steps only, both backbones in one process, alternating (no memory figures)")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.img_size = args.img_size or (512 if cuda else 224)
    args.batch_size = args.batch_size or (8 if cuda else 2)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.interleaved:
        return interleaved(args)

    ctx = mp.get_context("spawn")
    results = {}
    for kind in ("mmseg", "ours"):
        q = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(kind, args, q))
        proc.start()
        results[kind] = q.get()
        proc.join()
    info = dict(arch=args.arch, img_size=args.img_size, batch_size=args.batch_size, device=args.device,
                precision=args.precision, steps=args.steps)
    if cuda:
        import torch
        info["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(info))
    print(f"{'':8s} {'params':>8s} | {'train img/s':>11s} {'ms/step':>9s} {'peak MiB':>9s} | "
          f"{'infer img/s':>11s} {'ms/step':>9s} {'peak MiB':>9s}")
    for kind in ("mmseg", "ours"):
        r = results[kind]
        print(f"{kind:8s} {r['params_M']:>7.1f}M | {r['train']['img_per_s']:>11.2f} {r['train']['ms_per_step']:>9.1f} "
              f"{r['train']['peak_mem_MiB']:>9.0f} | {r['infer']['img_per_s']:>11.2f} {r['infer']['ms_per_step']:>9.1f} "
              f"{r['infer']['peak_mem_MiB']:>9.0f}")
    ratios = {f"{mode}_{what}": round(results["ours"][mode][key] / results["mmseg"][mode][key], 3)
              for mode in ("train", "infer") for what, key in (("speed", "img_per_s"), ("memory", "peak_mem_MiB"))}
    print("ours / mmseg: " + ", ".join(f"{k} x{v}" for k, v in ratios.items())
          + ("" if cuda else "   (CPU memory = process peak RSS, includes the model; GPU numbers are the target)"))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(info, results=results, ratios=ratios), indent=1))
    return results, ratios


if __name__ == "__main__":
    main()
