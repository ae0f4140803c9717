"""MAE pretraining speed: the asymmetric encoder (visible patches only) against mask tokens in the
encoder (the paper's Table 2 baseline), and our transformer blocks against timm's.

For each encoder (ViT-B/16, ViT-L/16 by default) and decoder depth (8 and 1 blocks, 512-d):
  - per-step time of a training step (forward + backward + AdamW) at mask ratio 0.75, median of
    ``--steps`` timed steps after ``--warmup``, the two variants interleaved so load changes hit both;
  - peak memory of a step after the first (CUDA: max allocated above the resting allocation; CPU:
    peak RSS growth in a fresh child process);
  - forward GFLOPs per image counted with fvcore (multiply-adds, fvcore's convention; SDPA counted as
    its two matmuls);
and prints the speed-up / memory / FLOP ratios measured in this run. The paper (Table 2, ViT-L, 128
TPU-v3 cores) reports 2.8x (8-block decoder) to 3.7x (1-block) wall-clock speed-up with 75% masking.

Then our ``Block`` stack vs timm's ``Block`` with the same weights on the same tokens (the encoder's
visible sequence), forward + backward: a slowdown of our attention or MLP shows as a ratio > 1.

  python benchmarks/pretrain_speed.py                                    # CPU, small settings
  python benchmarks/pretrain_speed.py --device cuda --precision bf16 --batch 64 --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mae_transfer.models.mae import MAE_PRESETS, MaskedAutoencoderViT  # noqa: E402
from mae_transfer.models.vit import Block  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(model: str, decoder_depth: int, encoder_mask_tokens: bool, img_size: int, device) -> MaskedAutoencoderViT:
    kw = {**MAE_PRESETS["mae_" + model], "img_size": img_size, "decoder_depth": decoder_depth,
          "norm_pix_loss": True, "encoder_mask_tokens": encoder_mask_tokens}
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**kw).to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Stepper:
    """One training step of ``model`` (forward + backward + AdamW) under the chosen precision."""

    def __init__(self, model, batch: int, img_size: int, device, precision: str, mask_ratio: float):
        self.model, self.device, self.mask_ratio = model, device, mask_ratio
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, img_size, img_size, generator=g).to(device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
        self.dtype = DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def __call__(self) -> float:
        _sync(self.device)
        t = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss, _, _ = self.model(self.x, mask_ratio=self.mask_ratio)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - t


def gflops(model, img_size: int, mask_ratio: float) -> float:
    """Forward GFLOPs (multiply-adds) per image by fvcore, SDPA included."""
    from fvcore.nn import FlopCountAnalysis

    def sdpa(inputs, outputs):  # q (B, H, L, d) @ k^T -> (B, H, L, S), then @ v
        q, k = inputs[0].type().sizes(), inputs[1].type().sizes()
        b = 1
        for s in q[:-2]:
            b *= s
        return 2 * b * q[-2] * k[-2] * q[-1]

    model = model.float().cpu().eval()
    x = torch.randn(1, 3, img_size, img_size)
    noise = torch.rand(1, model.grid_size[0] * model.grid_size[1])

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, mask_ratio=mask_ratio, noise=noise)[0]

    fca = FlopCountAnalysis(Wrap(model), (x,)).set_op_handle("aten::scaled_dot_product_attention", sdpa)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return fca.total() / 1e9


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_probe(args_json: str):
    """Child process (CPU): peak RSS growth (MiB) during one training step after the first; prints JSON."""
    a = json.loads(args_json)
    device = torch.device(a["device"])
    torch.set_num_threads(a["threads"])
    model = build(a["model"], a["decoder_depth"], a["emt"], a["img_size"], device)
    step = Stepper(model, a["batch"], a["img_size"], device, a["precision"], a["mask_ratio"])
    step()  # optimizer state exists from here on, as in training
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM)
    base = _status_kib("VmRSS")
    step()
    peak = (_status_kib("VmHWM") - base) * 1024
    print(json.dumps({"peak_mib": peak / 2 ** 20}))


def measure_memory(args, model: str, depth: int, emt: bool) -> float:
    if args.device == "cuda":  # in-process is exact on CUDA
        torch.cuda.empty_cache()
        m = build(model, depth, emt, args.img_size, torch.device("cuda"))
        step = Stepper(m, args.batch, args.img_size, torch.device("cuda"), args.precision, args.mask_ratio)
        step()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        del m, step
        return peak
    payload = json.dumps(dict(device="cpu", model=model, decoder_depth=depth, emt=emt, img_size=args.img_size,
                              batch=args.batch, precision=args.precision, mask_ratio=args.mask_ratio,
                              threads=torch.get_num_threads()))
    r = subprocess.run([sys.executable, __file__, "--_memory-probe", payload], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_mib"]


def bench_mae(args, device):
    rows = []
    for model in args.models:
        for depth in args.decoder_depths:
            variants = {emt: build(model, depth, emt, args.img_size, device) for emt in (False, True)}
            steppers = {emt: Stepper(m, args.batch, args.img_size, device, args.precision, args.mask_ratio)
                        for emt, m in variants.items()}
            times = {False: [], True: []}
            for i in range(args.warmup + args.steps):
                for emt in (False, True):  # interleaved
                    t = steppers[emt]()
                    if i >= args.warmup:
                        times[emt].append(t)
            del steppers, variants
            row = {"model": model, "decoder_depth": depth,
                   "step_s_mae": statistics.median(times[False]), "step_s_enc_mask_tokens": statistics.median(times[True])}
            row["speedup"] = row["step_s_enc_mask_tokens"] / row["step_s_mae"]
            if not args.no_memory:
                row["mem_mib_mae"] = measure_memory(args, model, depth, False)
                row["mem_mib_enc_mask_tokens"] = measure_memory(args, model, depth, True)
                row["mem_ratio"] = row["mem_mib_enc_mask_tokens"] / max(row["mem_mib_mae"], 1e-9)
            if not args.no_flops:
                row["gflops_mae"] = gflops(build(model, depth, False, args.img_size, "cpu"), args.img_size, args.mask_ratio)
                row["gflops_enc_mask_tokens"] = gflops(build(model, depth, True, args.img_size, "cpu"), args.img_size,
                                                       args.mask_ratio)
                row["flop_ratio"] = row["gflops_enc_mask_tokens"] / row["gflops_mae"]
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def bench_blocks(args, device):
    """Our Block stack vs timm's Block stack, same weights and tokens; forward + backward."""
    from timm.models.vision_transformer import Block as TimmBlock
    rows = []
    for model in args.models:
        p = MAE_PRESETS["mae_" + model]
        dim, heads, depth = p["embed_dim"], p["num_heads"], min(p["depth"], args.block_depth)
        torch.manual_seed(0)
        ours = torch.nn.Sequential(*[Block(dim, heads, 4.0, qkv_bias=True, num_prefix_tokens=1) for _ in range(depth)]).to(device)
        theirs = torch.nn.Sequential(*[TimmBlock(dim, heads, 4.0, qkv_bias=True,
                                                 norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)) for _ in range(depth)]).to(device)
        theirs.load_state_dict(ours.state_dict())
        n_tokens = 1 + int((args.img_size // p["patch_size"]) ** 2 * (1 - args.mask_ratio))
        x = torch.randn(args.batch, n_tokens, dim, device=device)
        dtype = DTYPES[args.precision]
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            diff = (ours(x).float() - theirs(x).float()).abs().max().item()

        def step(m):
            _sync(device)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                y = m(x)
            y.float().square().mean().backward()
            _sync(device)
            return time.perf_counter() - t

        times = {"ours": [], "timm": []}
        for i in range(args.warmup + args.steps):
            for name, m in (("ours", ours), ("timm", theirs)):
                t = step(m)
                if i >= args.warmup:
                    times[name].append(t)
        row = {"model": model, "blocks": depth, "tokens": n_tokens, "ours_s": statistics.median(times["ours"]),
               "timm_s": statistics.median(times["timm"]), "max_abs_diff": diff}
        row["ours_over_timm"] = row["ours_s"] / row["timm_s"]
        rows.append(row)
        print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=tuple(DTYPES))
    ap.add_argument("--models", default="vit_base_patch16,vit_large_patch16")
    ap.add_argument("--decoder-depths", default="8,1")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: 3 CPU, 20 CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 CPU, 5 CUDA)")
    ap.add_argument("--block-depth", type=int, default=4, help="blocks in the ours-vs-timm stack")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--_memory-probe", dest="memory_probe", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    if args.precision == "bf16" and args.device == "cuda" and not torch.cuda.is_bf16_supported():
        ap.error("--precision bf16: this GPU has no bfloat16")
    args.models = args.models.split(",")
    args.decoder_depths = [int(d) for d in args.decoder_depths.split(",")]
    cuda = args.device == "cuda"
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if cuda else f"CPU x{torch.get_num_threads()} threads"
    print(f"# {name}, precision {args.precision}, batch {args.batch}, {args.img_size}px, mask {args.mask_ratio}, "
          f"{args.steps} timed steps after {args.warmup} warmup", flush=True)
    mae_rows = bench_mae(args, device)
    block_rows = bench_blocks(args, device)
    print("\n| encoder | decoder | step MAE (s) | step [M] in encoder (s) | speed-up | memory ratio | FLOP ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in mae_rows:
        mem = f"{r['mem_ratio']:.2f}x" if "mem_ratio" in r else "-"
        flops = f"{r['flop_ratio']:.2f}x" if "flop_ratio" in r else "-"
        print(f"| {r['model']} | {r['decoder_depth']} blocks | {r['step_s_mae']:.3f} | {r['step_s_enc_mask_tokens']:.3f} | "
              f"{r['speedup']:.2f}x | {mem} | {flops} |")
    print("\n| blocks of | ours (s) | timm (s) | ours / timm | max |diff| |")
    print("|---|---|---|---|---|")
    for r in block_rows:
        print(f"| {r['model']} x{r['blocks']} ({r['tokens']} tokens) | {r['ours_s']:.4f} | {r['timm_s']:.4f} | "
              f"{r['ours_over_timm']:.2f} | {r['max_abs_diff']:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "args": {k: v for k, v in vars(args).items()
                                                                      if k != "memory_probe"},
                                               "mae": mae_rows, "blocks": block_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
