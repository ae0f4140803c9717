"""fp32 against bf16 autocast for each step of the demo (`make demo`), on this machine.

For the four kinds of training step the demo runs -- MAE pretraining, classification (fine-tune and the
supervised baseline), Mask R-CNN (``vitdet_scenes_demo``) and UperNet (``upernet_mae_scenes_demo``) -- it
times forward + backward + optimizer step at the demo's batch in fp32 and under bf16 autocast, the two
interleaved so that load changes hit both, and prints the median step times, their ratio and what
``precision=auto``'s rule (:func:`mae_transfer.precision.choose_precision`) makes of them. Detection and
segmentation step through the trainers / optim wrappers the precision keys select. The demo keeps fp32
where bf16 is not faster (a tiny model spends its time in small, memory-bound ops).

    python benchmarks/demo_precision.py [--threads 1] [--steps 8] [--only mae cls det seg]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def _autocast(precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def mae_step():
    """MAE vit_mini_patch4 at 32 px, batch 256, mask 0.75, AdamW (configs/pretrain/mini_photos.py)."""
    from mae_transfer.models.mae import MAE_PRESETS, MaskedAutoencoderViT

    model = MaskedAutoencoderViT(**{**MAE_PRESETS["mae_vit_mini_patch4"], "img_size": 32, "norm_pix_loss": True})
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, noise = torch.randn(256, 3, 32, 32), torch.rand(256, 64)

    def step(precision):
        with _autocast(precision):
            loss = model(x, mask_ratio=0.75, noise=noise)[0]
        opt.zero_grad()
        loss.float().backward()
        opt.step()
    return step


def cls_step():
    """vit_mini_patch4 classification at 32 px, batch 64 (fine-tune / supervised of the demo)."""
    from mae_transfer.models.vit import VIT_PRESETS, VisionTransformer

    model = VisionTransformer(**{**VIT_PRESETS["vit_mini_patch4"], "img_size": 32, "num_classes": 10,
                                 "global_pool": "avg"})
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def step(precision):
        with _autocast(precision):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def det_step():
    """Mask R-CNN of vitdet_scenes_demo, batch 8, one trainer run_step (SimpleTrainer / AutocastTrainer).

    The trainers ``train.precision`` selects (fp32: detectron2's ``SimpleTrainer``, bf16: our
    ``AutocastTrainer``), each ``run_step`` drawing its batch from the demo's real loader."""
    from detectron2.config import instantiate
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.events import EventStorage

    from detection.config import load_config
    from detection.datasets import setup_datasets
    from detection.engine import AutocastTrainer

    cfg = load_config("vitdet_scenes_demo", ["train.device=cpu"])
    out = Path("output/benchmarks/demo_precision")
    setup_datasets(cfg, out)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    loader = instantiate(cfg.dataloader.train)
    trainers = {"fp32": SimpleTrainer(model, loader, opt),
                "bf16": AutocastTrainer(model, loader, opt, precision="bf16", device_type="cpu")}
    storage = EventStorage(0)
    storage.__enter__()  # detectron2's heads and the trainers' metrics log into the current storage
    for t in trainers.values():
        t.iter, t.storage = 0, storage

    def step(precision):
        trainers[precision].run_step()
    return step


def seg_step():
    """UperNet of upernet_mae_scenes_demo, batch 8, mmseg's train_step (OptimWrapper / AutocastOptimWrapper)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS

    import segmentation  # noqa: F401  (registers the backbone)
    from mae_transfer.data.scenes import ensure_scenes

    cfg = Config.fromfile(str(Path("configs/segmentation/upernet_mae_scenes_demo.py")))
    init_default_scope("mmseg")
    root = ensure_scenes(**{k: v for k, v in cfg.scenes.items()})
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.data_root = str(root)
    ds = DATASETS.build(ds_cfg)
    from mmengine.dataset import pseudo_collate

    data = pseudo_collate([ds[i] for i in range(cfg.train_dataloader.batch_size)])
    model = MODELS.build(cfg.model).train()
    from mmengine.optim import OptimWrapper

    from segmentation.autocast import AutocastOptimWrapper

    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    # the optim wrappers --precision fp32 / bf16 select, through mmseg's own train_step
    wrappers = {"fp32": OptimWrapper(optimizer=opt), "bf16": AutocastOptimWrapper(dtype="bfloat16", optimizer=opt)}

    def step(precision):
        model.train_step(data, wrappers[precision])
    return step


STEPS = {"mae": mae_step, "cls": cls_step, "det": det_step, "seg": seg_step}


def time_interleaved(step, steps: int, warmup: int = 2) -> dict[str, float]:
    times = {"fp32": [], "bf16": []}
    for i in range(warmup + steps):
        for precision in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
            t = time.perf_counter()
            step(precision)
            if i >= warmup:
                times[precision].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs 2 one-thread cells)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", nargs="+", choices=list(STEPS), default=list(STEPS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), bf16 matmul kernels: "
          f"{torch.backends.mkldnn.is_available()} (oneDNN)")
    from mae_transfer.precision import choose_precision

    print("| step | fp32 | bf16 autocast | bf16 / fp32 time | auto's rule picks |\n|---|---|---|---|---|")
    for name in args.only:
        t = time_interleaved(STEPS[name](), args.steps)
        print(f"| {name}: {STEPS[name].__doc__.splitlines()[0]} | {t['fp32'] * 1000:.0f} ms | "
              f"{t['bf16'] * 1000:.0f} ms | {t['bf16'] / t['fp32']:.2f}x | {choose_precision(t)} |", flush=True)


if __name__ == "__main__":
    main()
