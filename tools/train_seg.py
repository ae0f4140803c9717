#!/usr/bin/env python
"""Train and evaluate UperNet on a mae_transfer ViT with MMSegmentation's Runner.

    python tools/train_seg.py --config upernet_mae_mini_scenes --weights output/pretrain/ckpt.pth \\
        --work-dir output/segmentation/mae --seed 0
    torchrun --nproc-per-node 8 tools/train_seg.py --config upernet_mae_b_ade20k \\
        --weights mae_pretrain_vit_base.pth --data-root data/ade/ADEChallengeData2016 --launcher pytorch

``--config`` is a path or a bare name in configs/segmentation. ``--weights`` is a checkpoint in any format
mae_transfer.checkpoint reads, or ``none`` for random init (default: the config's, i.e. random init).
Checks the data before training (missing files, label maps that do not fit; ``--skip-bad-data`` leaves bad
pairs out and logs how many), trains with IoUMetric validation, keeps checkpoints and logs in the work
dir, and writes WORK_DIR/metrics.json (mIoU, aAcc, mAcc in percent, per-class IoU, wall times, weights),
WORK_DIR/summary.png (loss curve, per-class IoU) and WORK_DIR/weights.pth (weights only, our format).
Multi-GPU / multi-node: torchrun ... --launcher pytorch (mmengine initialises the process group).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG_DIR = REPO / "configs" / "segmentation"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config file, or a name in configs/segmentation")
    p.add_argument("--weights", default=None,
                   help="pretrained encoder checkpoint (any format mae_transfer reads), or 'none' for random init")
    p.add_argument("--work-dir", default=None, help="default: output/segmentation/<config name>")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from the latest checkpoint in the work dir, or from the given checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None,
                   help="dataset in the ADE20K layout (images/<split>, annotations/<split>); default: the config's")
    p.add_argument("--test-mode", choices=["config", "whole", "slide"], default="config",
                   help="whole-image or sliding-window inference (crop = the training crop, stride 2/3 of it)")
    p.add_argument("--check-data", choices=["config", "pairs", "full", "none"], default="config",
                   help="up-front data check: file pairs only, or also every label map (default: the config's "
                        "data_check, else pairs; label ids are checked per sample during training anyway)")
    p.add_argument("--skip-bad-data", action="store_true",
                   help="leave out bad image/label pairs (and log how many) instead of stopping")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config entries, e.g. train_cfg.max_iters=200 optim_wrapper.optimizer.lr=3e-4 "
                        "(a new max_iters also moves the scheduler ends, val and checkpoint intervals tied to it)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_config(name: str) -> Path:
    for cand in (Path(name), CONFIG_DIR / name, CONFIG_DIR / f"{name}.py"):
        if cand.is_file():
            return cand
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.py"))
    raise FileNotFoundError(f"config {name!r} not found (as a path or in {CONFIG_DIR}); known: {', '.join(known)}")


def _datasets(cfg) -> list[tuple[str, dict]]:
    """(split, dataset cfg) of the train / val / test loaders, wrapped datasets unwrapped."""
    found = []
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = (cfg.get(loader) or {}).get("dataset")
        stack = [ds] if ds else []
        while stack:
            d = stack.pop()
            if "datasets" in d:
                stack.extend(d["datasets"])
            elif "dataset" in d:
                stack.append(d["dataset"])
            else:
                found.append((loader.split("_")[0], d))
    return found


def _key(ds) -> tuple:
    prefix = ds.get("data_prefix", {})
    return (ds.get("data_root"), prefix.get("img_path"), prefix.get("seg_map_path"), ds.get("ann_file"))


def _parse_value(v: str):
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def _follow_max_iters(cfg, orig: int | None):
    """After ``train_cfg.max_iters`` is overridden, move what was tied to the old value with it: scheduler
    ends (the poly decay still reaches 0 at the last iteration), the validation and checkpoint interval."""
    new = (cfg.get("train_cfg") or {}).get("max_iters")
    if orig is None or new is None or new == orig:
        return
    scheds = []
    for sched in cfg.get("param_scheduler") or []:
        if sched.get("end") in (orig, None) or sched["end"] > new:
            sched["end"] = new
        if sched.get("begin", 0) < sched["end"]:  # a warmup longer than the whole run is cut, not kept
            scheds.append(sched)
    if "param_scheduler" in cfg:
        cfg.param_scheduler = scheds
    if cfg.train_cfg.get("val_interval") == orig:
        cfg.train_cfg.val_interval = new
    ckpt = (cfg.get("default_hooks") or {}).get("checkpoint") or {}
    if ckpt.get("interval") == orig:
        ckpt["interval"] = new


def prepare_config(args):
    """Load the config and apply the command line; returns ``(cfg, config path)``."""
    import torch
    from mmengine.config import Config

    path = resolve_config(args.config)
    cfg = Config.fromfile(str(path))
    orig_iters = (cfg.get("train_cfg") or {}).get("max_iters")
    if args.cfg_options:
        opts = {}
        for kv in args.cfg_options:
            if "=" not in kv:
                raise SystemExit(f"train_seg.py: error: --cfg-options expects KEY=VALUE, got {kv!r}")
            k, v = kv.split("=", 1)
            opts[k] = _parse_value(v)
        cfg.merge_from_dict(opts)
        _follow_max_iters(cfg, orig_iters)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or str(REPO / "output" / "segmentation" / path.stem)
    cfg.randomness = dict(seed=args.seed, deterministic=False)
    if args.weights is not None:
        cfg.model.backbone.pretrained = None if args.weights.lower() == "none" else args.weights
    if args.resume == "auto":
        cfg.resume = True
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume

    data_root = args.data_root
    if data_root is None and cfg.get("scenes"):
        from mae_transfer.data.scenes import ensure_scenes
        data_root = str(ensure_scenes(**cfg.scenes))
    if data_root is not None:
        if not Path(data_root).is_dir():
            raise FileNotFoundError(f"--data-root {data_root} is not a folder")
        cfg.data_root = data_root
        for _, ds in _datasets(cfg):
            ds["data_root"] = data_root

    if args.test_mode != "config":
        crop = tuple(cfg.get("crop_size") or cfg.model.data_preprocessor.get("size"))
        cfg.model.test_cfg = (dict(mode="whole") if args.test_mode == "whole" else
                              dict(mode="slide", crop_size=crop, stride=tuple(max(1, c * 2 // 3) for c in crop)))

    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        logging.getLogger("train_seg").warning("no CUDA device: mixed precision (AmpOptimWrapper) off, fp32")
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("loss_scale", None)
        cfg.optim_wrapper.pop("dtype", None)
    if args.launcher == "pytorch" and not torch.cuda.is_available():
        # CPU processes (gloo): mmengine's own init would call torch.cuda.set_device, and its DDP wrapper
        # would pass a device id; a CPU module takes none
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    return cfg, path


def check_data(cfg, mode: str, skip_bad: bool, logger) -> dict:
    """Validate every split up front; with ``skip_bad`` the good names become the dataset's ann_file."""
    from segmentation.data import validate_seg_folder

    if mode == "config":
        mode = cfg.get("data_check", "pairs")
    summary = {}
    if mode == "none":
        return summary
    groups: dict[tuple, list] = {}
    for split, ds in _datasets(cfg):
        groups.setdefault(_key(ds), []).append((split, ds))
    num_classes = int(cfg.model.decode_head.num_classes)
    for members in groups.values():
        split, ds = members[0]
        root = Path(ds.get("data_root") or "")
        prefix = ds.get("data_prefix", {})
        if "img_path" not in prefix or "seg_map_path" not in prefix or ds.get("ann_file"):
            continue
        report = validate_seg_folder(root / prefix["img_path"], root / prefix["seg_map_path"], num_classes,
                                     bool(ds.get("reduce_zero_label", False)), ds.get("img_suffix", ".jpg"),
                                     ds.get("seg_map_suffix", ".png"), ds.get("ignore_index", 255), check=mode,
                                     on_bad="skip" if skip_bad else "error")
        logger.info(f"data check ({mode}) {split}: {report}")
        summary[split] = {"folder": report.img_dir, "pairs": len(report.names), "skipped": len(report.problems)}
        if report.problems:
            lst = Path(cfg.work_dir) / f"data_{split}.txt"
            lst.parent.mkdir(parents=True, exist_ok=True)
            lst.write_text("".join(n + "\n" for n in report.names))
            lst.with_suffix(".skipped.txt").write_text("".join(p + "\n" for p in report.problems))
            for _, d in members:
                d["ann_file"] = str(lst.resolve())
            logger.warning(f"{split}: skipped {len(report.problems)} bad image/label pairs (listed in "
                           f"{lst.with_suffix('.skipped.txt')})")
    return summary


