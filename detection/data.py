"""COCO-format datasets: up-front validation and registration in detectron2's catalogs.

Any COCO-format instances json can be used without writing code (``tools/train_det.py --train-json
--train-images --val-json --val-images`` or the config's ``data`` fields). Before detectron2 sees it, the
json is checked here so that bad input gives a clear error naming the item, or a logged count of skipped
annotations, never a crash deep inside detectron2:

errors (the dataset cannot be used as it is)
    unreadable json; missing ``images`` / ``annotations`` / ``categories``; an image without ``id`` or
    ``file_name``; duplicate image or category ids; image files missing on disk; an annotation without
    ``image_id`` / ``category_id``, or pointing at an unknown image or a category id not in
    ``categories``; an empty dataset (no images, or a training set without any usable annotation).
repaired, with a count in the log
    boxes reaching outside the image are clipped to it; ``width``/``height`` missing are read from the
    image file; a missing ``bbox`` is derived from the mask, a missing ``area`` from the mask (or box);
    missing ``iscrowd`` is 0 and detectron2-unsupported ``ignore: 1`` becomes ``iscrowd: 1``; missing
    annotation ids are assigned.
skipped, with a count in the log
    boxes that are malformed or of zero area inside the image; polygons with an odd number of
    coordinates, fewer than 3 points or zero area; RLE masks whose size is not the image's or that are
    empty; and, in datasets with masks, annotations left without any valid mask.

The cleaned json is written next to the run's outputs and registered with detectron2's
``register_coco_instances`` so the same file serves the data loader and ``COCOEvaluator``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mae_transfer.common import write_json

__all__ = ["CocoFormatError", "ValidationReport", "validate_coco_json", "register_coco_dataset"]

logger = logging.getLogger("detectron2.mae_transfer.data")


class CocoFormatError(ValueError):
    """A COCO json (or the images it points to) cannot be used; the message names the item at fault."""


@dataclass
class ValidationReport:
    json_file: str
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    has_masks: bool = False
    uses_rle: bool = False
    skipped: Counter = field(default_factory=Counter)   # reason -> annotations dropped
    repaired: Counter = field(default_factory=Counter)  # what -> items fixed
    # reason -> polygons / masks dropped (their annotation counts in ``skipped`` only if no mask is left)
    dropped_masks: Counter = field(default_factory=Counter)

    def __str__(self):
        s = (f"{self.json_file}: {self.num_images} images, {self.num_annotations} annotations, "
             f"{self.num_categories} categories, masks: {'RLE' if self.uses_rle else 'polygons' if self.has_masks else 'none'}")
        if self.skipped:
            s += f"; skipped {sum(self.skipped.values())} annotations (" + \
                 ", ".join(f"{n} {r}" for r, n in self.skipped.most_common()) + ")"
        if self.dropped_masks:
            s += "; dropped masks / polygons: " + ", ".join(f"{n} {r}" for r, n in self.dropped_masks.most_common())
        if self.repaired:
            s += "; repaired: " + ", ".join(f"{n} {r}" for r, n in self.repaired.most_common())
        return s


def _items(names, limit: int = 5) -> str:
    names = list(names)
    return ", ".join(map(str, names[:limit])) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _polygon_area(poly: list[float]) -> float:
    x, y = np.asarray(poly[0::2], dtype=np.float64), np.asarray(poly[1::2], dtype=np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _clean_polygons(segm: list, skipped: Counter) -> list[list[float]]:
    good = []
    for poly in segm:
        if not isinstance(poly, (list, tuple)) or not all(_is_number(v) for v in poly):
            skipped["malformed polygons"] += 1
        elif len(poly) % 2 or len(poly) < 6:
            skipped["polygons with an odd number of coordinates or < 3 points"] += 1
        elif _polygon_area(poly) <= 0:
            skipped["zero-area polygons"] += 1
        else:
            good.append([float(v) for v in poly])
    return good


def _rle_ok(segm: dict, h: int, w: int) -> str | None:
    """None if ``segm`` is a usable RLE of an (h, w) image, else the reason."""
    size, counts = segm.get("size"), segm.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2) or counts is None:
        return "malformed RLE masks"
    if [int(size[0]), int(size[1])] != [h, w]:
        return "RLE masks of another size than their image"
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
            return "malformed RLE masks"
        return None if sum(counts[1::2]) > 0 else "empty masks"
    if not isinstance(counts, str):
        return "malformed RLE masks"
    return None


def _mask_stats(segm, h: int, w: int) -> tuple[float, list[float]] | None:
    """(area, xywh box) of a polygon list or RLE, via pycocotools; None if empty."""
    from pycocotools import mask as mask_util

    if isinstance(segm, dict):
        rle = mask_util.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else \
            {"size": segm["size"], "counts": segm["counts"].encode() if isinstance(segm["counts"], str) else segm["counts"]}
    else:
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    area = float(mask_util.area(rle))
    return (area, [float(v) for v in mask_util.toBbox(rle)]) if area > 0 else None


def _image_problem(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """``(problem, (height, width))`` of an image file from its header (``PIL.Image.verify``): problem is
    None for a readable 8-bit image, else why detectron2 cannot train on it (undecodable; more than 8
    bits per channel, which detectron2's ``read_image`` would clip to white)."""
    from PIL import Image

    from mae_transfer.data.images import HIGH_BIT_DEPTH_MODES

    try:
        with Image.open(path) as im:
            size, mode = (im.height, im.width), im.mode
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; reported with the file named
        return f"not a readable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", None
    if mode in HIGH_BIT_DEPTH_MODES:
        return (f"{mode} image of more than 8 bits per channel, which detectron2 reads clipped to white: "
                f"convert it to 8-bit"), size
    return None, size


def _read_json(json_file: Path, image_root: Path) -> dict:
    """The json's top level, checked to be an object with list ``images``, ``annotations``, ``categories``."""
    src = str(json_file)
    if not json_file.is_file():
        raise CocoFormatError(f"COCO json {src!r} does not exist")
    if not image_root.is_dir():
        raise CocoFormatError(f"image folder {str(image_root)!r} (for {src}) does not exist")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{src} is not valid json: {e}") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{src}: top level is a {type(data).__name__}, a COCO json is an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFormatError(f"{src}: missing or non-list top-level key {key!r} (has: {_items(data)})")
    return data


def _categories(data: dict, src: str) -> dict[int, dict]:
    """id -> category; ids must be unique integers and every category needs a name."""
    cats = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise CocoFormatError(f"{src}: categories[{i}] needs an integer 'id' and a 'name', got {c!r:.120}")
        if c["id"] in cats:
            raise CocoFormatError(f"{src}: category id {c['id']} appears twice (categories[{i}])")
        cats[c["id"]] = {"id": c["id"], "name": str(c["name"]), "supercategory": c.get("supercategory", "")}
    if not cats:
        raise CocoFormatError(f"{src}: 'categories' is empty")
    return cats


def _images(data: dict, src: str, image_root: Path, check_files: bool, report: ValidationReport) -> dict[int, dict]:
    """id -> image with a positive size (read from the file where the json lacks it); files must exist."""
    images, missing_files, bad_files = {}, [], []
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise CocoFormatError(f"{src}: images[{i}] needs an integer 'id' and a 'file_name', got {im!r:.120}")
        if im["id"] in images:
            raise CocoFormatError(f"{src}: image id {im['id']} appears twice (images[{i}], {im['file_name']})")
        path = image_root / im["file_name"]
        if check_files and not path.is_file():
            missing_files.append(im["file_name"])
            continue
        h, w = im.get("height"), im.get("width")
        if check_files:
            problem, size = _image_problem(path)
            if problem:
                bad_files.append(f"{im['file_name']}: {problem}")
                continue
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            if not check_files:
                raise CocoFormatError(f"{src}: images[{i}] ({im['file_name']}) lacks a positive 'height'/'width'")
            h, w = size
            report.repaired["image sizes read from the files"] += 1
        images[im["id"]] = {"id": im["id"], "file_name": im["file_name"], "height": h, "width": w}
    if missing_files:
        raise CocoFormatError(f"{src}: {len(missing_files)} image files missing under {image_root}: "
                              f"{_items(missing_files)}")
    if bad_files:
        raise CocoFormatError(f"{src}: {len(bad_files)} unusable image files under {image_root}: "
                              f"{'; '.join(bad_files[:3])}{' ...' if len(bad_files) > 3 else ''}")
    if not images:
        raise CocoFormatError(f"{src}: empty dataset, 'images' is empty")
    return images


def _check_references(a, where: str, src: str, images: dict, cats: dict):
    """An annotation is an object naming an existing image and category (else the json is refused)."""
    if not isinstance(a, dict):
        raise CocoFormatError(f"{src}: {where} is a {type(a).__name__}, not an object")
    for key in ("image_id", "category_id"):
        if key not in a:
            raise CocoFormatError(f"{src}: {where} has no {key!r}")
    if a["image_id"] not in images:
        raise CocoFormatError(f"{src}: {where} refers to image_id {a['image_id']!r}, which is not in 'images'")
    if a["category_id"] not in cats:
        raise CocoFormatError(f"{src}: {where} has category_id {a['category_id']!r}, which is not in "
                              f"'categories' (ids: {_items(sorted(cats), 12)})")


def _clean_mask(segm, h: int, w: int, skipped: Counter):
    """``(segmentation, (area, box) | None)``: usable polygons or RLE of an (h, w) image, else ``(None, None)``."""
    if isinstance(segm, list) and segm:
        segm = _clean_polygons(segm, skipped)
    elif isinstance(segm, dict):
        reason = _rle_ok(segm, h, w)
        if reason:
            skipped[reason] += 1
            segm = None
    elif segm:
        skipped["malformed segmentations"] += 1
        segm = None
    if not segm:
        return None, None
    stats = _mask_stats(segm, h, w)
    if stats is None:
        skipped["empty masks"] += 1
        return None, None
    return segm, stats


def _clean_box(box, stats, h: int, w: int, report: ValidationReport) -> list[float] | None:
    """The xywh box clipped to the image (derived from the mask where missing); None if unusable."""
    if box is None and stats is not None:
        box = stats[1]
        report.repaired["boxes derived from masks"] += 1
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box)):
        report.skipped["malformed boxes (not 4 finite numbers)"] += 1
        return None
    x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
    cx0, cy0, cx1, cy1 = min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h)
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        report.skipped["zero-area boxes or boxes outside the image"] += 1
        return None
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        report.repaired["boxes clipped to the image"] += 1
    return [float(cx0), float(cy0), float(cx1 - cx0), float(cy1 - cy0)]


