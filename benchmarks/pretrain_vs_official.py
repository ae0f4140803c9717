#!/usr/bin/env python
"""Our MAE pretraining step against the official MAE code (facebookresearch/mae ``models_mae.py``).

One step = forward (mask ratio 0.75, the official default pixel loss), backward and the AdamW update,
as each side's training loop does it: the official ``main_pretrain.py`` builds ``torch.optim.AdamW``
with its defaults (on a CPU the per-tensor loop), ours comes from ``pretrain.engine.build_optimizer``
(fused where torch has it). Both models hold the same weights (ours loaded from theirs) and see the
same images and the same masking noise; the losses are checked to match before anything is timed.

Timed, with the variants interleaved step by step in this one process (so load from other processes
hits all of them alike) and the median reported:
  - ours fp32 vs official fp32;
  - ours bf16 autocast vs official bf16 autocast;
  - on CUDA, the official code's own AMP (fp16 autocast + grad scaler, as ``main_pretrain.py``);
  - ours at the project's default precision (``precision=auto``: the probe of ``mae_transfer.precision``
    times fp32 and bf16 on this model and batch, uncached) vs official fp32 (and vs its AMP on CUDA).

The official code is read from ``--official``: a checkout or a (bare) git directory of
facebookresearch/mae. Its ``models_mae.py`` and ``util/pos_embed.py`` are exported to a temporary
folder and imported from there. Two compatibility shims, in the exported copy only, nothing in timm:
``np.float`` (gone from numpy 2) reads ``np.float64``, and the module's ``Block`` drops the ``qk_scale``
argument that timm >= 0.9 no longer takes (it was ``None``, i.e. the default scale, anyway).

    python benchmarks/pretrain_vs_official.py --official /path/to/mae --threads 1          # CPU, ViT-B, batch 8
    python benchmarks/pretrain_vs_official.py --official .official-mae.git --device cuda --batch 64 \\
        --steps 20 --warmup 5 --json out.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

OFFICIAL_FILES = ("models_mae.py", "util/pos_embed.py")
ARCHS = {"base": ("mae_vit_base_patch16_dec512d8b", "mae_vit_base_patch16"),
         "large": ("mae_vit_large_patch16_dec512d8b", "mae_vit_large_patch16")}


def export_official(src: str, dst: Path):
    """Write the official files from ``src`` (checkout or git dir) under ``dst``, with the numpy shim."""
    src_path = Path(src)
    for rel in OFFICIAL_FILES:
        if (src_path / rel).is_file():
            text = (src_path / rel).read_text()
        else:  # a git directory (bare or not): the files of HEAD
            text = subprocess.run(["git", f"--git-dir={src}", "show", f"HEAD:{rel}"], check=True,
                                  capture_output=True, text=True).stdout
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text.replace("np.float)", "np.float64)"))
    (dst / "util" / "__init__.py").touch()


def import_official(src: str):
    """The official ``models_mae`` module, its ``Block`` taking (and dropping) ``qk_scale``."""
    from timm.models.vision_transformer import Block

    tmp = Path(tempfile.mkdtemp(prefix="official-mae-"))
    export_official(src, tmp)
    sys.path.insert(0, str(tmp))
    try:
        mod = importlib.import_module("models_mae")
    finally:
        sys.path.remove(str(tmp))

    class OfficialBlock(Block):
        def __init__(self, *args, qk_scale=None, **kwargs):
            super().__init__(*args, **kwargs)

    mod.Block = OfficialBlock  # the name models_mae's constructor looks up
    return mod


def add_weight_decay(model, weight_decay: float = 0.05) -> list[dict]:
    """The official loop's groups (timm 0.3's ``add_weight_decay``): no decay on 1-d tensors and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize()


class Stepper:
    """A training step of one model at one precision: ``step() -> (seconds, loss)``."""

    def __init__(self, model, optimizer, x, noise, ours: bool, precision: str, mask_ratio: float):
        self.model, self.opt, self.x, self.noise, self.ours = model, optimizer, x, noise, ours
        self.precision, self.mask_ratio = precision, mask_ratio
        dev = x.device
        self.dev = dev
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "amp": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(dev.type, enabled=precision == "amp")

    def forward(self):
        if self.ours:
            return self.model(self.x, self.mask_ratio, noise=self.noise)[0]
        # the official masking draws torch.rand(N, L) first thing: the same seed gives the same noise
        torch.manual_seed(0)
        return self.model(self.x, self.mask_ratio)[0]

    def __call__(self) -> tuple[float, float]:
        _sync(self.dev)
        t = time.perf_counter()
        with torch.autocast(self.dev.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.forward()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.dev)
        return time.perf_counter() - t, loss.item()


