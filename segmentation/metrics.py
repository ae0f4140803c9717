"""``PerClassIoUMetric``: mmseg's ``IoUMetric`` that also keeps the per-class IoU / accuracy it logs, so
``tools/train_seg.py`` can write them to ``metrics.json``."""

from __future__ import annotations

import numpy as np

from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

__all__ = ["PerClassIoUMetric"]


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """``IoUMetric`` (same arguments, same returned summary: aAcc, mIoU, mAcc in percent); after each
    evaluation ``self.per_class`` maps ``"IoU"``/``"Acc"`` to ``{class name: percent or None}`` (None: the
    class is absent from both labels and predictions)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.per_class: dict[str, dict[str, float | None]] = {}

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        if results and not self.format_only:
            areas = [sum(r[i] for r in results) for i in range(4)]
            per = self.total_area_to_metrics(*areas, ["mIoU"], nan_to_num=None)
            names = self.dataset_meta["classes"]
            self.per_class = {k: {n: (None if np.isnan(v) else round(float(v) * 100, 2)) for n, v in zip(names, per[k])}
                              for k in ("IoU", "Acc")}
        return metrics
