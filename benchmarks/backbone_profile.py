#!/usr/bin/env python
"""Where a backbone's training step spends its time: ours beside the framework's own, op by op.

Forward + backward steps under ``torch.profiler``, the two backbones alternating, each one's fastest
step shown (after one warm-up step each, which also lets ``attn_form="auto"`` measure its attention forms), the same weights and input as the speed
benchmarks (``det_backbone_speed.py``, ``seg_backbone_speed.py``). Prints self CPU time per aten op for
both, the largest first, and the share of the matrix products (mm / addmm / bmm).

    python benchmarks/backbone_profile.py det --threads 1     # ViTDet ViT-B, 1x512², vs detectron2's ViT
    python benchmarks/backbone_profile.py seg --threads 1     # mmseg backbone ViT-B, 2x224², vs mmseg's MAE
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def det_pair(img_size: int, batch: int):
    from det_backbone_speed import build

    args = SimpleNamespace(model="base", img_size=img_size)
    torch.manual_seed(0)
    ours = build("ours", args).train()
    ref = build("d2", args).train()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(batch, 3, img_size, img_size)
    return ours, ref, x, lambda m: next(iter(m(x).values())).sum()


def seg_pair(img_size: int, batch: int):
    from seg_backbone_speed import build_pair

    ours, ref = build_pair("vit_base_patch16", img_size)
    ours.train(), ref.train()
    x = torch.randn(batch, 3, img_size, img_size)
    return ours, ref, x, lambda m: sum(o.float().mean() for o in m(x))


def self_times(model, loss_fn) -> dict[str, float]:
    """Self CPU ms per op name of one forward + backward."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss_fn(model).backward()
    model.zero_grad(set_to_none=True)
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", choices=["det", "seg"])
    ap.add_argument("--img-size", type=int, default=None, help="default 512 (det), 224 (seg)")
    ap.add_argument("--batch", type=int, default=None, help="default 1 (det), 2 (seg)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rows", type=int, default=14)
    ap.add_argument("--rounds", type=int, default=2, help="profiled steps per backbone, alternating; the fastest is shown")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    det = args.which == "det"
    ours, ref, x, loss_fn = (det_pair if det else seg_pair)(args.img_size or (512 if det else 224),
                                                            args.batch or (1 if det else 2))
    for m in (ours, ref):  # warm-up (allocator, oneDNN primitives, our attention-form measurement)
        loss_fn(m).backward()
        m.zero_grad(set_to_none=True)
    # alternate profiled steps and keep each backbone's fastest: time taken by other processes only adds
    rounds = {"ours": [], "ref": []}
    for _ in range(args.rounds):
        for key, m in (("ours", ours), ("ref", ref)):
            rounds[key].append(self_times(m, loss_fn))
    print("profiled step totals (ms), in order: " + "; ".join(
        f"{k}: " + " ".join(f"{sum(r.values()):.0f}" for r in v) for k, v in rounds.items()))
    t_ours, t_ref = (min(rounds[k], key=lambda r: sum(r.values())) for k in ("ours", "ref"))
    name = "detectron2 ViT" if det else "mmseg MAE"
    ops = sorted(set(t_ours) | set(t_ref), key=lambda k: -max(t_ours.get(k, 0), t_ref.get(k, 0)))
    print(f"{args.which} backbone, input {tuple(x.shape)}, fp32, {torch.get_num_threads()} thread(s): self CPU ms per op")
    print(f"| op | ours | {name} |\n|---|---|---|")
    for k in ops[: args.rows]:
        print(f"| `{k}` | {t_ours.get(k, 0):.0f} | {t_ref.get(k, 0):.0f} |")
    for label, t in (("ours", t_ours), (name, t_ref)):
        total = sum(t.values())
        mm = sum(t.get(k, 0) for k in MATMULS)
        print(f"{label}: total {total:.0f} ms, matrix products {mm:.0f} ms ({100 * mm / total:.0f} %), "
              f"the rest {total - mm:.0f} ms")


if __name__ == "__main__":
    main()
