#!/usr/bin/env python
"""Peak memory and step time with and without ``grad_checkpointing`` (per-block ``torch.utils.checkpoint``).

Two training steps, each run with the option off and on, on the same model (same weights; the option is
a switch on the model, so the two variants alternate step by step and background load hits both alike):
  - ``det``: the ViTDet backbone (``detection.backbone.ViTDetBackbone``, the recipe's windows, global
    blocks, decomposed relative position and drop path), forward + backward of the sum of its output map.
  - ``mae``: MAE pretraining (``MaskedAutoencoderViT``, 8-block 512-d decoder, mask 0.75, norm-pix loss),
    forward + backward + AdamW (0.9, 0.95), checkpointing in encoder and decoder.

Peak memory of a step after the first (the optimizer state exists, as in training):
  - CUDA: ``torch.cuda.max_memory_allocated`` during the step, total and above the allocation before it.
  - CPU: the growth of the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) during
    one step, in a fresh child process per variant, with glibc told to serve every allocation above
    64 KiB by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed activations go back to the OS and the RSS
    follows the live tensors instead of malloc's cache. Only the growth is reported (the resting RSS holds
    libraries too).
Printed: median step time, peak memory, and the ratios on / off (memory < 1: the saving; time > 1: the
cost of the recomputation).

    python benchmarks/memory.py --device cuda --precision bf16          # GPU: ViT-L ViTDet 2x1024², MAE ViT-L batch 256
    python benchmarks/memory.py --threads 1 --det-model base --det-size 512 --det-batch 1 \\
        --mae-model vit_base_patch16 --mae-batch 8                         # CPU-sized
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# name: (embed_dim, depth, heads, global blocks, drop path) as the ViTDet recipes (configs/detection/vitdet_mae_*.py)
DET = {"base": (768, 12, 12, (2, 5, 8, 11), 0.1), "large": (1024, 24, 16, (5, 11, 17, 23), 0.4),
       "huge": (1280, 32, 16, (7, 15, 23, 31), 0.5)}


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Case:
    """One of the two training steps, built once; ``step()`` runs one (grad_checkpointing as set)."""

    def __init__(self, row: str, args, device: torch.device):
        self.device, self.dtype = device, DTYPES[args.precision]
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        if row == "det":
            from detection.backbone import ViTDetBackbone
            D, depth, heads, glob, dp = DET[args.det_model]
            self.model = ViTDetBackbone(img_size=args.det_size, embed_dim=D, depth=depth, num_heads=heads,
                                        global_blocks=glob, drop_path_rate=dp, window_size=14).to(device).train()
            self.x = torch.randn(args.det_batch, 3, args.det_size, args.det_size, generator=g).to(device)
            self.opt = None
            self.what = (f"ViTDet backbone {args.det_model} ({D}-d x {depth}), {args.det_batch}x{args.det_size}², "
                         f"forward + backward")
        else:
            from mae_transfer.models.mae import mae_from_preset
            self.model = mae_from_preset("mae_" + args.mae_model, norm_pix_loss=True).to(device).train()
            self.x = torch.randn(args.mae_batch, 3, 224, 224, generator=g).to(device)
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95))
            self.what = f"MAE {args.mae_model}, 8-block decoder, batch {args.mae_batch}, 224², mask 0.75, + AdamW"
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def step(self) -> float:
        _sync(self.device)
        t = time.perf_counter()
        amp = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        with amp:
            if self.opt is None:
                loss = self.model(self.x)[self.model.out_feature].float().sum()
            else:
                loss = self.model(self.x, mask_ratio=0.75)[0]
        self.scaler.scale(loss).backward()
        if self.opt is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
        else:
            self.model.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - t


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def cpu_memory_child(row: str, on: bool, args) -> dict:
    """Child process: one warm-up step, then the peak-RSS growth (MiB) of the next step."""
    case = Case(row, args, torch.device("cpu"))
    case.model.set_grad_checkpointing(on)
    case.step()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    base = _status_kib("VmRSS")
    case.step()
    return {"step_peak_mib": (_status_kib("VmHWM") - base) / 1024}


def measure_memory(case: Case, row: str, on: bool, args) -> dict:
    if case.device.type == "cuda":
        case.model.set_grad_checkpointing(on)
        case.step()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        case.step()
        peak = torch.cuda.max_memory_allocated()
        return {"step_peak_mib": (peak - base) / 2 ** 20, "total_peak_mib": peak / 2 ** 20}
    argv = [a for a in sys.argv[1:] if not a.startswith("--_child")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    r = subprocess.run([sys.executable, __file__, *argv, f"--_child={row}:{int(on)}"], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        raise SystemExit(f"memory child {row} grad_checkpointing={on} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench(row: str, args, device: torch.device) -> dict:
    case = Case(row, args, device)
    times = {False: [], True: []}
    for i in range(args.warmup + args.steps):
        for on in (False, True):  # interleaved
            case.model.set_grad_checkpointing(on)
            t = case.step()
            if i >= args.warmup:
                times[on].append(t)
    res = {"row": row, "what": case.what}
    for on in (False, True):
        key = "on" if on else "off"
        res[f"step_s_{key}"] = statistics.median(times[on])
        res[f"step_s_{key}_range"] = [min(times[on]), max(times[on])]
        if not args.no_memory:
            res.update({f"{k}_{key}": v for k, v in measure_memory(case, row, on, args).items()})
    res["time_ratio"] = res["step_s_on"] / res["step_s_off"]
    if not args.no_memory:
        res["step_peak_ratio"] = res["step_peak_mib_on"] / max(res["step_peak_mib_off"], 1e-9)
        if "total_peak_mib_on" in res:
            res["total_peak_ratio"] = res["total_peak_mib_on"] / res["total_peak_mib_off"]
    del case
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=tuple(DTYPES))
    ap.add_argument("--rows", default="det,mae", help="which steps: det, mae or both")
    ap.add_argument("--det-model", default="large", choices=sorted(DET))
    ap.add_argument("--det-size", type=int, default=1024, help="ViTDet input side in pixels")
    ap.add_argument("--det-batch", type=int, default=2)
    ap.add_argument("--mae-model", default="vit_large_patch16", help="encoder preset (MAE_PRESETS['mae_' + it])")
    ap.add_argument("--mae-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: 3 CPU, 10 CUDA)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        row, on = args.child.split(":")
        print(json.dumps(cpu_memory_child(row, bool(int(on)), args)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ("det", "mae")]
    if bad:
        ap.error(f"--rows: unknown {bad}; use det, mae")
    args.steps = args.steps or (10 if args.device == "cuda" else 3)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"# grad_checkpointing off vs on: {name}, {args.precision}, torch {torch.__version__}, "
          f"{args.steps} timed steps per variant after {args.warmup} warm-up, interleaved", flush=True)
    results = []
    for row in rows:
        r = bench(row, args, device)
        results.append(r)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    cuda = args.device == "cuda"
    print("\n| step | off: time (s) | on: time (s) | time on/off | off: step peak (MiB) | on: step peak (MiB) | "
          f"memory on/off |{' off / on: total peak (MiB) |' if cuda else ''}")
    print("|---|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in results:
        mem = ("- | - | -" if args.no_memory else
               f"{r['step_peak_mib_off']:.0f} | {r['step_peak_mib_on']:.0f} | {r['step_peak_ratio']:.2f}x")
        tot = (f" {r['total_peak_mib_off']:.0f} / {r['total_peak_mib_on']:.0f} |"
               if cuda and not args.no_memory else (" - |" if cuda else ""))
        print(f"| {r['what']} | {r['step_s_off']:.3f} | {r['step_s_on']:.3f} | {r['time_ratio']:.2f}x | {mem} |{tot}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__,
                                               "args": {k: v for k, v in vars(args).items() if k != "child"},
                                               "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
