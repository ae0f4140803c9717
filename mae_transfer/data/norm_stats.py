"""Per-channel normalisation statistics of an image folder, computed from its images once and cached.

The statistics are those of the pixels as :func:`mae_transfer.data.images.read_image` gives them (values
in [0, 1] by the type's range), channels as the dataset delivers them, over every pixel of up to
``max_images`` training images (all of them for a smaller folder, else an evenly spaced sample of the
sorted file list, so every class folder contributes). Grey scans get grey statistics: normalising them
with ImageNet's colour statistics is what tinted MAE reconstructions blue.

Cache: ``$MAE_DATA_DIR/norm-stats/<folder name>-<key>.json`` (default ``output/data``), written
atomically. The key hashes the folder's resolved path, its file list with each file's size and
modification time, the channel count, the alpha rule and ``max_images``: adding, removing or
re-saving a file computes them anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..common import atomic_write
from .fashion_mnist import DataError
from .images import image_array

logger = logging.getLogger("mae_transfer")

__all__ = ["MAX_IMAGES", "compute_norm_stats", "folder_norm_stats", "stats_cache_path", "stored_norm_stats",
           "checkpoint_norm_stats", "expand_channels", "framework_norm", "pick_norm_source", "checkpoint_source"]

MAX_IMAGES = 2000  # images the statistics are measured on (a sample of larger folders)
_VERSION = 1       # bump when the rule above changes: old cache files are then ignored


def compute_norm_stats(dataset, indices) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and std over every pixel of ``dataset.load(i)`` for ``i`` in ``indices``.

    Args:
        dataset: an :class:`~mae_transfer.data.datasets.ImageFolder` (anything with ``load(i) -> (image, label,
            skipped)`` and ``channels``).
        indices: the items to measure (an unusable image is replaced by the next usable one, as in training).
    Returns ``(mean (C,), std (C,), pixels per channel)``; a channel with std 0 (constant) gets std 1 so that
    normalising by it stays finite.
    """
    total = s1 = s2 = None
    for i in indices:
        a = image_array(dataset.load(int(i))[0]).astype(np.float64).reshape(dataset.channels, -1)
        if total is None:
            total, s1, s2 = 0, np.zeros(a.shape[0]), np.zeros(a.shape[0])
        total += a.shape[1]
        s1 += a.sum(1)
        s2 += (a * a).sum(1)
    if not total:
        raise DataError(f"no images to compute normalisation statistics from in {getattr(dataset, 'root', dataset)}")
    mean = s1 / total
    std = np.sqrt(np.maximum(s2 / total - mean * mean, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), int(total)


def _key(dataset, max_images: int) -> str:
    h = hashlib.sha1()
    root = Path(dataset.root).resolve()
    h.update(json.dumps([_VERSION, str(root), dataset.channels, getattr(dataset, "alpha", "drop"), max_images]).encode())
    for path, _ in dataset.samples:
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def stats_cache_path(dataset, max_images: int = MAX_IMAGES) -> Path:
    """Where :func:`folder_norm_stats` caches ``dataset``'s statistics."""
    from .scenes import data_dir
    return data_dir() / "norm-stats" / f"{Path(dataset.root).name}-{_key(dataset, max_images)}.json"


def folder_norm_stats(dataset, max_images: int = MAX_IMAGES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of an ImageFolder ``dataset``, from the cache when its files have not changed, else
    computed (:func:`compute_norm_stats`) and cached. Logs which, with the values."""
    cache = stats_cache_path(dataset, max_images)
    if cache.is_file():
        try:
            rec = json.loads(cache.read_text())
            mean, std = tuple(rec["mean"]), tuple(rec["std"])
            if len(mean) == len(std) == dataset.channels:
                logger.info("normalisation statistics of %s from its cache %s: mean %s std %s", dataset.root,
                            cache, _fmt(mean), _fmt(std))
                return mean, std
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or stale: computed again below and rewritten
    n = len(dataset)
    indices = np.arange(n) if n <= max_images else np.linspace(0, n - 1, max_images).round().astype(int)
    t0 = time.time()
    mean, std, pixels = compute_norm_stats(dataset, indices)
    rec = {"root": str(Path(dataset.root).resolve()), "channels": dataset.channels, "images": len(indices),
           "of_images": n, "pixels_per_channel": pixels, "mean": list(mean), "std": list(std)}
    atomic_write(cache, lambda f: f.write(json.dumps(rec, indent=1).encode()))
    logger.info("normalisation statistics of %s from %d of its %d images (%.1f s): mean %s std %s; cached in %s",
                dataset.root, len(indices), n, time.time() - t0, _fmt(mean), _fmt(std), cache)
    return mean, std


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def stored_norm_stats(ckpt: dict) -> dict | None:
    """A loaded checkpoint's ``norm_stats`` entry as ``{"mean": (C,), "std": (C,), "source": str}`` (values
    in [0, 1] units, as ``pretrain/run.py`` and the classification runs store them), or ``None`` where it
    has none (the official MAE release, timm, Hugging Face, detectors)."""
    stored = ckpt.get("norm_stats")
    if not isinstance(stored, dict) or not stored.get("mean") or not stored.get("std"):
        return None
    return {"mean": tuple(float(v) for v in stored["mean"]), "std": tuple(float(v) for v in stored["std"]),
            "source": str(stored.get("source") or "")}


def checkpoint_norm_stats(path: str | os.PathLike) -> dict | None:
    """:func:`stored_norm_stats` of the checkpoint file ``path``, read through the one ``weights_only``
    loader."""
    from ..checkpoint import load_file

    return stored_norm_stats(load_file(path))


def expand_channels(mean: tuple, std: tuple, channels: int) -> tuple[tuple, tuple]:
    """Per-channel ``(mean, std)`` for ``channels``-channel inputs: grey statistics (one channel) stand for
    every channel, as a grey image read as RGB has R = G = B. Raises ``ValueError`` naming both counts for
    any other mismatch."""
    mean, std = tuple(mean), tuple(std)
    n = len(mean)
    if n == 1 and channels != 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"statistics for {n} channel(s), the model reads {channels}")
    return mean, std


def framework_norm(stats: dict, channels: int, scale: float = 255.0) -> tuple[list[float], list[float]]:
    """``stats`` (see :func:`stored_norm_stats`) as a framework's per-channel ``(mean, std)`` for
    ``channels``-channel inputs in ``0..scale`` units (detectron2's ``pixel_mean`` and mmseg's
    ``data_preprocessor.mean`` are in 0-255), channels as :func:`expand_channels`."""
    mean, std = expand_channels(stats["mean"], stats["std"], channels)
    return [round(scale * v, 4) for v in mean], [round(scale * v, 4) for v in std]


def pick_norm_source(user_set: set[str], found: str | None) -> tuple[dict[str, str], str]:
    """Where a transfer run's ``mean`` and ``std`` come from: the command line for the keys in
    ``user_set``, else ``found`` (statistics a checkpoint or run brought, described), else the config.
    Returns ``({"mean": source, "std": source}, one line for both)``."""
    sources = {k: "the command line" if k in user_set else (found or "the config") for k in ("mean", "std")}
    line = sources["mean"] if sources["mean"] == sources["std"] else \
        f"mean: {sources['mean']}; std: {sources['std']}"
    return sources, line


def checkpoint_source(weights, stats: dict) -> str:
    """How a log line names statistics that ``weights`` brought."""
    return f"the checkpoint {weights} (norm_stats: {stats['source'] or 'stored'})"
