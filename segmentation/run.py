"""One segmentation run with MMSegmentation's Runner: prepare the config, check the data, train with
validation, and collect the metrics of the last validation into ``metrics.json``."""

from __future__ import annotations

import time
from pathlib import Path

from mae_transfer.common import atomic_write

from .autocast import wrapper_precision
from .config import check_work_dir, prepare_config
from .precision import PrecisionProbeHook, wants_probe
from .data_check import check_data
from .summary import save_outputs

__all__ = ["run"]


def _last_val_hook(num_previews: int = 6):
    """A hook keeping the metrics of the last validation, the iteration it ran at, and the predicted
    label maps of its first ``num_previews`` images (``tools/compare.py`` draws them)."""
    from mmengine.hooks import Hook

    class LastValMetrics(Hook):
        priority = "LOWEST"
        metrics, at_iter = None, -1

        def before_val_epoch(self, runner):
            self.previews = []

        def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            for sample in (outputs or [])[:max(0, num_previews - len(self.previews))]:
                self.previews.append((sample.metainfo["img_path"], sample.pred_sem_seg.data[0].cpu().numpy()))

        def after_val_epoch(self, runner, metrics=None):
            self.metrics, self.at_iter = metrics, runner.iter

    return LastValMetrics()


def save_predictions(previews: list, path: Path):
    """``val_predictions.npz``: ``file_names`` (K,) and ``labels`` (K, H, W) uint8, the predicted label
    maps (written atomically)."""
    import numpy as np

    if not previews:
        return
    arrays = {"file_names": np.array([f for f, _ in previews]),
              "labels": np.stack([m.astype(np.uint8) for _, m in previews])}
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _train(runner):
    """Train; returns the final validation metrics (validating now if the last validation is older,
    e.g. a resumed finished run), the training wall time in seconds and that validation's previews."""
    last = _last_val_hook()
    runner.register_hook(last)
    if wants_probe(runner.cfg):
        runner.register_hook(PrecisionProbeHook())
    t0 = time.time()
    runner.train()
    train_s = time.time() - t0
    summary = last.metrics
    if summary is None or last.at_iter != runner.iter:
        summary = runner.val_loop.run()
    return summary, train_s, last.previews


def _metrics(runner, cfg, cfg_path: Path, summary: dict, **extra) -> dict:
    """metrics.json's content: the scalar metrics rounded, per-class IoU / Acc, and the run's facts."""
    import numpy as np

    metric = next((m for m in runner.val_evaluator.metrics if hasattr(m, "per_class")), None)
    out = {k: round(float(v), 4) for k, v in summary.items() if np.isscalar(v) and not isinstance(v, str)}
    out.update({
        "per_class_IoU": metric.per_class.get("IoU", {}) if metric else {},
        "per_class_Acc": metric.per_class.get("Acc", {}) if metric else {},
        **extra,
        "weights": str(cfg.model.backbone.get("pretrained") or "none"),
        "config": str(cfg_path),
        "iters": runner.iter,
        "data_root": cfg.get("data_root"),
        "test_mode": cfg.model.test_cfg.get("mode"),
        "img_size": cfg.model.backbone.get("img_size"),
        "norm_stats": cfg.get("norm_stats"),
        "device": str(next(runner.model.parameters()).device),
        "world_size": runner.world_size,
        "precision": wrapper_precision(runner.optim_wrapper),
        "precision_probe_s": getattr(runner.optim_wrapper, "probe_times", {}),
        "checkpoint": str(Path(cfg.work_dir) / f"iter_{runner.iter}.pth"),
    })
    return out


def run(args) -> dict:
    """Train and evaluate as ``tools/train_seg.py`` describes; returns the metrics (rank 0 writes them).

    ``args`` has the attributes of that tool's parser (see :func:`segmentation.config.prepare_config`,
    plus ``check_data`` and ``skip_bad_data``)."""
    from mmengine.dist import is_main_process
    from mmengine.logging import MMLogger
    from mmengine.runner import Runner

    t0 = time.time()
    cfg, cfg_path = prepare_config(args)
    check_work_dir(cfg.work_dir, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    logger = MMLogger.get_instance("train_seg", log_level="INFO")
    data_summary = check_data(cfg, args.check_data, args.skip_bad_data, logger)
    runner = Runner.from_cfg(cfg)
    summary, train_s, previews = _train(runner)
    out = _metrics(runner, cfg, cfg_path, summary, wall_s=round(time.time() - t0, 2), train_s=round(train_s, 2),
                   seed=args.seed, data=data_summary)
    if is_main_process():
        out = save_outputs(runner, Path(cfg.work_dir), cfg_path, out, logger)
        save_predictions(previews, Path(cfg.work_dir) / "val_predictions.npz")
    return out
