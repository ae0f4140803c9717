#!/usr/bin/env python
"""Train and evaluate UperNet on a mae_transfer ViT with MMSegmentation's Runner.

    python tools/train_seg.py --config upernet_mae_mini_scenes --weights output/pretrain/ckpt.pth \\
        --work-dir output/segmentation/mae --seed 0
    python tools/train_seg.py --config upernet_mae_b_ade20k --img-size 640 ...  # every size-dependent key
    torchrun --nproc-per-node 8 tools/train_seg.py --config upernet_mae_b_ade20k \\
        --weights mae_pretrain_vit_base.pth --data-root data/ade/ADEChallengeData2016 --launcher pytorch

``--config`` is a path or a bare name in configs/segmentation. ``--weights`` is a checkpoint in any format
mae_transfer.checkpoint reads (``.pth`` or ``.safetensors``; README "Weight formats accepted"), or ``none``
for random init (default: the config's, i.e. random init).
Checks the data before training (missing files, label maps that do not fit; ``--skip-bad-data`` leaves bad
pairs out and logs how many), trains with IoUMetric validation, keeps checkpoints and logs in the work
dir, and writes WORK_DIR/metrics.json (mIoU, aAcc, mAcc in percent, per-class IoU, wall times, weights),
WORK_DIR/summary.png (loss curve, per-class IoU) and WORK_DIR/weights.pth (weights only, our format).
Multi-GPU / multi-node: torchrun ... --launcher pytorch (mmengine initialises the process group).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mae_transfer.checkpoint import CheckpointError  # noqa: E402
from mae_transfer.common import ConfigError  # noqa: E402


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
    p.add_argument("--overwrite", action="store_true",
                   help="train into a work dir that holds a finished run (refused without it or --resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None,
                   help="dataset in the ADE20K layout (images/<split>, annotations/<split>); default: the config's")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes the model predicts (default: DATA_ROOT/classes.txt or metainfo.json, else the "
                        "label ids found in annotations/training, else the config's)")
    p.add_argument("--reduce-zero-label", dest="reduce_zero_label", action="store_true", default=None,
                   help="ADE20K convention: label 0 = 'other', ignored; ids 1..C are the classes "
                        "(default: the config's; without it ids 0..C-1 are the classes)")
    p.add_argument("--no-reduce-zero-label", dest="reduce_zero_label", action="store_false",
                   help="ids 0..C-1 are the classes (0 = background is a class)")
    p.add_argument("--class-weights", choices=["config", "none", "balanced"], default="config",
                   help="per-class weights of the cross-entropy losses: the config's (default), none, or balanced: "
                        "sqrt(median share / class share) of the training pixels, for a rare class to be learned "
                        "in a short schedule (printed at start-up)")
    p.add_argument("--img-size", type=int, default=None, metavar="N",
                   help="N x N crops: sets crop_size, the preprocessor's pad size, the backbone size and every "
                        "pipeline resize / crop together (scaled by N / the config's size; printed at start-up)")
    p.add_argument("--test-mode", choices=["config", "whole", "slide"], default="config",
                   help="whole-image or sliding-window inference (crop = the training crop, stride 2/3 of it)")
    p.add_argument("--check-data", choices=["config", "pairs", "full", "none"], default="config",
                   help="up-front data check: file pairs only, or also every label map (default: the config's "
                        "data_check, else pairs; label ids are checked per sample during training anyway)")
    p.add_argument("--skip-bad-data", action="store_true",
                   help="leave out bad image/label pairs (and log how many) instead of stopping")
    p.add_argument("--precision", choices=["config", "auto", "fp32", "bf16", "fp16"], default="config",
                   help="training precision (evaluation stays fp32): the config's optim wrapper (default), "
                        "auto (fp32 or bf16, whichever a timed forward + backward on the first batch finds "
                        "faster; cached per machine and model), or a fixed one")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config entries, e.g. train_cfg.max_iters=200 optim_wrapper.optimizer.lr=3e-4 "
                        "(a new max_iters also moves the scheduler ends, val and checkpoint intervals tied to it)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Bad input (config, data, weights) ends with one line naming the item at fault, exit status 2."""
    args = parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from segmentation.data import SegDataError
    from segmentation.run import run

    try:
        run(args)
    except (SegDataError, CheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"train_seg.py: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # raised in a data-loader worker, ours arrives wrapped: unwrap it
        from mae_transfer.common import disk_full_message
        if disk_full_message(e, args.work_dir):
            print(f"train_seg.py: error: {disk_full_message(e, args.work_dir)}", file=sys.stderr)
            return 2
        msg = str(e).strip()
        if any(t in msg for t in ("SegDataError", "CheckpointError", "CheckpointMismatchError", "ConfigError")):
            print(f"train_seg.py: error: {msg.splitlines()[-1]}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