class _AnnotationIds:
    """Keeps the json's annotation ids; a missing or repeated one gets a new id above all of them."""

    def __init__(self, annotations: list, report: ValidationReport):
        used = {a["id"] for a in annotations if isinstance(a, dict) and isinstance(a.get("id"), int)}
        self.next, self.seen, self.report = max(used, default=0) + 1, set(), report

    def __call__(self, aid) -> int:
        if not isinstance(aid, int) or aid in self.seen:
            aid, self.next = self.next, self.next + 1
            self.report.repaired["annotation ids assigned"] += 1
        self.seen.add(aid)
        return aid


def _clean_annotation(a: dict, im: dict, ids: _AnnotationIds, has_masks: bool, report: ValidationReport) -> dict | None:
    """The annotation as it is registered (crowd flag, id, mask, box, area), or None if it is dropped."""
    out = {"image_id": a["image_id"], "category_id": a["category_id"], "iscrowd": int(bool(a.get("iscrowd", 0)))}
    if a.get("ignore", 0):
        out["iscrowd"] = 1
        report.repaired["'ignore' annotations turned into crowd regions"] += 1
    out["id"] = ids(a.get("id"))
    segm, stats = _clean_mask(a.get("segmentation"), im["height"], im["width"], report.dropped_masks)
    if segm:
        out["segmentation"] = segm
        report.uses_rle |= isinstance(segm, dict) and not out["iscrowd"]
    elif has_masks and not out["iscrowd"]:
        report.skipped["annotations without a valid mask (the dataset has masks)"] += 1
        return None
    box = _clean_box(a.get("bbox"), stats, im["height"], im["width"], report)
    if box is None:
        return None
    out["bbox"] = box
    if _is_number(a.get("area")) and a["area"] > 0:
        out["area"] = float(a["area"])
    else:
        out["area"] = stats[0] if stats is not None else box[2] * box[3]
        report.repaired["areas computed"] += 1
    return out


