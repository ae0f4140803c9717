"""Detector checkpoints: safe reading, atomic writing, and ``--weights`` loading.

- :class:`SafeDetectionCheckpointer` is detectron2's ``DetectionCheckpointer`` (periodic checkpoints,
  ``last_checkpoint``, resume) with reading through :func:`mae_transfer.checkpoint.load_file`
  (``weights_only=True``) and writing through :func:`mae_transfer.checkpoint.save_checkpoint` (atomic).
- :func:`load_weights` puts ``--weights`` into a detector: a whole detector checkpoint (ours) is loaded
  strictly; anything else is taken as ViT weights (ours incl. MAE pretraining checkpoints, the official
  MAE release, timm / DeiT) and loaded into the backbone's ViT by :func:`mae_transfer.checkpoint.load_pretrained`
  (position embeddings resampled, ViT-H 14->16 patch kernels resized, decoder / cls token / norm dropped,
  new relative-position tables reported).
"""

from __future__ import annotations

import logging
import os

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

from mae_transfer.checkpoint import (CheckpointError, LoadReport, check_state_dict, extract_state_dict, load_file,
                                     load_pretrained, save_checkpoint)
from mae_transfer.models.vit import VisionTransformer

__all__ = ["SafeDetectionCheckpointer", "find_vit", "load_weights", "is_detector_state_dict"]

logger = logging.getLogger("detectron2.mae_transfer.checkpoint")

# Keys only a whole detector has (the heads), as opposed to a pretrained backbone.
_DETECTOR_PREFIXES = ("roi_heads.", "proposal_generator.")


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that never unpickles code and never leaves a torn checkpoint file."""

    def _load_file(self, filename: str) -> dict:
        if filename.endswith((".pkl", ".pyth")):
            raise CheckpointError(f"refusing to read {filename!r}: .pkl/.pyth checkpoints are unpickled with "
                                  f"arbitrary code; convert it to a .pth state dict first")
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> dict:
        return load_file(f)

    def save(self, name: str, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        save_checkpoint(data, path)
        self.tag_last_checkpoint(f"{name}.pth")


def find_vit(model: nn.Module) -> tuple[str, VisionTransformer]:
    """``(name, module)`` of the detector's ViT (``backbone.net`` or ``backbone.bottom_up.net``)."""
    model = getattr(model, "module", model)
    for name, m in model.named_modules():
        if isinstance(m, VisionTransformer):
            return name, m
    raise ValueError(f"{type(model).__name__} holds no mae_transfer VisionTransformer")


def is_detector_state_dict(sd: dict) -> bool:
    return any(k.startswith(_DETECTOR_PREFIXES) for k in sd)


def load_weights(model: nn.Module, path: str) -> LoadReport:
    """Load ``path`` into ``model`` (a detectron2 detector); see the module docstring.

    Raises :class:`~mae_transfer.checkpoint.CheckpointError` (unreadable) or
    :class:`~mae_transfer.checkpoint.CheckpointMismatchError` (listing missing / unexpected / wrong-shape
    keys) when the weights do not fit."""
    model = getattr(model, "module", model)
    sd = extract_state_dict(load_file(path), path)
    if is_detector_state_dict(sd):
        # pixel_mean / pixel_std are buffers the config sets, not learned weights
        check_state_dict(sd, model, source=path, fmt="detector", ignore_missing=("pixel_mean", "pixel_std"))
        model.load_state_dict(sd, strict=False)
        logger.info(f"loaded the whole detector from {path}")
        return LoadReport(path, "detector")
    name, vit = find_vit(model)
    report = load_pretrained(vit, sd, source=path, context=f"loading into the detector's ViT '{name}'", log=False)
    logger.info(f"backbone '{name}': {report}")
    return report
