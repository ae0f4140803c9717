#!/usr/bin/env python
"""Run a trained detector, segmenter or MAE of ours on new images.

    python tools/predict.py --weights output/detection/run/model_final.pth --images photos/ --out pred/det
    python tools/predict.py --weights output/segmentation/run/weights.pth --images 'scans/*.tif' --out pred/seg
    python tools/predict.py --weights output/pretrain/run/checkpoint-final.pth --images photos/ --out pred/mae

The kind of model is read from the checkpoint's keys: a detector of tools/train_det.py (``model_final.pth``
or ``model_*.pth``; its config is the ``config.yaml`` beside it), a segmenter of tools/train_seg.py
(``weights.pth`` or mmengine's ``iter_N.pth``; its config is the one mmengine dumped into the work dir),
or an MAE of pretrain/run.py (``checkpoint-*.pth``; the architecture is in the checkpoint). ``--config``
replaces the config found beside the weights. Every checkpoint is read ``weights_only``.

Images: a folder (searched recursively), a glob or a file; PNG / JPG / TIFF / BMP / WebP, grey, RGB, RGBA or
16-bit grey, any size. They are read as 8-bit RGB, as the models were trained, and every output has the
input image's size. Writes into ``--out``:
- detector: ``results.json`` (COCO results: ``image_id``, ``category_id`` of the training data's
  categories, ``bbox`` x, y, w, h, ``score``, ``segmentation`` RLE), ``images.json`` (the ``images`` and
  ``categories`` the results refer to), ``overlays/NAME.png`` (boxes, masks, class names, scores);
- segmenter: ``labels/NAME.png`` (one label id per pixel, in the training annotations' convention),
  ``overlays/NAME.png`` (class colours over the image), ``classes.json`` (id -> name, colour);
- MAE: ``reconstructions/NAME.png`` (original | masked | reconstruction | reconstruction + visible);
- always ``predict.json`` (what ran, on which images, what was skipped), last.
NAME is the image's path below the inputs' common folder, ``/`` written as ``__``. An unreadable image is
skipped with a warning naming it (``--strict``: the run stops, exit 2). A non-empty ``--out`` is refused
unless ``--overwrite``. Bad input ends with one line naming the file or flag at fault, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mae_transfer.checkpoint import CheckpointError, load_file  # noqa: E402
from mae_transfer.common import ConfigError, disk_full_message, write_json  # noqa: E402
from mae_transfer.predict import ImageError, batches, check_out_dir, checkpoint_kind, find_images  # noqa: E402

PROG = "predict.py"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="detector, segmenter or MAE checkpoint of ours")
    p.add_argument("--images", required=True, help="folder (recursive), glob ('dir/*.png', quoted) or one image file")
    p.add_argument("--out", required=True, help="output folder (refused if not empty, unless --overwrite)")
    p.add_argument("--config", default=None,
                   help="the model's config (default: the one its training run left beside the weights)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if available")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image (exit 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier prediction's files in --out")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="detector: leave out detections scoring below this (default: the config's test_score_thresh)")
    p.add_argument("--mask-ratio", type=float, default=None, help="MAE: fraction of patches masked (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="MAE: seed of the masks (default 0)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.score_thresh is not None and not 0.0 <= args.score_thresh <= 1.0:
        p.error(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    return args


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, ``weights_only``; mmengine's own checkpoints (``iter_N.pth``, which hold
    its plain state classes) through the segmentation adapter's allow-list."""
    try:
        return load_file(path)
    except CheckpointError as e:
        if "(mmengine." not in str(e) and "(numpy." not in str(e):
            raise
    from segmentation.checkpoint import safe_torch_load

    return safe_torch_load(str(path))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    return device


def build_predictor(kind: str, weights: Path, ckpt: dict, args, device: str):
    """The predictor for ``kind``; the framework it needs is imported here, only for that kind."""
    if args.score_thresh is not None and kind != "detector":
        raise ConfigError(f"--score-thresh is for detectors; {weights} holds a {kind}")
    if args.mask_ratio is not None and kind != "mae":
        raise ConfigError(f"--mask-ratio is for MAEs; {weights} holds a {kind}")
    if kind == "detector":
        from detection.predict import DetectionPredictor
        return DetectionPredictor(weights, args.config, device, args.score_thresh)
    if kind == "segmenter":
        from segmentation.predict import SegmentationPredictor
        return SegmentationPredictor(weights, ckpt, args.config, device)
    if args.config:
        raise ConfigError(f"--config is for detectors and segmenters; an MAE is rebuilt from its checkpoint {weights}")
    from pretrain.predict import MAEPredictor
    return MAEPredictor(weights, ckpt, device, args.mask_ratio, args.seed)


def main(args) -> dict:
    """Predict as the module docstring says; returns what ``predict.json`` holds."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    weights, out = Path(args.weights), Path(args.out)
    ckpt = read_checkpoint(weights)
    kind = checkpoint_kind(ckpt, str(weights))
    paths = [p for p in find_images(args.images) if out.resolve() not in p.resolve().parents]  # not our own outputs
    if not paths:
        raise ConfigError(f"--images {args.images!r}: the only images found lie inside --out {str(out)!r}")
    device = resolve_device(args.device)
    check_out_dir(out, overwrite=args.overwrite, weights=weights)
    predictor = build_predictor(kind, weights, ckpt, args, device)
    del ckpt
    print(f"{PROG}: {kind} {weights} on {device}: {len(paths)} images -> {out}", file=sys.stderr, flush=True)
    skipped, done = [], 0
    with tqdm(total=len(paths), desc=f"predict ({kind})", unit="img", file=sys.stderr) as bar:
        def skip(e: ImageError):
            skipped.append(str(e))
            bar.write(f"{PROG}: warning: skipped: {e}", file=sys.stderr)

        for batch in batches(paths, args.batch_size, strict=args.strict, on_skip=skip, progress=bar):
            predictor.predict(batch, out)
            done += len(batch)
    if not done:
        raise ImageError(f"none of the {len(paths)} images of --images {args.images!r} could be read")
    summary = {"kind": kind, "weights": str(weights), "images": str(args.images), "predicted": done,
               "skipped": skipped, "device": device, "batch_size": args.batch_size, **predictor.finish(out),
               "wall_s": round(time.perf_counter() - t0, 3)}
    write_json(summary, out / "predict.json")
    print(f"{PROG}: {done} images predicted, {len(skipped)} skipped, in {summary['wall_s']:.1f} s -> {out}",
          file=sys.stderr, flush=True)
    return summary


def cli(argv=None) -> int:
    """Bad input (weights, config, images, flags) ends with one line naming the item at fault, exit 2."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        main(args)
    except (ConfigError, CheckpointError, ImageError) as e:
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        msg = disk_full_message(e, args.out)
        if msg is None:
            raise
        print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
