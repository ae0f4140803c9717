#!/usr/bin/env python
"""Mask R-CNN with a (MAE-)pretrained ViT backbone in Detectron2: train, evaluate, write metrics.json.

    python tools/train_det.py --config vitdet_mae_l --weights mae_pretrain_vit_large.pth --num-gpus 8
    python tools/train_det.py --config vitdet_scenes_mini --weights output/pretrain/run/checkpoint-final.pth
    python tools/train_det.py --config vitdet_scenes_demo --weights none --output-dir /tmp/d --seed 1
    python tools/train_det.py --config vitdet_mae_b --img-size 768 ...   # every size-dependent key, printed
    python tools/train_det.py --config vitdet_scenes_mini --eval-only --output-dir DIR   # DIR's last checkpoint
    python tools/train_det.py --config vitdet_scenes_mini --resume --output-dir DIR      # continue DIR's run
    python tools/train_det.py --config vitdet_mae_b --train-json my.json --train-images img/ \\
        --val-json val.json --val-images val/ train.max_iter=20000 dataloader.train.total_batch_size=16

``--config`` is a path or a bare name in configs/detection. ``--weights`` takes any checkpoint
mae_transfer reads (ours incl. MAE pretraining checkpoints, the official MAE release, timm/DeiT, Hugging
Face ViT-MAE; ``.pth`` or ``.safetensors``, see README "Weight formats accepted") for the backbone, a
whole detector checkpoint of ours (e.g. DIR/model_final.pth) for the detector, or ``none``.
Trailing ``key=value`` pairs override the LazyConfig (and win over what ``--img-size`` derives; see
detection/img_size.py for the rule); ``train.precision=fp32|bf16|fp16|auto`` sets the
training precision (bf16 works on CPUs too; auto times fp32 and bf16 on the first batch; unset, the
config's ``train.amp.enabled`` decides; evaluation runs in fp32; see detection/README.md). Multi-GPU / multi-machine through detectron2's
``launch`` (on CPU, ``--num-gpus N`` starts N gloo processes). Writes DIR/metrics.json with ``bbox/AP``,
``segm/AP`` (percent), ``wall_s``, ``weights`` and ``norm_stats`` (the input normalisation: a checkpoint of
ours brings the statistics its encoder was trained with, unless ``model.pixel_mean=`` / ``model.pixel_std=``
are given; detection/norm.py). A DIR holding a finished run is refused unless
``--resume``, ``--eval-only`` (which then writes eval_metrics.json, eval_predictions.png beside the
training's files) or ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron2.engine import default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from detection.checkpoint import SafeDetectionCheckpointer, load_weights  # noqa: E402
from detection.data import CocoFormatError  # noqa: E402
from detection.engine import (build_model, check_output_dir, do_test, do_train, finished_run_files,  # noqa: E402
                              flat_metrics, resolve_weights, preview_predictions, save_prediction_figure,
                              save_predictions, write_metrics)
from detection.config import ConfigError, load_config, resolve_config  # noqa: E402
from detection.datasets import setup_datasets  # noqa: E402
from detection.img_size import own_img_size, set_img_size  # noqa: E402
from detection.norm import apply_checkpoint_norm  # noqa: E402
from mae_transfer.checkpoint import CheckpointError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="LazyConfig path, or a name in configs/detection")
    p.add_argument("--weights", default=None,
                   help="backbone / detector checkpoint, or 'none' (default: the config's train.weights)")
    p.add_argument("--output-dir", default=None, help="default: output/detection/<config name>")
    p.add_argument("--seed", type=int, default=None, help="default: the config's train.seed (-1: random)")
    p.add_argument("--img-size", type=int, default=None, metavar="N",
                   help="N x N inputs: sets the backbone size, square pad, LSJ crop, test resize, anchors and "
                        "ROI level rule together (scaled by N / the config's size; printed at start-up)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate --weights (a detector checkpoint) or the output dir's last checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from the output dir's last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="train into an output dir that holds a finished run (refused without it)")
    p.add_argument("--train-json", help="COCO-format training json (with --train-images)")
    p.add_argument("--train-images", help="folder the training json's file_name entries are relative to")
    p.add_argument("--val-json", help="COCO-format validation json (with --val-images)")
    p.add_argument("--val-images", help="folder the validation json's file_name entries are relative to")
    p.add_argument("--vis", type=int, default=6, help="validation images drawn in DIR/predictions.png (0: none)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (GPUs; on CPU gloo processes)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 ('auto' on one machine)")
    p.add_argument("opts", nargs="*", metavar="key=value", help="LazyConfig overrides")
    args = p.parse_intermixed_args(argv)  # options may also come after the overrides
    if args.num_machines > 1 and args.dist_url == "auto":
        p.error("--num-machines > 1 needs --dist-url tcp://<machine 0>:<port>")
    return args


def setup(args):
    """Config with overrides, output dir, seed, logging (detectron2's default_setup), datasets."""
    cfg = load_config(args.config, args.opts)
    size_lines = set_img_size(cfg, args.img_size, args.opts) if args.img_size is not None else []
    out = args.output_dir or str(Path("output/detection") / resolve_config(args.config).stem)
    cfg.train.output_dir = out
    if args.seed is not None:
        cfg.train.seed = args.seed
    for flag in ("train_json", "train_images", "val_json", "val_images"):
        if getattr(args, flag):
            cfg.data[flag] = getattr(args, flag)
    if "evaluator" in cfg.dataloader and cfg.dataloader.evaluator.get("output_dir", None) is None:
        cfg.dataloader.evaluator.output_dir = str(Path(out) / "inference")  # coco_instances_results.json
    args.config_file = str(resolve_config(args.config))
    check_output_dir(Path(out), resume=args.resume, eval_only=args.eval_only, overwrite=args.overwrite)
    weights_arg = args.weights if args.weights is not None else cfg.train.get("weights", None)
    norm_line = apply_checkpoint_norm(cfg, resolve_weights(weights_arg), args.opts,
                                      reuse_run=args.eval_only or args.resume)
    default_setup(cfg, args)  # writes config.yaml, with the normalisation just chosen
    if comm.is_main_process():
        logging.getLogger("detectron2").info("\n".join([*size_lines, norm_line]))
    setup_datasets(cfg, Path(out) / "datasets", need_train=not args.eval_only)
    if comm.is_main_process():
        save_run_config(cfg, Path(out))
    return cfg


def save_run_config(cfg, out: Path):
    """``out/config.yaml`` again (atomically), now that the datasets have fitted the model (class count,
    mask head, mask format): default_setup wrote it before, and tools/predict.py rebuilds the detector
    from it."""
    from detectron2.config import LazyConfig

    tmp = out / "config.yaml.tmp"
    LazyConfig.save(cfg, str(tmp))
    os.replace(tmp, out / "config.yaml")


def main(args) -> dict:
    t0 = time.perf_counter()
    cfg = setup(args)
    weights_arg = args.weights if args.weights is not None else cfg.train.get("weights", None)
    if args.eval_only:
        weights = resolve_weights(weights_arg) if args.weights is not None else None
        model = build_model(cfg)
        if weights is None:
            ckpt = SafeDetectionCheckpointer(model, cfg.train.output_dir)
            if not ckpt.has_checkpoint():
                raise ConfigError(f"--eval-only: no --weights and no checkpoint in {cfg.train.output_dir}")
            weights = ckpt.get_checkpoint_file()
        report = load_weights(model, weights)
        if report.format != "detector":
            raise CheckpointError(f"--eval-only needs a whole detector checkpoint (e.g. DIR/model_final.pth); "
                                  f"{weights} holds only backbone weights ({report.format} format)")
        metrics = flat_metrics(do_test(cfg, model))
    else:
        weights = resolve_weights(weights_arg)
        metrics, model = do_train(cfg, weights, resume=args.resume)
    norm = {k: v if isinstance(v, str) else [float(x) for x in v] for k, v in cfg.train.norm_stats.items()}
    metrics.update(wall_s=time.perf_counter() - t0, weights=str(weights) if weights else "none",
                   config=args.config_file, seed=int(cfg.train.seed), eval_only=bool(args.eval_only),
                   img_size=own_img_size(cfg), norm_stats=norm,
                   world_size=comm.get_world_size(), device=str(cfg.train.device))
    out = Path(cfg.train.output_dir)
    # an evaluation in a training run's folder writes beside the training's files, not over them
    prefix = "eval_" if args.eval_only and finished_run_files(out) else ""
    write_metrics(out / f"{prefix}metrics.json", metrics)
    if comm.is_main_process() and args.vis > 0:
        dicts, meta, preds = preview_predictions(cfg, model, args.vis)
        save_prediction_figure(out / f"{prefix}predictions.png", dicts, meta, preds)
        save_predictions(out / f"{prefix}val_predictions.npz", dicts, preds)
    return metrics


def _main_or_exit(args):
    """Bad input (config, data, weights) ends with one line naming the item at fault, exit status 2."""
    try:
        return main(args)
    except (ConfigError, CocoFormatError, CheckpointError) as e:
        print(f"train_det.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        from mae_transfer.common import disk_full_message
        msg = disk_full_message(e, args.output_dir)
        if msg is None:
            raise
        print(f"train_det.py: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


def cli(argv=None):
    args = parse_args(argv)
    launch(_main_or_exit, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
