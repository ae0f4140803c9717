"""A trained detector of ours on new images (``tools/predict.py``): COCO results json and overlay PNGs.

The detector is rebuilt from the run's own config (``config.yaml``, which detectron2's ``default_setup``
writes beside the checkpoints of ``tools/train_det.py``, with every override applied) or from ``--config``,
and its weights come through :func:`detection.checkpoint.load_weights` (``weights_only``). Images go
through the config's test-time augmentations (``dataloader.test.mapper``); detectron2's post-processing
maps boxes and masks back to each input image's own size.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mae_transfer.common import ConfigError, write_json
from mae_transfer.predict import InputImage, save_png

from .checkpoint import load_weights

__all__ = ["load_run_config", "run_categories", "DetectionPredictor"]

logger = logging.getLogger("detectron2.mae_transfer.predict")

_SHAPE_SPEC_TAG = "tag:yaml.org,2002:python/object:detectron2.layers.shape_spec.ShapeSpec"


class _Skipped:
    """A Python object of a yaml dump that was not constructed (its tag is kept for the error message)."""

    def __init__(self, tag: str):
        self.tag = tag


def _find_skipped(obj, where: str = "") -> tuple[str, str] | None:
    """``(key, tag)`` of the first :class:`_Skipped` inside ``obj``, or None."""
    if isinstance(obj, _Skipped):
        return where, obj.tag
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _find_skipped(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def load_run_config(path: str | Path) -> DictConfig:
    """A detection config: a run's ``config.yaml`` or a LazyConfig ``.py`` (``configs/detection`` name or path).

    detectron2 reads its yaml dumps with ``yaml.unsafe_load`` (any Python object). Here only plain values,
    tuples and ``ShapeSpec`` are constructed; other Python objects (the optimizer's ``functools.partial``
    lr-decay rule) are not, and must lie outside what prediction uses (``model``, ``dataloader.test``,
    ``data``), so a doctored yaml cannot run code. Raises :class:`ConfigError` naming the file."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        from .config import load_config

        return load_config(str(path))
    import yaml
    from detectron2.layers import ShapeSpec

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor(_SHAPE_SPEC_TAG, lambda loader, node: ShapeSpec(**loader.construct_mapping(node)))
    _Loader.add_constructor("tag:yaml.org,2002:python/tuple",
                            lambda loader, node: tuple(loader.construct_sequence(node)))
    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: _Skipped(node.tag))
    try:
        obj = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader + ShapeSpec / tuple only
    except OSError as e:
        raise ConfigError(f"cannot read detection config {str(path)!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        reason = " ".join(str(getattr(e, "problem", "") or e).split())
        raise ConfigError(f"detection config {str(path)!r} is not a detectron2 config dump ({reason})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise ConfigError(f"detection config {str(path)!r} has no 'model' node")
    used = {"model": obj["model"], "data": obj.get("data"),
            "dataloader.test": (obj.get("dataloader") or {}).get("test")}
    found = _find_skipped(used)
    if found:
        raise ConfigError(f"detection config {str(path)!r}: {found[0]} is a Python object ({found[1]}); predict "
                          f"builds plain values only")
    obj.pop("optimizer", None)  # where detectron2's dumps keep their Python objects; not needed to predict
    bad = _find_skipped(obj)
    if bad:
        raise ConfigError(f"detection config {str(path)!r}: {bad[0]} is a Python object ({bad[1]}); predict "
                          f"builds plain values only")
    return OmegaConf.create(obj, flags={"allow_objects": True})


def run_categories(cfg: DictConfig, run_dir: Path | None, num_classes: int) -> list[dict]:
    """The COCO categories (``id``, ``name``; in the order of the detector's class indices) of the data
    the detector was trained on: the cleaned json ``tools/train_det.py`` keeps in ``RUN/datasets/``
    (validation json first: the same categories, a smaller file), else detectron2's metadata of the
    config's test dataset (COCO), else ``class_<i>`` with ids ``1..C`` and a warning."""
    name = (cfg.get("data", None) or {}).get("name", None) or "custom"
    for split in ("val", "train"):
        f = run_dir / "datasets" / f"{name}_{split}.json" if run_dir is not None else None
        if f is not None and f.is_file():
            try:
                cats = json.loads(f.read_text()).get("categories", [])
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot read the categories of {f}: {e}") from None
            cats = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in cats), key=lambda c: c["id"])
            if len(cats) != num_classes:
                raise ConfigError(f"{f} has {len(cats)} categories but the detector predicts {num_classes} classes")
            return cats
    from detectron2.data import MetadataCatalog

    names = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
    names = [names] if isinstance(names, str) else list(names or [])
    if names and names[0] in MetadataCatalog.list():
        meta = MetadataCatalog.get(names[0])
        classes = meta.get("thing_classes", None)
        id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
        if classes and len(classes) == num_classes:
            ids = {v: k for k, v in id_map.items()} if id_map else {i: i + 1 for i in range(num_classes)}
            return [{"id": int(ids[i]), "name": str(c)} for i, c in enumerate(classes)]
    logger.warning(f"no category list found (no {name}_val.json / {name}_train.json in {run_dir}/datasets, no "
                   f"metadata for {names}): classes are named class_<i>, with category ids 1..{num_classes}")
    return [{"id": i + 1, "name": f"class_{i}"} for i in range(num_classes)]


