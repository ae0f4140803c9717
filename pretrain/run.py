"""MAE pretraining and classification transfer: ``python pretrain/run.py [--mode M] [options] [key=value ...]``.

With no arguments: MAE-pretrains ``vit_mini_patch4`` on Fashion-MNIST for a few CPU minutes and writes
a checkpoint, a loss curve and a reconstruction figure (see configs/pretrain/mini_fashion_mnist.py).

  python pretrain/run.py                                             # MAE pretraining, small CPU default
  python pretrain/run.py --mode linprobe --weights OUT/checkpoint-final.pth
  python pretrain/run.py --mode finetune --weights mae_pretrain_vit_base.pth --config configs/pretrain/imagenet_vit_base.py --data /imagenet
  python pretrain/run.py --mode partial --blocks 2 --weights CKPT
  python pretrain/run.py --mode supervised
  python pretrain/run.py --mode sweep ratios=0.25,0.5,0.75,0.9                 # Fig. 5
  python pretrain/run.py --mode sweep decoder_depth=1,2,4 target=pixel,norm_pix  # any fields: a grid
  python pretrain/run.py --mode sweep table1                                   # Table 1's six axes
  python pretrain/run.py --mode sweep blocks=0,1,2,4,all --weights mae=CKPT --weights supervised=CKPT  # Fig. 9
  torchrun --nproc_per_node 8 pretrain/run.py --config configs/pretrain/imagenet_vit_large.py --data /imagenet

Every config field can be overridden as ``key=value`` (``finetune.epochs=3`` for one mode's section);
``python pretrain/run.py --help-config`` lists them. Outputs (``--out``, default
output/pretrain/<mode>-<time>): checkpoint-final.pth (our format), metrics.json, log.jsonl, log.txt,
tensorboard/, and loss.png + reconstruction.png (pretraining) or top-1 in metrics.json (classification).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the repository's folder as the package `pretrain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import pretrain  # noqa: F401
    __package__ = "pretrain"

from mae_transfer.checkpoint import CheckpointError  # noqa: E402
from mae_transfer.common import disk_full_message, is_random_init, write_json  # noqa: E402
from mae_transfer.data.datasets import DataError  # noqa: E402
from . import sweep  # noqa: E402
from .config import DEFAULT_CONFIG, FIELDS, MODES, ConfigError, load_config, parse_overrides, resolve  # noqa: E402
from .sweep import split_args  # noqa: E402

logger = logging.getLogger("pretrain")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, help="what to run (default: the config's mode, else pretrain)")
    p.add_argument("--config", help=f"Python config file (default {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[2])})")
    p.add_argument("--out", help="output directory (default output/pretrain/<mode>-<time>)")
    p.add_argument("--seed", type=int)
    p.add_argument("--data", "--data-path", dest="data",
                   help="Fashion-MNIST IDX folder, or an image folder (class subfolders, or train/ and val/ with "
                        "them; PNG / TIFF / JPEG, 8 or 16 bit, grey, RGB, RGBA, N-channel TIFF stacks) "
                        "(default: built-in Fashion-MNIST)")
    p.add_argument("--weights", action="append", metavar="CKPT",
                   help="linprobe/finetune/partial: checkpoint (ours, official MAE, timm/DeiT, Hugging Face; "
                        ".pth or .safetensors) or 'none'; "
                        "sweep blocks=...: NAME=CKPT, repeated for each checkpoint")
    p.add_argument("--blocks", type=int, help="partial: fine-tune the last K blocks")
    p.add_argument("--resume", help="auto (default: latest checkpoint in --out) | none | checkpoint path")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--jobs", type=int, default=1,
                   help="sweep: variants pretrained at once on the CPU, each in its own process with cores / jobs "
                        "threads (default 1)")
    p.add_argument("--help-config", action="store_true", help="list every config field and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def _setup_logging(out: Path | None, is_main: bool):
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S")
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(fmt)
    root.addHandler(h)
    if out is not None and is_main:
        fh = logging.FileHandler(out / "log.txt")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def run_mode(cfg: dict, env) -> dict:
    """Train and evaluate one mode into ``cfg['out']``; returns the metrics written to metrics.json."""
    from .engine import Trainer, TrainingDiverged

    out = Path(cfg["out"])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {str(out)!r} exists and is not a directory")
    weights = cfg.get("weights")
    if cfg["mode"] != "pretrain" and weights and not is_random_init(weights) and out.is_dir() \
            and Path(weights).resolve().parent == out.resolve():
        raise ConfigError(f"--out {str(out)!r} is the folder of the checkpoint --weights reads ({weights}): the "
                          f"{cfg['mode']} run would write its own checkpoint-final.pth and metrics.json over it; "
                          f"choose another --out")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".checkpoint-*.tmp"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)
    _setup_logging(out, env.is_main)
    logger.info("output directory: %s", out.resolve())
    t0 = time.time()
    if cfg["mode"] == "pretrain":
        from .mae_task import MAETask
        task = MAETask(cfg, env)
    else:
        from .classify import ClassifyTask
        task = ClassifyTask(cfg, env)
    trainer = Trainer(cfg, task, env, out, checkpoint_extra={"model_kwargs": task.model_kwargs,
                                                                  "norm_stats": task.norm_stats})
    trainer.maybe_resume()
    if env.is_main:  # only once the config is known to run: a refused one leaves the folder's as it was
        write_json(cfg, out / "config.json")
    logger.info("%s %s: %d epochs x %d iterations, effective batch %d, peak lr %.3g, precision %s, %d process(es)",
                cfg["mode"], cfg["model"], cfg["epochs"], trainer.iters_per_epoch, trainer.eff_batch,
                trainer.peak_lr, trainer.precision, env.world_size)
    try:
        summary = trainer.fit()
    except TrainingDiverged as e:
        if env.is_main:
            write_json({"mode": cfg["mode"], "status": "diverged", "error": str(e), "wall_s": time.time() - t0},
                        out / "metrics.json")
        raise
    finally:
        trainer.close()
    results = task.finish(out, trainer.history)
    metrics = {"mode": cfg["mode"], "status": "ok", **results, "wall_s": time.time() - t0, **summary,
               "model": cfg["model"], "seed": cfg["seed"], "checkpoint": str(out / "checkpoint-final.pth")}
    if cfg["mode"] != "pretrain":
        metrics["weights"] = cfg["weights"] or "none"
        metrics["weights_format"] = task.weights_format
        metrics["train_images"], metrics["test_images"] = len(task.train_set), len(task.val)
    else:
        metrics["mask_ratio"] = cfg["mask_ratio"]
    if env.is_main:
        write_json(metrics, out / "metrics.json")
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
                 if k in ("top1", "top5", "final_loss", "val_loss", "wall_s")}
        logger.info("done: %s", shown)
        logger.info("wrote %s", ", ".join(str(out / n) for n in ("checkpoint-final.pth", "metrics.json", "loss.png",
                                                                  "reconstruction.png") if (out / n).exists()))
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.help_config:
        for k, (d, t, h) in FIELDS.items():
            print(f"{k:20s} {t.__name__:6s} default {d!r:24s} {h}")
        return 0
    from .distributed import all_gather_objects, init_distributed, shutdown
    from .engine import TrainingDiverged
    try:
        file_cfg = load_config(args.config or DEFAULT_CONFIG)
        sweeping = "sweep" in (args.mode, file_cfg.get("mode")) or "mode=sweep" in args.overrides
        # a sweep's axes (field=v1,v2 / table1) are not plain overrides: pretrain/sweep.py reads them
        overrides = parse_overrides(split_args(args.overrides)[1] if sweeping else args.overrides)
        mode = args.mode or overrides.pop("mode", None) or file_cfg.get("mode") or "pretrain"
        weights = args.weights or []
        if len(weights) > 1 and mode != "sweep":
            raise ConfigError(f"--weights given {len(weights)} times: only --mode sweep blocks=... takes several")
        flags = {k: v for k, v in dict(seed=args.seed, out=args.out, data=args.data,
                                       weights=weights[0] if weights and mode != "sweep" else None,
                                       blocks=args.blocks, resume=args.resume, precision=args.precision,
                                       device=args.device).items() if v is not None}
        env = init_distributed(flags.get("device", overrides.get("device", file_cfg.get("device", "auto"))))
        if "out" not in flags and "out" not in overrides and file_cfg.get("out") is None:
            # one timestamp for all ranks
            flags["out"] = all_gather_objects(f"output/pretrain/{mode}-{time.strftime('%Y%m%d-%H%M%S')}")[0]
        _setup_logging(None, env.is_main)
        if mode == "sweep":
            return sweep.run(file_cfg, flags, [i for i in args.overrides if i != "mode=sweep"], weights, env,
                             args.jobs)
        if args.jobs != 1:
            raise ConfigError(f"--jobs {args.jobs}: only --mode sweep runs several things at once")
        run_mode(resolve(file_cfg, mode, flags, overrides), env)
    except (ConfigError, DataError, CheckpointError, TrainingDiverged) as e:
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {msg}", file=sys.stderr, flush=True)
        return 3 if isinstance(e, TrainingDiverged) else 2
    except OSError as e:
        msg = disk_full_message(e, args.out)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
