"""Checks for semantic-segmentation data in the ADE20K folder layout, before and during training.

Layout (ADE20K's, used by any dataset without code)::

    DATA_ROOT/images/{training,validation}/NAME.jpg
    DATA_ROOT/annotations/{training,validation}/NAME.png   single-channel uint8 class ids

Label convention: with ``reduce_zero_label=False`` a label map holds class ids ``0 .. C-1`` (our scenes:
0 = background, a real class; 1..10 = the Fashion-MNIST items) and 255 = ignore. With
``reduce_zero_label=True`` (ADE20K) 0 means "other" and is ignored, ids ``1 .. C`` are the classes.

:func:`validate_seg_folder` checks a split up front (missing files, unreadable or multi-channel label
maps, image/label size mismatch, ids outside the class range, a ``reduce_zero_label`` that does not fit);
:class:`CheckSegLabels` checks each sample inside the mmseg pipeline, for datasets too large to scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mmcv.transforms import BaseTransform
from PIL import Image

from mmseg.registry import TRANSFORMS

__all__ = ["SegDataError", "SplitReport", "LabelInfo", "label_info", "list_pairs", "validate_seg_folder",
           "label_problems", "CheckSegLabels"]

_LABEL_MODES = ("L", "P", "I;16", "I")


@dataclass(frozen=True)
class LabelInfo:
    """What the up-front checks need of one label map: PIL ``mode``, ``size`` (W, H), array ``shape``, the
    sorted distinct values ``ids`` (1-D) and their pixel ``counts`` (for ``--class-weights balanced``)."""
    mode: str
    size: tuple[int, int]
    shape: tuple[int, ...]
    ids: np.ndarray
    counts: np.ndarray


# (resolved path, mtime_ns, size in bytes) -> LabelInfo: the class scan at start-up and the full data
# check read each label map once between them (a changed file is read again).
_LABEL_INFO: dict[tuple[str, int, int], LabelInfo] = {}


def label_info(path: str | os.PathLike) -> LabelInfo:
    """:class:`LabelInfo` of the label map at ``path``, read once per process while the file is unchanged.
    Raises ``OSError`` / ``ValueError`` for an unreadable file (not cached)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    info = _LABEL_INFO.get(key)
    if info is None:
        with Image.open(path) as im:
            label = np.asarray(im)
            info = LabelInfo(im.mode, im.size, label.shape, *np.unique(label, return_counts=True))
        _LABEL_INFO[key] = info
    return info


class SegDataError(ValueError):
    """Segmentation data that cannot be used; the message names the file or folder at fault."""


@dataclass
class SplitReport:
    """Result of :func:`validate_seg_folder`: the usable names (relative to the image folder, without
    suffix), and the problems found, one ``"file: what"`` line each."""
    img_dir: str
    names: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    max_label: int = -1

    def __str__(self):
        s = f"{self.img_dir}: {len(self.names)} usable image/label pairs"
        if self.problems:
            s += f", {len(self.problems)} skipped; first: " + "; ".join(self.problems[:3])
        return s


def _hint(value: int, num_classes: int, reduce_zero_label: bool) -> str:
    if not reduce_zero_label and value == num_classes:
        return (f" (ids 1..{num_classes} with 0 = 'other' are the ADE20K convention: set "
                f"reduce_zero_label=True)")
    return ""


def label_problems(label: np.ndarray, num_classes: int, reduce_zero_label: bool,
                   ignore_index: int = 255) -> str | None:
    """Why raw label map ``label`` (H, W; or its distinct values, 1-D) does not fit ``num_classes``
    classes, or ``None`` if it does."""
    values = np.unique(label)
    top = num_classes if reduce_zero_label else num_classes - 1
    bad = [int(v) for v in values if v > top and v != ignore_index]
    if not bad:
        return None
    rng = f"1..{num_classes} (0 = ignored 'other')" if reduce_zero_label else f"0..{num_classes - 1}"
    return (f"label ids {bad[:8]} outside the class range {rng} or ignore {ignore_index}"
            f"{_hint(bad[0], num_classes, reduce_zero_label)}")


def _list(folder: Path, suffix: str) -> dict[str, Path]:
    return {str(p.relative_to(folder))[: -len(suffix)]: p for p in folder.rglob(f"*{suffix}") if p.is_file()}


def _check_pair(lbl_path: Path, img_path: Path, num_classes: int, reduce_zero_label: bool,
                ignore_index: int) -> tuple[str | None, LabelInfo | None]:
    """``(problem, None)`` for a bad image / label pair, else ``(None, label info)``: both readable, the
    label one channel of class ids, of the image's size, with ids in range. The label map is read through
    :func:`label_info` (once per run); of the image only the header."""
    try:
        info = label_info(lbl_path)
        with Image.open(img_path) as im:
            img_size = im.size
    except (OSError, ValueError) as e:
        return f"{lbl_path} / {img_path}: unreadable ({e})", None
    if info.mode not in _LABEL_MODES:
        return (f"{lbl_path}: label map has mode {info.mode} ({info.shape}), expected one channel "
                f"of class ids (mode L or P)"), None
    if info.size != img_size:
        return (f"{lbl_path}: label size {info.size[0]}x{info.size[1]} != image {img_path} size "
                f"{img_size[0]}x{img_size[1]} (WxH)"), None
    why = label_problems(info.ids, num_classes, reduce_zero_label, ignore_index)
    return (f"{lbl_path}: {why}", None) if why else (None, info)


