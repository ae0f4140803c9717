"""LazyConfig helpers: finding configs, the data loaders the configs share, dataset wiring.

A detection config is a detectron2 LazyConfig (``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``,
``train``) plus a ``data`` node that says where the data comes from without writing code:

    data.train_json / data.train_images / data.val_json / data.val_images
        any COCO-format dataset; validated and registered as ``<name>_train`` / ``<name>_val``
        (see :mod:`detection.data`), overriding ``dataloader.{train,test}.dataset.names``;
    data.scenes = dict(num_train=..., num_val=..., image_size=..., seed=..., root=None)
        the built-in Fashion-MNIST scenes (:mod:`mae_transfer.data.scenes`), generated on first use;
    neither: the datasets named in the config (COCO from detectron2's standard location,
        ``$DETECTRON2_DATASETS/coco``, registered by detectron2 itself).
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from .data import CocoFormatError, register_coco_dataset
from .evaluation import coco_evaluator

__all__ = ["ConfigError", "CONFIG_DIR", "resolve_config", "load_config", "lsj_dataloader", "setup_datasets"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "detection"
logger = logging.getLogger("detectron2.mae_transfer.lazy")


class ConfigError(ValueError):
    """A config, an override, a device or a weights path given by the user does not work; the message says why."""


def resolve_config(name: str) -> Path:
    """A config path, or a bare name (``vitdet_mae_l`` / ``vitdet_mae_l.py``) in ``configs/detection``."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.py"):
        if cand.is_file():
            return cand
    known = sorted(c.name for c in CONFIG_DIR.glob("*.py") if not c.name.startswith("_"))
    raise ConfigError(f"config {name!r} is neither a file nor one of configs/detection: {', '.join(known)}")


def _accepts(node: DictConfig, arg: str) -> bool:
    """Whether a LazyCall node's target takes ``arg`` (a constructor argument the config leaves at its default)."""
    target = node.get("_target_", None)
    if target is None:
        return False
    try:
        params = inspect.signature(locate(target) if isinstance(target, str) else target).parameters
    except (TypeError, ValueError, ImportError):
        return False
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def load_config(name: str, overrides: list[str] = ()) -> DictConfig:
    """Load a LazyConfig and apply ``key=value`` overrides (errors name the key at fault)."""
    cfg = LazyConfig.load(str(resolve_config(name)))
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form key=value")
        key = ov.split("=", 1)[0]
        parent, _, leaf = key.rpartition(".")
        try:
            node = OmegaConf.select(cfg, parent) if parent else cfg
        except Exception:  # noqa: BLE001 - re-raised with the key named
            node = None
        if node is None or not isinstance(node, DictConfig):
            raise ConfigError(f"override {ov!r}: config has no {parent or key!r}")
        if leaf not in node and not (key.startswith("data.") or _accepts(node, leaf)):
            raise ConfigError(f"override {ov!r}: {parent or 'config'} has no key {leaf!r} "
                           f"(keys: {', '.join(map(str, node.keys()))})")
    try:
        return LazyConfig.apply_overrides(cfg, list(overrides))
    except Exception as e:  # noqa: BLE001 - hydra's parser errors, re-raised naming the overrides
        raise ConfigError(f"cannot apply overrides {list(overrides)}: {e}") from None


def lsj_dataloader(image_size: int = 1024, total_batch_size: int = 64, min_scale: float = 0.1,
                   max_scale: float = 2.0, train_names: str = "coco_2017_train", test_names: str = "coco_2017_val",
                   num_workers: int = 4, mask_format: str = "polygon") -> DictConfig:
    """ViTDet's large-scale-jitter loader (detectron2 projects/ViTDet common/coco_loader_lsj.py): flip,
    resize by a random scale of ``image_size`` (``min_scale``-``max_scale``), fixed ``image_size`` crop,
    boxes recomputed from masks after cropping; test: longer side resized to ``image_size``; RGB."""
    dataloader = model_zoo.get_config("common/data/coco.py").dataloader
    dataloader.train.dataset.names = train_names
    dataloader.train.mapper.augmentations = [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(min_scale=min_scale, max_scale=max_scale, target_height=image_size,
                         target_width=image_size),
        L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
    ]
    dataloader.train.mapper.image_format = "RGB"
    dataloader.train.mapper.recompute_boxes = True
    dataloader.train.mapper.instance_mask_format = mask_format
    dataloader.train.total_batch_size = total_batch_size
    dataloader.train.num_workers = num_workers
    dataloader.test.dataset.names = test_names
    dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
    dataloader.test.num_workers = num_workers
    dataloader.evaluator = L(coco_evaluator)(dataset_name="${..test.dataset.names}")
    return dataloader