def _summary_png(work_dir: Path, metrics: dict):
    """Loss curve and per-class IoU in one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = sorted(work_dir.glob("*/vis_data/scalars.json"), key=lambda p: p.stat().st_mtime)
    steps, losses = [], []
    for line in (scalars[-1].read_text().splitlines() if scalars else []):
        rec = json.loads(line)
        if "loss" in rec and "step" in rec:
            steps.append(rec["step"])
            losses.append(rec["loss"])
    iou = metrics.get("per_class_IoU", {})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].plot(steps, losses)
    axes[0].set(xlabel="iteration", ylabel="training loss", title=f"loss ({metrics.get('weights')})")
    axes[1].barh(list(iou)[::-1], [v or 0 for v in list(iou.values())[::-1]])
    axes[1].set(xlabel="IoU (%)", title=f"per-class IoU, mIoU {metrics.get('mIoU', float('nan')):.2f}")
    axes[1].tick_params(axis="y", labelsize=6 if len(iou) > 40 else 9)
    fig.tight_layout()
    fig.savefig(work_dir / "summary.png", dpi=100)
    plt.close(fig)


def run(args) -> dict:
    import numpy as np
    from mmengine.dist import is_main_process
    from mmengine.hooks import Hook
    from mmengine.logging import MMLogger
    from mmengine.runner import Runner

    from mae_transfer.checkpoint import save_checkpoint

    class LastValMetrics(Hook):
        priority = "LOWEST"
        metrics, at_iter = None, -1

        def after_val_epoch(self, runner, metrics=None):
            self.metrics, self.at_iter = metrics, runner.iter

    t0 = time.time()
    cfg, cfg_path = prepare_config(args)
    work_dir = Path(cfg.work_dir)
    logger = MMLogger.get_instance("train_seg", log_level="INFO")
    data_summary = check_data(cfg, args.check_data, args.skip_bad_data, logger)

    runner = Runner.from_cfg(cfg)
    last = LastValMetrics()
    runner.register_hook(last)
    t_train = time.time()
    runner.train()
    train_s = time.time() - t_train
    summary = last.metrics
    if summary is None or last.at_iter != runner.iter:  # e.g. resumed a finished run: validate now
        summary = runner.val_loop.run()
    metric = next((m for m in runner.val_evaluator.metrics if hasattr(m, "per_class")), None)
    out = {k: round(float(v), 4) for k, v in summary.items() if np.isscalar(v) and not isinstance(v, str)}
    out.update({
        "per_class_IoU": metric.per_class.get("IoU", {}) if metric else {},
        "per_class_Acc": metric.per_class.get("Acc", {}) if metric else {},
        "wall_s": round(time.time() - t0, 2),
        "train_s": round(train_s, 2),
        "weights": str(cfg.model.backbone.get("pretrained") or "none"),
        "config": str(cfg_path),
        "seed": args.seed,
        "iters": runner.iter,
        "data_root": cfg.get("data_root"),
        "data": data_summary,
        "test_mode": cfg.model.test_cfg.get("mode"),
        "device": str(next(runner.model.parameters()).device),
        "world_size": runner.world_size,
        "checkpoint": str(work_dir / f"iter_{runner.iter}.pth"),
    })
    if is_main_process():
        # mmengine's checkpoints pickle its own classes (refused by weights_only loading): also keep the
        # weights in our format, so `--weights WORK_DIR/weights.pth` and mae_transfer.checkpoint read them
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        save_checkpoint({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                         "config": {"config": str(cfg_path), "iters": runner.iter, "mIoU": out.get("mIoU")}},
                        work_dir / "weights.pth")
        out["weights_file"] = str(work_dir / "weights.pth")
        with open(work_dir / "metrics.json", "w") as f:
            json.dump(out, f, indent=1)
        try:
            _summary_png(work_dir, out)
        except Exception as e:  # noqa: BLE001 - a plot must not lose the metrics
            logger.warning(f"summary.png not written: {e}")
        logger.info(f"mIoU {out.get('mIoU')} in {out['wall_s']} s -> {work_dir / 'metrics.json'}")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from mae_transfer.checkpoint import CheckpointError
    from segmentation.data import SegDataError

    try:
        run(args)
    except (SegDataError, CheckpointError, FileNotFoundError) as e:
        print(f"train_seg.py: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # raised in a data-loader worker, ours arrives wrapped: unwrap it
        msg = str(e).strip()
        if any(t in msg for t in ("SegDataError", "CheckpointError", "CheckpointMismatchError")):
            print(f"train_seg.py: error: {msg.splitlines()[-1]}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