def build(args, official):
    """(ours, theirs) with the same weights, plus the images and the official noise."""
    from mae_transfer.models.mae import mae_from_preset

    dev = torch.device(args.device)
    their_name, our_name = ARCHS[args.arch]
    torch.manual_seed(0)
    theirs = getattr(official, their_name)().to(dev)
    ours = mae_from_preset(our_name).to(dev)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 224, 224, generator=g).to(dev)
    torch.manual_seed(0)
    noise = torch.rand(args.batch, ours.grid_size[0] * ours.grid_size[1], device=dev)
    return ours, theirs, x, noise


def check_losses(ours, theirs, x, noise, mask_ratio: float) -> tuple[float, float]:
    """Forward losses of both in fp32, no update; they must agree (same weights, same mask)."""
    with torch.no_grad():
        a = ours(x, mask_ratio, noise=noise)[0].item()
        torch.manual_seed(0)
        b = theirs(x, mask_ratio)[0].item()
    if abs(a - b) > 1e-4 * max(1.0, abs(b)):
        raise SystemExit(f"losses differ: ours {a:.6f}, official {b:.6f}")
    return a, b


def probe_default(model, x, noise, mask_ratio, dev) -> tuple[str, dict]:
    """What ``precision=auto`` picks for this model and batch (the real probe, not cached)."""
    from mae_transfer.precision import probe_precision

    return probe_precision(model, lambda: model(x, mask_ratio, noise=noise)[0], dev,
                           "pretrain_vs_official", use_cache=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="facebookresearch/mae checkout or git directory")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--precisions", nargs="+", default=None,
                    help="precisions to compare on both sides (default: fp32 bf16, plus amp for theirs on CUDA)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    from pretrain.engine import build_optimizer

    official = import_official(args.official)
    ours, theirs, x, noise = build(args, official)
    la, lb = check_losses(ours, theirs, x, noise, args.mask_ratio)
    print(f"fp32 loss, same weights and mask: ours {la:.6f}, official {lb:.6f}", flush=True)
    default, probe_times = probe_default(ours, x, noise, args.mask_ratio, dev)
    print(f"precision=auto picks {default} (probe, one forward + backward: "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in probe_times.items()) + ")", flush=True)

    precisions = args.precisions or ["fp32", "bf16"]
    # each variant has its own copy of the model and optimizer state, so updates do not interfere
    steppers = {}
    for prec in precisions:
        for side, model in (("ours", ours), ("official", theirs)):
            m = model if prec == precisions[0] else _clone(model)
            opt = (build_optimizer("adamw", _our_groups(m), 1.5e-4, (0.9, 0.95), 0.9) if side == "ours"
                   else torch.optim.AdamW(add_weight_decay(m), lr=1.5e-4, betas=(0.9, 0.95)))
            steppers[f"{side} {prec}"] = Stepper(m, opt, x, noise, side == "ours", prec, args.mask_ratio)
    if dev.type == "cuda":
        m = _clone(theirs)
        steppers["official amp"] = Stepper(m, torch.optim.AdamW(add_weight_decay(m), lr=1.5e-4, betas=(0.9, 0.95)),
                                           x, noise, False, "amp", args.mask_ratio)
    names = list(steppers)
    times = {n: [] for n in names}
    losses = {n: [] for n in names}
    for r in range(args.warmup + args.steps):
        for n in names if r % 2 == 0 else names[::-1]:  # alternate the order: no variant always runs first
            t, loss = steppers[n]()
            if r >= args.warmup:
                times[n].append(t)
                losses[n].append(loss)
        if r >= args.warmup:
            print(f"step {r + 1 - args.warmup}/{args.steps}: "
                  + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names), flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    dname = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nMAE {args.arch} step (forward + backward + AdamW), batch {args.batch}, 224^2, mask {args.mask_ratio}, "
          f"{dname}, torch {torch.__version__}; median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'variant':<18}{'median (s)':>12}{'min (s)':>10}{'last loss':>12}")
    for n in names:
        print(f"{n:<18}{med[n]:>12.4f}{min(times[n]):>10.4f}{losses[n][-1]:>12.5f}")
    ratios = {}
    for prec in precisions:
        ratios[f"{prec} vs {prec}"] = med[f"official {prec}"] / med[f"ours {prec}"]
    base = "fp32" if "fp32" in precisions else precisions[0]
    if f"ours {default}" in med:
        ratios[f"ours default ({default}) vs official {base}"] = med[f"official {base}"] / med[f"ours {default}"]
        if "official amp" in med:
            ratios[f"ours default ({default}) vs official amp"] = med["official amp"] / med[f"ours {default}"]
    print("speed-up (official time / ours, > 1: ours faster): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "arch": args.arch, "batch": args.batch, "device": dname, "torch": torch.__version__,
            "precision_auto": default, "probe_s": probe_times, "loss_check": [la, lb],
            "median_s": med, "times_s": times, "speedup": ratios}, indent=1))
    return ratios


def _our_groups(model):
    from mae_transfer.optim import param_groups

    return param_groups(model, 0.05)  # what pretrain/mae_task.py gives the engine


def _clone(model):
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    main()
