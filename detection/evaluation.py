"""COCO evaluation with detectron2's ``COCOEvaluator`` and faster-coco-eval's C++ ``COCOeval``.

detectron2's own fast path needs its ``_C`` extension, which this pure-Python build lacks; faster-coco-eval
gives identical numbers. It is swapped in for detectron2's ``COCOeval_opt`` only (never through
``faster_coco_eval.init_as_pycocotools()``, which breaks detectron2's rotated evaluator import)."""

from __future__ import annotations

import detectron2.evaluation.coco_evaluation as coco_evaluation
from detectron2.evaluation import COCOEvaluator

__all__ = ["use_fast_coco_eval", "coco_evaluator"]


def use_fast_coco_eval() -> bool:
    """Point detectron2's ``COCOeval_opt`` at faster-coco-eval; False (pycocotools stays) if not installed."""
    try:
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        return False
    coco_evaluation.COCOeval_opt = COCOeval_faster
    return True


def coco_evaluator(dataset_name: str, output_dir: str | None = None, max_dets_per_image: int | None = None,
                   distributed: bool = True) -> COCOEvaluator:
    """bbox (+ segm when the model predicts masks) AP of a registered COCO-format dataset.

    Args:
        dataset_name: a dataset registered with a COCO json (``json_file`` in its metadata).
        output_dir: where ``coco_instances_results.json`` is written (None: not written).
        max_dets_per_image: detections per image kept for evaluation (COCO: 100).
        distributed: gather predictions from all ranks and evaluate on rank 0.
    """
    fast = use_fast_coco_eval()
    return COCOEvaluator(dataset_name, distributed=distributed, output_dir=output_dir,
                         max_dets_per_image=max_dets_per_image, use_fast_impl=fast)
