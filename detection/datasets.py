"""Dataset wiring: register what a config's ``data`` node describes and point the loaders at it.

    data.train_json / data.train_images / data.val_json / data.val_images
        any COCO-format dataset; validated and registered as ``<name>_train`` / ``<name>_val``
        (see :mod:`detection.data`), overriding ``dataloader.{train,test}.dataset.names``;
    data.scenes = dict(num_train=..., num_val=..., image_size=..., seed=..., root=None)
        the built-in Fashion-MNIST scenes (:mod:`mae_transfer.data.scenes`), generated on first use;
    neither: the datasets named in the config (COCO from detectron2's standard location,
        ``$DETECTRON2_DATASETS/coco``, registered by detectron2 itself).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from omegaconf import DictConfig, OmegaConf

from .data import CocoFormatError, register_coco_dataset

__all__ = ["setup_datasets"]

logger = logging.getLogger("detectron2.mae_transfer.datasets")


def _set_names(cfg: DictConfig, train: str | None, val: str | None):
    if train is not None:
        cfg.dataloader.train.dataset.names = train
    if val is not None:
        cfg.dataloader.test.dataset.names = val
        if "evaluator" in cfg.dataloader and "dataset_name" in cfg.dataloader.evaluator:
            cfg.dataloader.evaluator.dataset_name = val


def _sources(data) -> tuple:
    """``(train json, train images, val json, val images)`` of a ``data`` node (None where not given);
    ``data.scenes`` is generated (or reused) when no json is given."""
    tj, ti, vj, vi = (data.get(k, None) or None for k in ("train_json", "train_images", "val_json", "val_images"))
    scenes = data.get("scenes", None)
    if scenes and not (tj or vj):
        from mae_transfer.data.scenes import ensure_scenes

        sc = OmegaConf.to_container(scenes, resolve=True) if isinstance(scenes, DictConfig) else dict(scenes)
        root = ensure_scenes(sc.pop("root", None), **sc)
        tj, ti = root / "coco" / "instances_training.json", root / "images" / "training"
        vj, vi = root / "coco" / "instances_validation.json", root / "images" / "validation"
    if bool(tj) != bool(ti) or bool(vj) != bool(vi):
        raise CocoFormatError("give both a json and an image folder for each split "
                              f"(train: json={tj}, images={ti}; val: json={vj}, images={vi})")
    return tj, ti, vj, vi


def _check_registered(cfg: DictConfig, need_train: bool):
    """Every dataset the loaders name is registered and its annotation file exists."""
    for split, names in (("train", cfg.dataloader.train.dataset.names),
                         ("test", cfg.dataloader.test.dataset.names)):
        if split == "train" and not need_train:
            continue
        flag = "train" if split == "train" else "val"
        for n in [names] if isinstance(names, str) else names:
            if n not in DatasetCatalog.list():
                raise CocoFormatError(f"dataset {n!r} ({split}) is not registered; give --{flag}-json/"
                                      f"--{flag}-images, or set data.* in the config")
            json_file = MetadataCatalog.get(n).get("json_file", None)
            if json_file and not Path(json_file).is_file():
                raise CocoFormatError(
                    f"dataset {n!r}: annotation file {json_file} does not exist (COCO is read from "
                    f"$DETECTRON2_DATASETS, now {os.environ.get('DETECTRON2_DATASETS', 'datasets')!r})")


def _fit_model_to_data(cfg: DictConfig, reports: dict):
    """Classifier size from the registered categories; mask format / mask head from the training masks."""
    ref = reports.get("train") or reports.get("val")
    if ref is not None and cfg.model.roi_heads.get("num_classes", None) != ref.num_categories:
        logger.info(f"model.roi_heads.num_classes: {cfg.model.roi_heads.num_classes} -> {ref.num_categories} "
                    f"(the categories of {ref.json_file})")
        cfg.model.roi_heads.num_classes = ref.num_categories
    if "train" in reports:
        rep = reports["train"]
        if rep.uses_rle:
            cfg.dataloader.train.mapper.instance_mask_format = "bitmask"
        if not rep.has_masks:
            logger.warning(f"{rep.json_file} has no instance masks: training boxes only (mask head off, no segm AP)")
            cfg.dataloader.train.mapper.use_instance_mask = False
            cfg.model.roi_heads.mask_in_features = None
            cfg.model.roi_heads.mask_pooler = None
            cfg.model.roi_heads.mask_head = None


def setup_datasets(cfg: DictConfig, cache_dir: str | os.PathLike, *, need_train: bool = True) -> dict:
    """Register the datasets ``cfg.data`` describes and point the loaders at them (see the module doc).

    The classifier gets as many classes as the registered dataset has categories. Masks: when a registered
    training set has RLE masks, the train mapper switches to bitmask instances; when it has no masks at
    all, the mask head is switched off (box AP only). Returns the validation reports."""
    data = cfg.get("data", None) or {}
    tj, ti, vj, vi = _sources(data)
    prefix = data.get("name", None) or "custom"
    reports, train_name, val_name = {}, None, None
    if tj and need_train:
        train_name = f"{prefix}_train"
        reports["train"] = register_coco_dataset(train_name, tj, ti, cache_dir, is_train=True)
    if vj:
        val_name = f"{prefix}_val"
        reports["val"] = register_coco_dataset(val_name, vj, vi, cache_dir, is_train=False)
    _set_names(cfg, train_name, val_name)
    _check_registered(cfg, need_train)
    _fit_model_to_data(cfg, reports)
    return reports
