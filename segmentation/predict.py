"""A trained segmenter of ours on new images (``tools/predict.py``): label PNGs and colour overlays.

The segmenter is rebuilt from the config mmengine dumps into the work dir of ``tools/train_seg.py``
(``WORK_DIR/<config name>.py``, every command-line change applied: data root, class count, names) or from
``--config``; its weights (``WORK_DIR/weights.pth`` or an mmengine ``iter_N.pth``) come through the
project's ``weights_only`` loader. Images go through the config's test pipeline (resize, then the model's
normalisation); mmseg's post-processing returns each label map at its input image's size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mae_transfer.checkpoint import check_state_dict, extract_state_dict
from mae_transfer.common import ConfigError, write_json
from mae_transfer.predict import InputImage, blend, palette, save_png

from .config import leaf_datasets

__all__ = ["find_run_config", "SegmentationPredictor"]

logger = logging.getLogger("train_seg")

# Test-pipeline steps that read or check ground truth: new images have none.
_ANNOTATION_STEPS = ("LoadAnnotations", "CheckSegLabels")


def find_run_config(weights: Path, named: str | None) -> Path:
    """The config mmengine dumped beside ``weights`` (the only ``*.py`` of its folder, or the one named
    like the training config ``named``); :class:`ConfigError` asking for ``--config`` otherwise."""
    found = sorted(weights.parent.glob("*.py"))
    if named:
        match = [p for p in found if p.name == Path(named).name]
        found = match or found
    if len(found) != 1:
        what = "no config" if not found else f"{len(found)} configs ({', '.join(p.name for p in found)})"
        raise ConfigError(f"{what} beside {weights} (tools/train_seg.py's work dir holds the one mmengine dumped): "
                          f"pass --config")
    return found[0]


class SegmentationPredictor:
    """UperNet of ours on batches of images.

    Args:
        weights: the segmenter's weights (``WORK_DIR/weights.pth`` or an mmengine ``iter_N.pth``).
        ckpt: the loaded checkpoint of ``weights``.
        config: the run's config file; None: the one beside ``weights``.
        device: ``"cpu"`` or ``"cuda"``.
    """

    kind = "segmenter"

    def __init__(self, weights: Path, ckpt: dict, config: str | None, device: str):
        from mmengine.config import Config
        from mmengine.dataset import Compose
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        weights = Path(weights)
        named = (ckpt.get("config") or {}).get("config") if isinstance(ckpt.get("config"), dict) else None
        cfg_path = Path(config) if config else find_run_config(weights, named)
        try:
            cfg = Config.fromfile(str(cfg_path))
        except Exception as e:  # noqa: BLE001 - mmengine's parser errors, re-raised naming the file
            raise ConfigError(f"cannot read segmentation config {str(cfg_path)!r}: {str(e).splitlines()[0]}") from None
        if "model" not in cfg:
            raise ConfigError(f"segmentation config {str(cfg_path)!r} has no 'model'")
        self.config = str(cfg_path)
        cfg.model.backbone.pretrained = None  # the whole segmenter's weights follow; the encoder file may be gone
        cfg.model.pop("pretrained", None)
        cfg.model.train_cfg = None
        init_default_scope(cfg.get("default_scope", "mmseg"))
        self.model = MODELS.build(cfg.model)
        sd = extract_state_dict(ckpt, str(weights))
        check_state_dict(sd, self.model, source=str(weights), fmt="segmenter")
        self.model.load_state_dict(sd)
        self.model.to(device).eval()

        tests = [d for split, d in leaf_datasets(cfg) if split == "test"] or [d for _, d in leaf_datasets(cfg)]
        ds = tests[0] if tests else {}
        steps = list(ds.get("pipeline") or cfg.get("test_pipeline") or [])
        if not steps:
            raise ConfigError(f"segmentation config {str(cfg_path)!r} has no test pipeline")
        steps = [dict(s) for s in steps if s.get("type") not in _ANNOTATION_STEPS]
        steps[0] = dict(type="LoadImageFromNDArray")  # our images are read already (as BGR, like cv2 reads)
        self.pipeline = Compose(steps)
        num_classes = int(self.model.decode_head.num_classes)
        meta = dict(ds.get("metainfo") or {})
        classes = list(meta.get("classes") or cfg.get("classes") or [f"class_{i}" for i in range(num_classes)])
        if len(classes) != num_classes:
            raise ConfigError(f"{cfg_path}: {len(classes)} class names for a decode head of {num_classes} classes")
        self.reduce_zero_label = bool(ds.get("reduce_zero_label", False))
        self.classes = classes
        given = meta.get("palette")
        self.palette = (np.asarray(given, dtype=np.uint8).reshape(-1, 3) if given is not None and len(given) == num_classes
                        else palette(num_classes))
        self.pixels = 0
        self.counts = np.zeros(num_classes, dtype=np.int64)

    @torch.no_grad()
    def predict(self, batch: list[InputImage], out: Path):
        """Segment ``batch``: ``out/labels/NAME.png`` (label ids in the training annotations' convention:
        the class index, plus one with ``reduce_zero_label``) and ``out/overlays/NAME.png`` (class colours
        over the image), both at the image's size."""
        packed = [self.pipeline({"img": np.ascontiguousarray(im.rgb[:, :, ::-1])}) for im in batch]
        # mmseg's data preprocessor stacks a test batch only when every resized image has the same shape
        groups: dict[tuple, list[int]] = {}
        for i, d in enumerate(packed):
            groups.setdefault(tuple(d["inputs"].shape), []).append(i)
        samples = [None] * len(batch)
        for idx in groups.values():
            data = {"inputs": [packed[i]["inputs"] for i in idx], "data_samples": [packed[i]["data_samples"] for i in idx]}
            for i, sample in zip(idx, self.model.test_step(data)):
                samples[i] = sample
        for im, sample in zip(batch, samples):
            pred = sample.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)
            if pred.shape != im.size:
                raise RuntimeError(f"{im.path}: label map {pred.shape} is not the image's size {im.size}")
            self.counts += np.bincount(pred.ravel(), minlength=len(self.classes))[:len(self.classes)]
            self.pixels += pred.size
            ids = pred + (1 if self.reduce_zero_label else 0)
            dtype = np.uint8 if ids.max(initial=0) < 256 and len(self.classes) + 1 <= 256 else np.uint16
            save_png(out / "labels" / f"{im.name}.png", ids.astype(dtype))
            save_png(out / "overlays" / f"{im.name}.png", blend(im.rgb, self.palette[pred]))

    def finish(self, out: Path) -> dict:
        """Write ``out/classes.json`` (label id -> class name, colour, share of the predicted pixels);
        returns the summary for ``predict.json``."""
        offset = 1 if self.reduce_zero_label else 0
        table = [{"id": i + offset, "name": n, "color": [int(c) for c in self.palette[i]],
                  "pixel_fraction": float(self.counts[i] / max(self.pixels, 1))} for i, n in enumerate(self.classes)]
        write_json({"reduce_zero_label": self.reduce_zero_label, "classes": table}, out / "classes.json")
        return {"config": self.config, "classes": self.classes, "reduce_zero_label": self.reduce_zero_label}
