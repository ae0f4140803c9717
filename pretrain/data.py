"""Datasets and transforms of a run, from its config."""

from __future__ import annotations

import logging

from mae_transfer.data.datasets import DataError, SeededDataset, Subset, open_dataset
from mae_transfer.data.transforms import eval_transform, train_transform

from .config import ConfigError

logger = logging.getLogger("pretrain")


def splits(cfg: dict, patch_size: int, need_val: bool, in_chans: int | None = None):
    """``(train, val)`` base datasets (``val`` may be None unless ``need_val``), subsets applied. Channels:
    ``in_chans`` (e.g. a checkpoint's), else ``cfg['in_chans']``, else the training data's; the held-out
    split gets the training split's channels and class names."""
    channels = in_chans or cfg["in_chans"]
    train = open_dataset(cfg["data"], "train", patch_size, cfg["bad_images"], cfg["val_data"], channels, cfg["alpha"])
    val = open_dataset(cfg["data"], "val", patch_size, cfg["bad_images"], cfg["val_data"], train.channels,
                       cfg["alpha"], list(train.classes))
    if val is None and need_val:
        raise DataError(f"{cfg['mode']} needs held-out images: {cfg['data']} has no val/ folder; pass val_data=DIR")
    if channels is None:
        logger.info("%d image channel(s), from the data (in_chans=N to choose)", train.channels)
    train = Subset(train, cfg["train_subset"])
    val = Subset(val, cfg["eval_subset"]) if val is not None else None
    return train, val


def norm_stats(cfg: dict, train, checkpoint: dict | None = None, env=None) -> dict:
    """The normalisation of a run: ``{"mean": (C,), "std": (C,), "source": str}``, each of mean / std from
    the first of: the config (``mean=`` / ``std=``; one value stands for every channel), ``checkpoint``'s
    ``norm_stats`` (a checkpoint of ours: the statistics its encoder was trained with), the built-in
    dataset's measured constants, or the training folder's own, computed once and cached
    (:mod:`mae_transfer.data.norm_stats`; on rank 0 under DDP, shared with the others)."""
    c = train.channels
    stored = (checkpoint or {}).get("norm_stats") if isinstance(checkpoint, dict) else None
    if stored is not None and not (len(stored.get("mean", ())) == len(stored.get("std", ())) == c):
        logger.warning("the checkpoint's normalisation statistics are for %d channels, the data has %d: not used",
                       len(stored.get("mean", ())), c)
        stored = None
    data_mean, data_std, data_source = train.mean, train.std, "the built-in data's"
    if data_mean is None and not (cfg["mean"] and cfg["std"]) and stored is None:
        from mae_transfer.data.norm_stats import folder_norm_stats

        from .distributed import all_gather_objects
        base = train.base if isinstance(train, Subset) else train
        main = env is None or env.is_main
        data_mean, data_std = all_gather_objects(folder_norm_stats(base, cfg["norm_images"]) if main else None)[0]
        data_source = "computed from the training images"
    out, sources = {}, []
    for key, data_value in (("mean", data_mean), ("std", data_std)):
        if cfg[key]:
            value, source = tuple(cfg[key]), "the config"
            if len(value) == 1:
                value = value * c
        elif stored is not None:
            value, source = tuple(stored[key]), "the checkpoint"
        else:
            value, source = tuple(data_value), data_source
        if len(value) != c:
            raise DataError(f"{key} has {len(value)} values ({', '.join(f'{v:g}' for v in value)}), the images "
                            f"have {c} channel(s): give one value per channel, or one for all")
        if key == "std" and min(value) <= 0:
            raise DataError(f"std must be > 0 for every channel, got {value}")
        out[key] = value
        sources.append(source)
    out["source"] = sources[0] if sources[0] == sources[1] else f"mean: {sources[0]}, std: {sources[1]}"
    logger.info("normalisation (%s): mean %s std %s", out["source"], _fmt(out["mean"]), _fmt(out["std"]))
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


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
