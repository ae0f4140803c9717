"""What a segmentation run leaves besides mmengine's own files: ``metrics.json``, ``summary.png`` (loss
curve, per-class IoU) and ``weights.pth`` (weights only, in our checkpoint format)."""

from __future__ import annotations

import json
from pathlib import Path

from mae_transfer.checkpoint import save_checkpoint
from mae_transfer.common import write_json

__all__ = ["save_summary_figure", "save_outputs"]


def save_summary_figure(work_dir: Path, metrics: dict):
    """``work_dir/summary.png``: the training loss of the newest ``*/vis_data/scalars.json`` and the
    per-class IoU of ``metrics`` (``per_class_IoU``, ``mIoU``, ``weights``)."""
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


def save_outputs(runner, work_dir: Path, cfg_path: Path, metrics: dict, logger) -> dict:
    """Write ``weights.pth`` (the runner's model), ``metrics.json`` (atomically: its existence means the
    run finished) and ``summary.png`` into ``work_dir``; ``cfg_path`` and ``metrics["mIoU"]`` go into the
    weights file's config. Main process only. Returns ``metrics`` with ``weights_file`` added."""
    # mmengine's checkpoints pickle its own classes (refused by weights_only loading): also keep the
    # weights in our format, so `--weights WORK_DIR/weights.pth` and mae_transfer.checkpoint read them
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    save_checkpoint({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "config": {"config": str(cfg_path), "iters": runner.iter, "mIoU": metrics.get("mIoU")}},
                    work_dir / "weights.pth")
    metrics = {**metrics, "weights_file": str(work_dir / "weights.pth")}
    write_json(metrics, work_dir / "metrics.json")
    try:
        save_summary_figure(work_dir, metrics)
    except Exception as e:  # noqa: BLE001 - a plot must not lose the metrics
        logger.warning(f"summary.png not written: {e}")
    logger.info(f"mIoU {metrics.get('mIoU')} in {metrics['wall_s']} s -> {work_dir / 'metrics.json'}")
    return metrics