def validate_coco_json(json_file: str | os.PathLike, image_root: str | os.PathLike, *,
                       is_train: bool = True, check_files: bool = True) -> tuple[dict, ValidationReport]:
    """Check and clean a COCO instances json (see the module docstring for the rules).

    Args:
        json_file: the COCO json.
        image_root: folder the images' ``file_name`` is relative to.
        is_train: a training set must keep at least one annotation.
        check_files: check that every image file exists (and read missing sizes from it).
    Returns:
        ``(cleaned json dict, report)``. Raises :class:`CocoFormatError` naming the item at fault.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    src = str(json_file)
    data = _read_json(json_file, image_root)
    report = ValidationReport(src)
    cats = _categories(data, src)
    images = _images(data, src, image_root, check_files, report)
    has_masks = any(isinstance(a, dict) and a.get("segmentation") and not a.get("iscrowd", 0)
                    for a in data["annotations"])
    ids, anns = _AnnotationIds(data["annotations"], report), []
    for i, a in enumerate(data["annotations"]):
        where = f"annotations[{i}]" + (f" (id {a['id']})" if isinstance(a, dict) and "id" in a else "")
        _check_references(a, where, src, images, cats)
        out = _clean_annotation(a, images[a["image_id"]], ids, has_masks, report)
        if out is not None:
            anns.append(out)

    report.num_images, report.num_annotations, report.num_categories = len(images), len(anns), len(cats)
    report.has_masks = has_masks
    if is_train and not any(not a["iscrowd"] for a in anns):
        skipped = report.skipped
        raise CocoFormatError(f"{src}: empty dataset, no usable annotation left for training "
                              f"({sum(skipped.values())} skipped: {dict(skipped) or 'none given'})")
    clean = {"info": data.get("info", {}), "licenses": data.get("licenses", []), "categories": list(cats.values()),
             "images": list(images.values()), "annotations": anns}
    return clean, report


def register_coco_dataset(name: str, json_file: str | os.PathLike, image_root: str | os.PathLike,
                          cache_dir: str | os.PathLike, *, is_train: bool = True,
                          check_files: bool = True) -> ValidationReport:
    """Validate ``json_file`` and register the cleaned copy (``cache_dir/<name>.json``) as ``name``.

    Re-registering a name (tests, several runs in one process) replaces the earlier entry."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    clean, report = validate_coco_json(json_file, image_root, is_train=is_train, check_files=check_files)
    logger.info(f"dataset {name!r}: {report}")
    clean_path = Path(cache_dir) / f"{name}.json"
    write_json(clean, clean_path, indent=None)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(clean_path), str(Path(image_root)))
    MetadataCatalog.get(name).set(source_json=str(json_file), uses_rle=report.uses_rle, has_masks=report.has_masks)
    return report
