"""Datasets and transforms of a run, from its config."""

from __future__ import annotations

import logging

from mae_transfer.data.datasets import DataError, SeededDataset, Subset, open_dataset
from mae_transfer.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

from .config import ConfigError

logger = logging.getLogger("pretrain")


def splits(cfg: dict, patch_size: int, need_val: bool):
    """``(train, val)`` base datasets (``val`` may be None unless ``need_val``), subsets applied."""
    train = open_dataset(cfg["data"], "train", patch_size, cfg["bad_images"], cfg["val_data"])
    val = open_dataset(cfg["data"], "val", patch_size, cfg["bad_images"], cfg["val_data"])
    if val is None and need_val:
        raise DataError(f"{cfg['mode']} needs held-out images: {cfg['data']} has no val/ folder; pass val_data=DIR")
    train = Subset(train, cfg["train_subset"])
    val = Subset(val, cfg["eval_subset"]) if val is not None else None
    return train, val


def norm_stats(cfg: dict, base) -> tuple[tuple, tuple]:
    mean = cfg["mean"] or base.mean or IMAGENET_MEAN
    std = cfg["std"] or base.std or IMAGENET_STD
    if len(mean) != 3 or len(std) != 3:
        raise DataError(f"mean and std need 3 values (RGB), got mean={mean} std={std}")
    return tuple(mean), tuple(std)


def make_transform(cfg: dict, mean, std, train: bool, finetune: bool = False):
    """Training transform of ``cfg['augment']`` if ``train`` and it is not ``none`` (RandAugment / erasing
    only when fine-tuning), else the evaluation transform."""
    if not (train and cfg["augment"] != "none"):
        return eval_transform(cfg["img_size"], mean, std, cfg["eval_crop_pct"])
    auto_augment, reprob = (cfg["auto_augment"], cfg["reprob"]) if finetune else (None, 0.0)
    if (auto_augment or reprob > 0) and cfg["augment"] != "crop_rand":
        raise ConfigError(f"augment={cfg['augment']} cannot be combined with auto_augment={auto_augment!r} / "
                          f"reprob={reprob} (timm's transform crops at random sizes): use augment=crop_rand")
    return train_transform(cfg["img_size"], mean, std, cfg["crop_scale"], cfg["hflip"], auto_augment, reprob,
                           cfg["augment"])


def seeded(base, transform, seed: int, noise_len: int = 0, noise_fn=None) -> SeededDataset:
    return SeededDataset(base, transform, seed, noise_len, noise_fn)
