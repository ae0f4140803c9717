"""Scenes of real product photos: the built-in stand-in for COCO and ADE20K.

Each scene pastes 2-6 Fashion-MNIST items (tinted, at random scales and positions, later ones occluding
earlier ones) onto a varied background. One set of images gets both annotation formats:

    root/images/{training,validation}/NNNNNN.jpg        RGB scenes
    root/annotations/{training,validation}/NNNNNN.png   ADE layout, uint8: 0 = background, k = class k-1 + 1
    root/coco/instances_{training,validation}.json      COCO instances: category ids 1..10, bbox and area of
                                                        the visible part, uncompressed-RLE masks
    root/scenes.json                                    the generation parameters

Training scenes use train-split items only, validation scenes test-split items only. Everything is
deterministic from ``seed`` (each image from its own generator, so any subset can be regenerated).
Every kept instance is at least ``min_visible`` visible: a placement that would hide more of an earlier
item is retried, so the pixel labels and the instance annotations describe the same objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..common import file_lock
from .fashion_mnist import CLASSES, load_fashion_mnist

SPLITS = {"training": "train", "validation": "test"}  # scene split -> Fashion-MNIST split
NUM_ITEMS, ITEM_SIZE = (2, 6), (20, 64)  # default items per scene and item side in px (128 px scenes)
RENDER_VERSION = 2  # bumped whenever the renderer changes, so cached scenes and photos are re-rendered


def data_dir() -> Path:
    """Where built-in data is rendered: ``$MAE_DATA_DIR``, default ``output/data``."""
    return Path(os.environ.get("MAE_DATA_DIR", "output/data"))


def _params(num_train, num_val, image_size, seed, num_items, item_size) -> dict:
    """The generation parameters as ``scenes.json`` records them (what makes two sets the same)."""
    return dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                num_items=list(num_items), item_size=list(item_size), version=RENDER_VERSION)


def silhouette(item: np.ndarray, threshold: int = 5) -> np.ndarray:
    """Boolean mask of a 28x28 grey item: pixels above ``threshold`` with interior holes filled
    (dark prints on a shirt belong to the shirt). Holes = background not connected to the border."""
    fg = item > threshold
    outside = np.zeros_like(fg)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = ~fg[0, :], ~fg[-1, :], ~fg[:, 0], ~fg[:, -1]
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= ~fg
        if (grown == outside).all():
            return ~outside
        outside = grown


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a (H, W) boolean mask (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, bool]:
    """A calm two-colour gradient with faint colour blobs and fine noise, (size, size, 3) float, either
    dark or light (returned as ``light``) so that the items can be tinted to stand out against it. Real
    photos of products have uncluttered backgrounds; loud ones (blobs of +-60 over any colour) made the
    10-way item classes hard to learn within a CPU budget, for every initialisation alike."""
    light = bool(rng.random() < 0.5)
    c0 = rng.uniform(150, 240, 3) if light else rng.uniform(10, 100, 3)
    c1 = np.clip(c0 + rng.uniform(-40, 40, 3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
    cells = int(rng.integers(2, 7))
    blobs = rng.uniform(-15, 15, (cells, cells, 3)).astype(np.float32)
    blobs = np.stack([np.asarray(Image.fromarray(blobs[..., c]).resize((size, size), Image.BICUBIC))
                      for c in range(3)], axis=-1)
    return np.clip(bg + blobs + rng.normal(0, rng.uniform(0, 4), (size, size, 3)), 0, 255), light


def render_scene(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, size: int = 128,
                 num_items: tuple[int, int] = NUM_ITEMS, item_size: tuple[int, int] = ITEM_SIZE,
                 min_visible: float = 0.4, tries: int = 10):
    """Compose one scene. Returns image (size, size, 3) uint8, semantic map (size, size) uint8 and a list
    of instances ``(class_id 0..9, visible mask (size, size) bool)``."""
    img, light = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)  # which placed item each pixel shows
    full_area, classes = [], []
    for _ in range(int(rng.integers(num_items[0], num_items[1] + 1))):
        k = int(rng.integers(len(items)))
        s = int(rng.integers(item_size[0], min(item_size[1], size) + 1))
        grey = np.asarray(Image.fromarray(items[k]).resize((s, s), Image.BILINEAR), dtype=np.float32)
        sil = np.asarray(Image.fromarray(silhouette(items[k]).astype(np.uint8) * 255).resize((s, s), Image.BILINEAR)) > 127
        if sil.sum() < 4:
            continue
        for _ in range(tries):
            y, x = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
            covered = owner[y:y + s, x:x + s][sil]
            # would any earlier item drop below min_visible?
            ok = all(((owner == j).sum() - (covered == j).sum()) >= min_visible * full_area[j]
                     for j in np.unique(covered[covered >= 0]))
            if ok:
                break
        else:
            continue
        # items in a contrasting tint: darker colours on a light background, bright ones on a dark one
        tint = rng.uniform(40, 160, 3) if light else rng.uniform(160, 255, 3)
        patch = img[y:y + s, x:x + s]
        patch[sil] = (grey[sil, None] / 255.0) * tint * rng.uniform(0.85, 1.15) + rng.uniform(0, 20)
        owner[y:y + s, x:x + s][sil] = len(full_area)
        full_area.append(int(sil.sum()))
        classes.append(int(labels[k]))
    semantic = np.zeros((size, size), dtype=np.uint8)
    instances = []
    for j, c in enumerate(classes):
        m = owner == j
        semantic[m] = c + 1
        instances.append((c, m))
    return np.clip(img, 0, 255).astype(np.uint8), semantic, instances


def _coco_json(records: list, split: str) -> dict:
    return {
        "info": {"description": f"mae-transfer Fashion-MNIST scenes, {split}"},
        "licenses": [{"id": 1, "name": "MIT (Fashion-MNIST)"}],
        "categories": [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(CLASSES)],
        "images": [r[0] for r in records],
        "annotations": [a for r in records for a in r[1]],
    }


def generate_scenes(root: str | os.PathLike, num_train: int = 2000, num_val: int = 300, image_size: int = 128,
                    seed: int = 0, num_items: tuple[int, int] = NUM_ITEMS, item_size: tuple[int, int] = ITEM_SIZE,
                    fmnist_root: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Write a scene dataset to ``root`` (see the module docstring); returns ``root``.

    Written to a temporary folder beside ``root`` and renamed at the end, so an interrupted run leaves
    nothing half-written and concurrent callers (e.g. several DDP ranks) end with one complete copy."""
    root = Path(root)
    params = _params(num_train, num_val, image_size, seed, num_items, item_size)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        ann_id = 1
        for split_idx, (split, fm_split) in enumerate(SPLITS.items()):
            items, labels = load_fashion_mnist(fm_split, fmnist_root)
            n = num_train if split == "training" else num_val
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "annotations" / split).mkdir(parents=True)
            records = []
            for i in tqdm(range(n), desc=f"scenes {split}", disable=not progress, leave=False):
                rng = np.random.default_rng([seed, split_idx, i])
                img, sem, inst = render_scene(rng, items, labels, image_size, num_items, item_size)
                name = f"{i:06d}"
                Image.fromarray(img).save(tmp / "images" / split / f"{name}.jpg", quality=95)
                Image.fromarray(sem).save(tmp / "annotations" / split / f"{name}.png")
                anns = []
                for c, m in inst:
                    ys, xs = np.nonzero(m)
                    x0, y0 = int(xs.min()), int(ys.min())
                    anns.append({"id": ann_id, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                                 "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                                 "area": int(m.sum()), "segmentation": mask_to_rle(m)})
                    ann_id += 1
                records.append(({"id": i + 1, "file_name": f"{name}.jpg", "height": image_size,
                                 "width": image_size}, anns))
            (tmp / "coco").mkdir(exist_ok=True)
            with open(tmp / "coco" / f"instances_{split}.json", "w") as f:
                json.dump(_coco_json(records, split), f)
        with open(tmp / "scenes.json", "w") as f:
            json.dump(params, f, indent=1)
        if root.exists() and _matches(root, params):
            shutil.rmtree(tmp)  # another process finished first
            return root
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _matches(root: Path, params: dict) -> bool:
    try:
        with open(root / "scenes.json") as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def default_scenes_root(num_train: int = 2000, num_val: int = 300, image_size: int = 128, seed: int = 0,
                        num_items: tuple[int, int] = NUM_ITEMS, item_size: tuple[int, int] = ITEM_SIZE) -> Path:
    """``$MAE_DATA_DIR`` (default ``output/data``) ``/scenes-{size}px-{train}-{val}-seed{seed}``, with
    ``-items{a}-{b}-size{c}-{d}`` appended when the item settings are not the defaults."""
    name = f"scenes-{image_size}px-{num_train}-{num_val}-seed{seed}"
    if tuple(num_items) != NUM_ITEMS or tuple(item_size) != ITEM_SIZE:
        name += f"-items{num_items[0]}-{num_items[1]}-size{item_size[0]}-{item_size[1]}"
    return data_dir() / name


def ensure_scenes(root: str | os.PathLike | None = None, num_train: int = 2000, num_val: int = 300,
                  image_size: int = 128, seed: int = 0, num_items: tuple[int, int] = NUM_ITEMS,
                  item_size: tuple[int, int] = ITEM_SIZE, **kwargs) -> Path:
    """Generate the scenes unless ``root`` (default :func:`default_scenes_root`) already holds a complete
    set made with the same parameters."""
    root = Path(root) if root is not None else default_scenes_root(num_train, num_val, image_size, seed,
                                                                     num_items, item_size)
    params = _params(num_train, num_val, image_size, seed, num_items, item_size)
    if _matches(root, params):
        return root
    with file_lock(root.parent / f".{root.name}.lock"):  # concurrent cells: one renders, the others wait
        if _matches(root, params):
            return root
        return generate_scenes(root, num_train, num_val, image_size, seed, tuple(num_items), tuple(item_size),
                               **kwargs)


def _render_photo_chunk(args) -> tuple[int, np.ndarray]:
    items, labels, start, size, seed, item_size = args
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for j in range(len(items)):
        out[j], _, _ = render_scene(np.random.default_rng([seed, 7, start + j]), items[j:j + 1], labels[j:j + 1],
                                    size, num_items=(1, 1), item_size=item_size)
    return start, out


def render_photos(items: np.ndarray, labels: np.ndarray, size: int = 32, seed: int = 0,
                  item_size: tuple[int, int] = (22, 32), progress: bool = True, workers: int = 1,
                  chunk: int = 2000) -> np.ndarray:
    """Object-centric "product photos", the built-in stand-in for ImageNet: each item alone, tinted, on a
    scene background (same renderer as the scenes). Returns (N, size, size, 3) uint8, image i from its own
    generator ``(seed, i)``, so ``workers`` > 1 processes (forked: numpy and PIL work only) give the same
    pixels as one; each renders ``chunk`` images at a time."""
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    jobs = [(items[a:a + chunk], labels[a:a + chunk], a, size, seed, item_size) for a in range(0, len(items), chunk)]
    import multiprocessing

    n = min(workers, len(jobs))
    with (multiprocessing.get_context("fork").Pool(n) if n > 1 else contextlib.nullcontext()) as pool, \
            tqdm(total=len(items), desc=f"photos {size}px", disable=not progress, leave=False) as bar:
        for start, images in (pool.imap_unordered if pool else map)(_render_photo_chunk, jobs):
            out[start:start + len(images)] = images
            bar.update(len(images))
    return out
