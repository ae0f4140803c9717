"""Class count and names of an ADE-layout folder, for ``tools/train_seg.py --data-root DIR`` without a config edit.

Sources, first found wins: ``DIR/classes.txt`` (one name a line, in id order), ``DIR/metainfo.json``
(``{"classes": [...]}``, optionally ``"reduce_zero_label"``), else the label ids found by scanning
``DIR/annotations/training/*.png`` (names ``class_<id>``). Label convention: with ``reduce_zero_label=False``
ids ``0 .. C-1`` are the classes; with ``reduce_zero_label=True`` (ADE20K) 0 is ignored and ids
``1 .. C`` are the classes, so a listed name file then names ids 1..C.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mae_transfer.common import ConfigError


def _scan_ids(ann_dir: Path, ignore_index: int = 255) -> list[int]:
    from PIL import Image

    files = sorted(ann_dir.glob("*.png"))
    if not files:
        raise ConfigError(f"{ann_dir}: no *.png label maps to take the classes from (and no classes.txt)")
    ids: set[int] = set()
    for f in files:
        try:
            ids.update(int(v) for v in np.unique(np.asarray(Image.open(f))))
        except OSError as e:
            raise ConfigError(f"{f}: unreadable label map ({e})") from e
    ids.discard(ignore_index)
    return sorted(ids)


def discover_classes(data_root: str | Path, reduce_zero_label: bool = False, num_classes: int | None = None,
                     known_names: tuple[str, ...] = ()) -> tuple[tuple[str, ...], bool]:
    """Class names (in training id order) and the ``reduce_zero_label`` to use for ``data_root``.

    Args:
        data_root: folder with ``images/`` and ``annotations/`` (``training``/``validation`` inside).
        reduce_zero_label: the command line's ``--reduce-zero-label`` (a ``metainfo.json`` may also set it).
        num_classes: ``--num-classes``; a names file must match it, without one it gives the count.
        known_names: the config's names, used instead of ``class_<id>`` when there is no names file and
            the count (scanned or ``num_classes``) equals theirs.
    Returns ``(classes, reduce_zero_label)``; raises :class:`ConfigError` naming the file at fault."""
    root = Path(data_root)
    names = None
    if (root / "classes.txt").is_file():
        names = [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
        src = root / "classes.txt"
    elif (root / "metainfo.json").is_file():
        src = root / "metainfo.json"
        try:
            meta = json.loads(src.read_text())
            names = [str(c) for c in meta["classes"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{src}: expected {{\"classes\": [names...]}} ({e})") from e
        reduce_zero_label = bool(meta.get("reduce_zero_label", reduce_zero_label))
    if names is not None:
        if not names:
            raise ConfigError(f"{src}: no class names")
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(f"{src} names {len(names)} classes but --num-classes {num_classes}")
        return tuple(names), reduce_zero_label
    if num_classes is None:
        ids = _scan_ids(root / "annotations" / "training")
        if reduce_zero_label:
            ids = [i for i in ids if i != 0]
        num_classes = (max(ids) if reduce_zero_label else max(ids) + 1) if ids else 0
        if num_classes < 1:
            raise ConfigError(f"{root / 'annotations' / 'training'}: no class ids found in the label maps")
    if len(known_names) == num_classes:
        return tuple(known_names), reduce_zero_label
    first = 1 if reduce_zero_label else 0
    return tuple(f"class_{first + i}" for i in range(num_classes)), reduce_zero_label


def apply_classes(cfg, classes: tuple[str, ...], reduce_zero_label: bool, leaf_datasets) -> None:
    """Size both heads, every dataset's metainfo / ``reduce_zero_label`` and every label check to ``classes``."""
    n = len(classes)
    cfg.num_classes = n
    cfg.classes = classes
    cfg.model.decode_head.num_classes = n
    if cfg.model.get("auxiliary_head"):
        heads = cfg.model.auxiliary_head if isinstance(cfg.model.auxiliary_head, list) else [cfg.model.auxiliary_head]
        for h in heads:
            h["num_classes"] = n
    for _, ds in leaf_datasets(cfg):
        ds["metainfo"] = dict(classes=classes)
        ds["reduce_zero_label"] = reduce_zero_label
        for step in ds.get("pipeline") or []:
            if step.get("type") == "LoadAnnotations":
                step["reduce_zero_label"] = reduce_zero_label
            if step.get("type") == "CheckSegLabels":
                step["num_classes"] = n