def _set_names(cfg: DictConfig, train: str | None, val: str | None):
    if train is not None:
        cfg.dataloader.train.dataset.names = train
    if val is not None:
        cfg.dataloader.test.dataset.names = val
        if "evaluator" in cfg.dataloader and "dataset_name" in cfg.dataloader.evaluator:
            cfg.dataloader.evaluator.dataset_name = val


def setup_datasets(cfg: DictConfig, cache_dir: str | os.PathLike, *, need_train: bool = True) -> dict:
    """Register the datasets ``cfg.data`` describes and point the loaders at them (see the module doc).

    The classifier gets as many classes as the registered dataset has categories. Masks: when a registered
    training set has RLE masks, the train mapper switches to bitmask instances; when it has no masks at
    all, the mask head is switched off (box AP only). Returns the validation reports."""
    data = cfg.get("data", None) or {}
    reports = {}
    scenes = data.get("scenes", None)
    tj, ti, vj, vi = (data.get(k, None) or None for k in ("train_json", "train_images", "val_json", "val_images"))
    if scenes and not (tj or vj):
        from mae_transfer.data.scenes import ensure_scenes

        sc = OmegaConf.to_container(scenes, resolve=True) if isinstance(scenes, DictConfig) else dict(scenes)
        root = ensure_scenes(sc.pop("root", None), **sc)
        tj, ti = root / "coco" / "instances_training.json", root / "images" / "training"
        vj, vi = root / "coco" / "instances_validation.json", root / "images" / "validation"
    if bool(tj) != bool(ti) or bool(vj) != bool(vi):
        raise CocoFormatError("give both a json and an image folder for each split "
                              f"(train: json={tj}, images={ti}; val: json={vj}, images={vi})")
    prefix = data.get("name", None) or "custom"
    train_name = val_name = None
    if tj and need_train:
        train_name = f"{prefix}_train"
        reports["train"] = register_coco_dataset(train_name, tj, ti, cache_dir, is_train=True)
    if vj:
        val_name = f"{prefix}_val"
        reports["val"] = register_coco_dataset(val_name, vj, vi, cache_dir, is_train=False)
    _set_names(cfg, train_name, val_name)

    for split, names in (("train", cfg.dataloader.train.dataset.names),
                         ("test", cfg.dataloader.test.dataset.names)):
        if split == "train" and not need_train:
            continue
        for n in [names] if isinstance(names, str) else names:
            if n not in DatasetCatalog.list():
                raise CocoFormatError(f"dataset {n!r} ({split}) is not registered; give --{split if split == 'train' else 'val'}-json/"
                                      f"--{split if split == 'train' else 'val'}-images, or set data.* in the config")
            json_file = MetadataCatalog.get(n).get("json_file", None)
            if json_file and not Path(json_file).is_file():
                raise CocoFormatError(
                    f"dataset {n!r}: annotation file {json_file} does not exist (COCO is read from "
                    f"$DETECTRON2_DATASETS, now {os.environ.get('DETECTRON2_DATASETS', 'datasets')!r})")
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
            logger.warning(f"{tj} has no instance masks: training boxes only (mask head off, no segm AP)")
            cfg.dataloader.train.mapper.use_instance_mask = False
            cfg.model.roi_heads.mask_in_features = None
            cfg.model.roi_heads.mask_pooler = None
            cfg.model.roi_heads.mask_head = None
    return reports
