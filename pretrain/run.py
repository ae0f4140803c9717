"""MAE pretraining and classification transfer: ``python pretrain/run.py [--mode M] [options] [key=value ...]``.

With no arguments: MAE-pretrains ``vit_mini_patch4`` on Fashion-MNIST for a few CPU minutes and writes
a checkpoint, a loss curve and a reconstruction figure (see configs/pretrain/mini_fashion_mnist.py).

  python pretrain/run.py                                             # MAE pretraining, small CPU default
  python pretrain/run.py --mode linprobe --weights OUT/checkpoint-final.pth
  python pretrain/run.py --mode finetune --weights mae_pretrain_vit_base.pth --config configs/pretrain/imagenet_vit_base.py --data /imagenet
  python pretrain/run.py --mode partial --blocks 2 --weights CKPT
  python pretrain/run.py --mode supervised
  python pretrain/run.py --mode sweep ratios=0.25,0.5,0.75,0.9
  torchrun --nproc_per_node 8 pretrain/run.py --config configs/pretrain/imagenet_vit_large.py --data /imagenet

Every config field can be overridden as ``key=value`` (``finetune.epochs=3`` for one mode's section);
``python pretrain/run.py --help-config`` lists them. Outputs (``--out``, default
output/pretrain/<mode>-<time>): checkpoint-final.pth (our format), metrics.json, log.jsonl, log.txt,
tensorboard/, and loss.png + reconstruction.png (pretraining) or top-1 in metrics.json (classification).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the repository's folder as the package `pretrain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import pretrain  # noqa: F401
    __package__ = "pretrain"

from mae_transfer.checkpoint import CheckpointError  # noqa: E402
from mae_transfer.common import write_json  # noqa: E402
from mae_transfer.data.datasets import DataError  # noqa: E402
from .config import DEFAULT_CONFIG, FIELDS, MODES, ConfigError, load_config, parse_overrides, resolve  # noqa: E402

logger = logging.getLogger("pretrain")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, help="what to run (default: the config's mode, else pretrain)")
    p.add_argument("--config", help=f"Python config file (default {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[2])})")
    p.add_argument("--out", help="output directory (default output/pretrain/<mode>-<time>)")
    p.add_argument("--seed", type=int)
    p.add_argument("--data", help="Fashion-MNIST IDX folder or ImageFolder (default: built-in Fashion-MNIST)")
    p.add_argument("--weights", help="linprobe/finetune/partial: checkpoint (ours, official MAE, timm/DeiT) or 'none'")
    p.add_argument("--blocks", type=int, help="partial: fine-tune the last K blocks")
    p.add_argument("--resume", help="auto (default: latest checkpoint in --out) | none | checkpoint path")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
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
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".checkpoint-*.tmp"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)
        write_json(cfg, out / "config.json")
    _setup_logging(out, env.is_main)
    logger.info("output directory: %s", out.resolve())
    t0 = time.time()
    if cfg["mode"] == "pretrain":
        from .mae_task import MAETask
        task = MAETask(cfg, env)
    else:
        from .classify import ClassifyTask
        task = ClassifyTask(cfg, env)
    trainer = Trainer(cfg, task, env, out, checkpoint_extra={"model_kwargs": task.model_kwargs})
    trainer.maybe_resume()
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


def run_sweep(file_cfg: dict, flags: dict, overrides: dict, env) -> dict:
    """Pretrain at each ratio in ``ratios``, then linear-probe and fine-tune each; CSV + PNG in ``out``."""
    from mae_transfer.viz import save_sweep_plot

    base = resolve(file_cfg, "sweep", flags, overrides)
    out = Path(base["out"])
    rows = []
    for ratio in base["ratios"]:
        sub = out / f"mask{ratio:.2f}"
        pre = resolve(file_cfg, "pretrain", {**flags, "out": str(sub / "pretrain")},
                      {**overrides, "mask_ratio": ratio})
        pm = run_mode(pre, env)
        row = {"mask_ratio": ratio, "pretrain_loss": pm["final_loss"], "pretrain_wall_s": pm["wall_s"]}
        for mode in ("linprobe", "finetune"):
            c = resolve(file_cfg, mode, {**flags, "out": str(sub / mode), "weights": pm["checkpoint"]}, overrides)
            m = run_mode(c, env)
            row[f"{mode}_top1"], row[f"{mode}_wall_s"] = m["top1"], m["wall_s"]
        rows.append(row)
        if env.is_main:  # rewrite after every ratio so a partial sweep is still readable
            with open(out / "sweep.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    if env.is_main:
        save_sweep_plot([r["mask_ratio"] for r in rows],
                        {"fine-tune": [r["finetune_top1"] for r in rows],
                         "linear probe": [r["linprobe_top1"] for r in rows]},
                        out / "sweep.png", title=f"masking ratio sweep ({base['model']}, seed {base['seed']})")
        write_json({"mode": "sweep", "rows": rows}, out / "metrics.json")
        print(f"sweep: wrote {out / 'sweep.csv'} and {out / 'sweep.png'}", flush=True)
    return {"rows": rows}


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
        overrides = parse_overrides(args.overrides)
        mode = args.mode or overrides.pop("mode", None) or file_cfg.get("mode") or "pretrain"
        flags = {k: v for k, v in dict(seed=args.seed, out=args.out, data=args.data, weights=args.weights,
                                       blocks=args.blocks, resume=args.resume, precision=args.precision,
                                       device=args.device).items() if v is not None}
        env = init_distributed(flags.get("device", overrides.get("device", file_cfg.get("device", "auto"))))
        if "out" not in flags and "out" not in overrides and file_cfg.get("out") is None:
            # one timestamp for all ranks
            flags["out"] = all_gather_objects(f"output/pretrain/{mode}-{time.strftime('%Y%m%d-%H%M%S')}")[0]
        _setup_logging(None, env.is_main)
        if mode == "sweep":
            Path(resolve(file_cfg, "sweep", flags, overrides)["out"]).mkdir(parents=True, exist_ok=True)
            run_sweep(file_cfg, flags, overrides, env)
        else:
            run_mode(resolve(file_cfg, mode, flags, overrides), env)
    except (ConfigError, DataError, CheckpointError, TrainingDiverged) as e:
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {msg}", file=sys.stderr, flush=True)
        return 3 if isinstance(e, TrainingDiverged) else 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