def list_pairs(img_dir: str | os.PathLike, ann_dir: str | os.PathLike, img_suffix: str = ".jpg",
               seg_map_suffix: str = ".png") -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """``([(name, image, label), ...], problems)``: the names (relative to the folders, without suffix)
    with both files, and one line per image or label alone. Raises :class:`SegDataError` for a missing
    folder or a folder without ``*img_suffix`` images."""
    report = SplitReport(str(img_dir))
    return _list_pairs(Path(img_dir), Path(ann_dir), img_suffix, seg_map_suffix, report), report.problems


def _list_pairs(img_dir: Path, ann_dir: Path, img_suffix: str, seg_map_suffix: str, report) -> list[tuple]:
    """``(name, image, label)`` of the names with both files; an image or label alone is a problem."""
    for d, what in ((img_dir, "image"), (ann_dir, "annotation")):
        if not d.is_dir():
            raise SegDataError(f"{what} folder {d} does not exist (expected the ADE20K layout "
                               f"DATA_ROOT/images/<split>, DATA_ROOT/annotations/<split>)")
    images, labels = _list(img_dir, img_suffix), _list(ann_dir, seg_map_suffix)
    if not images:
        raise SegDataError(f"no '*{img_suffix}' images in {img_dir}")
    report.problems += [f"{images[n]}: no label map {ann_dir / (n + seg_map_suffix)}" for n in sorted(images)
                        if n not in labels]
    report.problems += [f"{labels[n]}: no image {img_dir / (n + img_suffix)}" for n in sorted(labels)
                        if n not in images]
    return [(n, images[n], labels[n]) for n in sorted(n for n in images if n in labels)]


def _raise_on_problems(problems: list[str], img_dir: Path):
    raise SegDataError(f"{len(problems)} bad image/label pair(s) under {img_dir.parent.parent}:\n  "
                       + "\n  ".join(problems[:10])
                       + ("\n  ..." if len(problems) > 10 else "")
                       + "\n(fix them, or pass --skip-bad-data to leave them out)")


def validate_seg_folder(img_dir: str | os.PathLike, ann_dir: str | os.PathLike, num_classes: int,
                        reduce_zero_label: bool, img_suffix: str = ".jpg", seg_map_suffix: str = ".png",
                        ignore_index: int = 255, check: str = "full", on_bad: str = "error") -> SplitReport:
    """Check one split. ``check``: ``"pairs"`` (files only) or ``"full"`` (also reads every label map,
    through :func:`label_info`, so a map the class scan has read is not read again, and every image header). ``on_bad``: ``"error"`` raises :class:`SegDataError` naming the files;
    ``"skip"`` leaves them out of ``report.names`` and lists them in ``report.problems``.

    With ``check="full"`` and ``reduce_zero_label=True``, a split whose labels never reach id
    ``num_classes`` while using 0 is refused: its ids are 0-based, and reduction would ignore class 0."""
    if check not in ("pairs", "full") or on_bad not in ("error", "skip"):
        raise ValueError(f"validate_seg_folder: check must be pairs|full and on_bad error|skip, "
                         f"got {check!r}, {on_bad!r}")
    img_dir, ann_dir = Path(img_dir), Path(ann_dir)
    report = SplitReport(str(img_dir))
    zero_example = None
    for name, img_path, lbl_path in _list_pairs(img_dir, ann_dir, img_suffix, seg_map_suffix, report):
        if check == "full":
            problem, info = _check_pair(lbl_path, img_path, num_classes, reduce_zero_label, ignore_index)
            if problem:
                report.problems.append(problem)
                continue
            valid = info.ids[info.ids != ignore_index]
            if valid.size:
                report.max_label = max(report.max_label, int(valid.max()))
            if zero_example is None and (info.ids == 0).any():
                zero_example = lbl_path
        report.names.append(name)
    if check == "full" and reduce_zero_label and zero_example is not None and report.max_label < num_classes:
        raise SegDataError(
            f"{ann_dir}: reduce_zero_label=True, but no label map reaches id {num_classes} while id 0 is used "
            f"(e.g. {zero_example}): the ids look 0-based, and reduction would ignore class 0. Set "
            f"reduce_zero_label=False (or num_classes={report.max_label}).")
    if report.problems and on_bad == "error":
        _raise_on_problems(report.problems, img_dir)
    return report


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Per-sample check after ``LoadAnnotations``: a one-channel label map of the image's size with ids in
    range; raises :class:`SegDataError` naming the files otherwise.

    Args:
        num_classes: classes the model predicts (150 for ADE20K).
        ignore_index: label id ignored by the loss and metric.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        seg, path = results["gt_seg_map"], results.get("seg_map_path")
        if seg.ndim != 2:
            raise SegDataError(f"{path}: label map has shape {seg.shape}, expected (H, W) class ids")
        if tuple(seg.shape) != tuple(results["ori_shape"][:2]):
            raise SegDataError(f"{path}: label size {seg.shape[1]}x{seg.shape[0]} != image {results.get('img_path')} "
                               f"size {results['ori_shape'][1]}x{results['ori_shape'][0]} (WxH)")
        # LoadAnnotations has already applied reduce_zero_label: ids must be 0..C-1 or ignore
        bad = np.unique(seg[(seg >= self.num_classes) & (seg != self.ignore_index)])
        if bad.size:
            hint = "" if results.get("reduce_zero_label") else _hint(int(bad[0]), self.num_classes, False)
            raise SegDataError(f"{path}: label ids {bad[:8].tolist()} outside 0..{self.num_classes - 1} "
                               f"(after reduce_zero_label={bool(results.get('reduce_zero_label'))}){hint}")
        return results

    def __repr__(self):
        return f"{type(self).__name__}(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
