"""Class count and names of an ADE-layout folder, for ``tools/train_seg.py --data-root DIR`` without a config edit.

Sources, first found wins: ``DIR/classes.txt`` (one name a line, in id order), ``DIR/metainfo.json``
(``{"classes": [...]}``, optionally ``"reduce_zero_label"``), else the label ids found by scanning the
training label maps (names ``class_<id>``): those of the training dataset's own layout (its
``data_prefix.seg_map_path`` / ``img_path``, ``seg_map_suffix`` / ``img_suffix``; ADE20K's
``annotations/training/*.png`` beside ``images/training/*.jpg`` by default) that have an image. The scan
reads each map through :func:`segmentation.data.label_info`, so ``--check-data full`` does not read it again. Label convention: with ``reduce_zero_label=False``
ids ``0 .. C-1`` are the classes; with ``reduce_zero_label=True`` (ADE20K) 0 is ignored and ids
``1 .. C`` are the classes, so a listed name file then names ids 1..C.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mae_transfer.common import ConfigError


@dataclass(frozen=True)
class TrainLayout:
    """Where the training label maps of a dataset are: ``seg_map_path`` / ``img_path`` relative to the data
    root, and the file suffixes (mmseg's ``BaseSegDataset`` keys, ADE20K's values by default)."""
    seg_map_path: str = "annotations/training"
    img_path: str = "images/training"
    seg_map_suffix: str = ".png"
    img_suffix: str = ".jpg"

    @classmethod
    def of(cls, ds: dict) -> "TrainLayout":
        """The layout of mmseg dataset config ``ds`` (keys it leaves out keep ADE20K's values)."""
        prefix = ds.get("data_prefix") or {}
        d = cls()
        return cls(prefix.get("seg_map_path", d.seg_map_path), prefix.get("img_path", d.img_path),
                   ds.get("seg_map_suffix", d.seg_map_suffix), ds.get("img_suffix", d.img_suffix))


def _pixel_counts(root: Path, layout: TrainLayout, ignore_index: int, purpose: str) -> dict[int, int]:
    """Pixels per label id (``ignore_index`` left out) over the training label maps that have an image;
    ``purpose`` (what the scan is for) goes into the error messages."""
    from .data import SegDataError, label_info, list_pairs

    ann_dir, img_dir = root / layout.seg_map_path, root / layout.img_path
    try:
        pairs, _ = list_pairs(img_dir, ann_dir, layout.img_suffix, layout.seg_map_suffix)
    except SegDataError as e:
        raise ConfigError(f"{purpose}: {e}") from e
    if not pairs:
        raise ConfigError(f"{ann_dir}: no '*{layout.seg_map_suffix}' label maps with an image "
                          f"'{img_dir}/NAME{layout.img_suffix}' ({purpose})")
    counts: dict[int, int] = {}
    for _, _, lbl in pairs:
        try:
            info = label_info(lbl)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{lbl}: unreadable label map ({e})") from e
        for i, c in zip(info.ids.tolist(), info.counts.tolist()):
            counts[i] = counts.get(i, 0) + c
    counts.pop(ignore_index, None)
    return counts


def discover_classes(data_root: str | Path, reduce_zero_label: bool = False, num_classes: int | None = None,
                     known_names: tuple[str, ...] = (), layout: TrainLayout | None = None,
                     ignore_index: int = 255) -> tuple[tuple[str, ...], bool]:
    """Class names (in training id order) and the ``reduce_zero_label`` to use for ``data_root``.

    Args:
        data_root: the dataset's root folder (``classes.txt`` / ``metainfo.json`` are looked for in it).
        reduce_zero_label: the command line's ``--reduce-zero-label`` (a ``metainfo.json`` may also set it).
        num_classes: ``--num-classes``; a names file must match it, without one it gives the count.
        known_names: the config's names, used instead of ``class_<id>`` when there is no names file and
            the count (scanned or ``num_classes``) equals theirs.
        layout: where the training label maps and images are (default: ADE20K's layout).
        ignore_index: the label id that is no class (left out of the scan).
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
        layout = layout or TrainLayout()
        ids = sorted(_pixel_counts(root, layout, ignore_index, f"class scan (no classes.txt / metainfo.json in {root})"))
        if reduce_zero_label:
            ids = [i for i in ids if i != 0]
        num_classes = (max(ids) if reduce_zero_label else max(ids) + 1) if ids else 0
        if num_classes < 1:
            raise ConfigError(f"{root / layout.seg_map_path}: no class ids found in the label maps")
    if len(known_names) == num_classes:
        return tuple(known_names), reduce_zero_label
    first = 1 if reduce_zero_label else 0
    return tuple(f"class_{first + i}" for i in range(num_classes)), reduce_zero_label


def _heads(cfg) -> list[tuple[str, dict]]:
    """``(config key, head dict)`` of the decode head and every auxiliary head of ``cfg.model``."""
    heads = [("model.decode_head", cfg.model.decode_head)]
    aux = cfg.model.get("auxiliary_head")
    if isinstance(aux, (list, tuple)):
        heads += [(f"model.auxiliary_head[{i}]", h) for i, h in enumerate(aux)]
    elif aux:
        heads.append(("model.auxiliary_head", aux))
    return heads


def _losses(cfg):
    """``(config key, loss dict)`` for every loss of the decode and auxiliary heads of ``cfg.model``."""
    for where, head in _heads(cfg):
        losses = head.get("loss_decode")
        if isinstance(losses, (list, tuple)):
            yield from ((f"{where}.loss_decode[{i}]", loss) for i, loss in enumerate(losses))
        elif losses:
            yield f"{where}.loss_decode", losses


def balanced_class_weights(data_root: str | Path, num_classes: int, reduce_zero_label: bool = False,
                           layout: TrainLayout | None = None, ignore_index: int = 255):
    """Per-class loss weights from the training label maps: ``w_c = sqrt(median_f / f_c)``, ``f_c`` the share
    of class ``c`` among the labelled pixels and the median over the classes present; 1 for a class absent
    from the training maps. The square root of median-frequency balancing (Eigen & Fergus 2015): the full
    inverse ratio made short schedules predict the rare classes all over the background (docs/own_data.md).
    Returns ``(weights, shares)``, two lists of ``num_classes`` floats."""
    counts = _pixel_counts(Path(data_root), layout or TrainLayout(), ignore_index, "--class-weights balanced")
    pixels = np.zeros(num_classes)
    for label, n in counts.items():
        c = label - 1 if reduce_zero_label else label  # ADE20K: id 0 is ignored, ids 1..C are the classes
        if 0 <= c < num_classes:
            pixels[c] += n
    if not pixels.sum():
        raise ConfigError(f"--class-weights balanced: no labelled pixels of the {num_classes} classes in the "
                          f"training label maps of {data_root}")
    share = pixels / pixels.sum()
    weights = np.ones(num_classes)
    present = share > 0
    weights[present] = np.sqrt(np.median(share[present]) / share[present])
    return [round(float(w), 4) for w in weights], [float(f) for f in share]


def set_class_weights(cfg, weights: list[float] | None) -> list[str]:
    """``class_weight = weights`` on every cross-entropy loss of the heads (``None``: unweighted). Returns
    the keys of the losses left as they were (other loss types, which may take no class weights)."""
    skipped = []
    for key, loss in _losses(cfg):
        if loss.get("type") in ("CrossEntropyLoss", "mmseg.CrossEntropyLoss"):
            loss["class_weight"] = None if weights is None else list(weights)
        else:
            skipped.append(f"{key} ({loss.get('type')})")
    return skipped


def apply_classes(cfg, classes: tuple[str, ...], reduce_zero_label: bool, leaf_datasets) -> list[str]:
    """Size both heads, every dataset's metainfo / ``reduce_zero_label`` and every label check to ``classes``.

    Returns a line per per-class loss weight of another class count that had to be dropped."""
    n = len(classes)
    cfg.num_classes = n
    cfg.classes = classes
    for _, head in _heads(cfg):
        head["num_classes"] = n
    notes = []
    for key, loss in _losses(cfg):
        # a config's weights for its own classes would fail the loss on the first batch
        w = loss.get("class_weight")
        if w is not None and not isinstance(w, str) and len(w) != n:
            loss["class_weight"] = None
            notes.append(f"{key}.class_weight: {len(w)} weights for {n} classes, dropped (unweighted loss; "
                         f"--class-weights balanced weights the classes by their share of the training pixels)")
    for _, ds in leaf_datasets(cfg):
        ds["metainfo"] = dict(classes=classes)
        ds["reduce_zero_label"] = reduce_zero_label
        for step in ds.get("pipeline") or []:
            if step.get("type") == "LoadAnnotations":
                step["reduce_zero_label"] = reduce_zero_label
            if step.get("type") == "CheckSegLabels":
                step["num_classes"] = n
    return notes