class DetectionPredictor:
    """Mask R-CNN of ours on batches of images.

    Args:
        weights: a whole-detector checkpoint (``model_final.pth`` or ``model_*.pth`` of a run).
        config: the detection config; None: ``config.yaml`` beside ``weights``.
        device: ``"cpu"`` or ``"cuda"``.
        score_thresh: detections below it are left out of the json and the overlays (None: the config's
            ``model.roi_heads.box_predictor.test_score_thresh``).
    """

    kind = "detector"

    def __init__(self, weights: Path, config: str | None, device: str, score_thresh: float | None):
        from detectron2.config import instantiate
        from detectron2.data.catalog import Metadata
        from detectron2.data.transforms import AugmentationList

        weights = Path(weights)
        cfg_path = Path(config) if config else weights.parent / "config.yaml"
        if not config and not cfg_path.is_file():
            raise ConfigError(f"no config.yaml beside {weights} (tools/train_det.py writes one into the run folder): "
                              f"pass --config (the training config, with the same overrides)")
        self.config = str(cfg_path)
        cfg = load_run_config(cfg_path)
        pred = cfg.model.roi_heads.box_predictor
        if score_thresh is not None:
            pred.test_score_thresh = float(score_thresh)
        self.score_thresh = float(pred.test_score_thresh)
        self.model = instantiate(cfg.model).to(device).eval()
        report = load_weights(self.model, str(weights))
        if report.format != "detector":
            raise ConfigError(f"{weights} holds backbone weights only ({report.format} format): predict needs a "
                              f"trained detector (model_final.pth of tools/train_det.py)")
        mapper = cfg.dataloader.test.mapper
        self.augment = AugmentationList([instantiate(a) for a in mapper.get("augmentations", [])])
        self.image_format = str(mapper.get("image_format", None) or cfg.model.get("input_format", "BGR"))
        if self.image_format not in ("RGB", "BGR"):
            raise ConfigError(f"{cfg_path}: image_format {self.image_format!r}: predict feeds RGB or BGR images")
        num_classes = int(cfg.model.roi_heads.num_classes)
        self.categories = run_categories(cfg, weights.parent, num_classes)
        # standalone, not in MetadataCatalog, which refuses to change a registered name's classes
        self.meta = Metadata(name=f"predict:{weights}", thing_classes=[c["name"] for c in self.categories])
        self.results: list[dict] = []
        self.images: list[dict] = []
        self.device = device

    def _inputs(self, im: InputImage) -> dict:
        """detectron2's test input for one image: the config's augmentations applied to it in the model's
        channel order, with the size to map the outputs back to."""
        from detectron2.data.transforms import AugInput

        img = im.rgb if self.image_format == "RGB" else np.ascontiguousarray(im.rgb[:, :, ::-1])
        aug = AugInput(img)
        self.augment(aug)
        tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
        return {"image": tensor, "height": im.size[0], "width": im.size[1]}

    @torch.no_grad()
    def predict(self, batch: list[InputImage], out: Path):
        """Detect on ``batch``; each image's overlay PNG goes to ``out/overlays/NAME.png`` (its own size),
        its detections into the results json written by :meth:`finish`."""
        from detectron2.evaluation.coco_evaluation import instances_to_coco_json
        from detectron2.utils.visualizer import Visualizer

        outputs = self.model([self._inputs(im) for im in batch])
        for im, o in zip(batch, outputs):
            inst = o["instances"].to("cpu")
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, "file_name": str(im.path), "height": im.size[0], "width": im.size[1]})
            for r in instances_to_coco_json(inst, image_id):
                r["category_id"] = self.categories[r["category_id"]]["id"]
                self.results.append(r)
            drawn = Visualizer(im.rgb, self.meta, scale=1.0).draw_instance_predictions(inst).get_image()
            save_png(out / "overlays" / f"{im.name}.png", np.ascontiguousarray(drawn[:, :, :3]))

    def finish(self, out: Path) -> dict:
        """Write ``out/results.json`` (COCO results: ``image_id``, ``category_id``, ``bbox`` x, y, w, h,
        ``score``, ``segmentation`` RLE) and ``out/images.json`` (the ``images`` and ``categories`` the
        results refer to); returns the summary for ``predict.json``."""
        write_json(self.results, out / "results.json", indent=None)
        write_json({"images": self.images, "categories": self.categories}, out / "images.json")
        return {"config": self.config, "detections": len(self.results), "score_thresh": self.score_thresh,
                "categories": [c["name"] for c in self.categories]}
