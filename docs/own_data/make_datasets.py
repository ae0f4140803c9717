#!/usr/bin/env python
"""Build the three "own data" sets of docs/own_data.md from scikit-image's bundled sample images.

    pip download --no-deps scikit-image==0.26.0 -d /tmp/wheels      # the wheel only; nothing is installed
    python docs/own_data/make_datasets.py --wheel /tmp/wheels/scikit_image-0.26.0-*.whl --out /tmp/own_data

Reads ``skimage/data/ihc.png`` (512x512 RGB, immunohistochemistry: haematoxylin-stained nuclei, DAB-stained
epithelium) and ``skimage/data/lfw_subset.npy`` (200 grey 25x25 crops: 100 faces, then 100 non-faces)
straight out of the wheel, and writes under ``--out``:

- ``ihc_coco/``: COCO instance json + PNG tiles, categories ``stromal_nucleus`` / ``epithelial_nucleus``;
- ``ihc_ade/``: ADE20K layout (``images/{training,validation}/*.jpg``, ``annotations/.../*.png``,
  ``classes.txt``), classes ``stroma_or_lumen`` / ``dab_epithelium`` / ``nucleus``;
- ``ihc_nuclei_ade/``: the same tiles in the same layout, with the COCO set's categories as pixel classes:
  ``background`` / ``stromal_nucleus`` / ``epithelial_nucleus``;
- ``lfw_folder/``: an ImageFolder (``train/``, ``val/``; ``face/``, ``non_face/``) of 16-bit grey TIFFs.

How the labels come about (classical, no learning): colour deconvolution of the RGB image into
haematoxylin (H) and DAB optical densities (Ruifrok & Johnston 2001, the stain matrix of skimage's
``rgb2hed``); Otsu thresholds on the Gaussian-smoothed channels; nuclei are the connected components of the
H mask after a morphological opening (components of 12-400 px kept); a nucleus is ``epithelial`` if most of
a 3 px ring around it is DAB-positive, else ``stromal``. Pixel classes: ``nucleus`` on the kept nuclei, else ``dab_epithelium``
where the DAB density smoothed at sigma 6 px is over its Otsu threshold, else ``stroma_or_lumen`` (the pale
stroma and the unstained lumen / glass are not told apart).

Tiles: 32x32 native pixels, upsampled 2x to 64x64 (nuclei of 10-15 px become 20-30 px). Training tiles come
from rows 0-383 (stride 16), validation tiles from rows 384-511 (stride 32): the two never share a pixel.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])  # skimage.color
NUCLEUS_CLASSES = ["stromal_nucleus", "epithelial_nucleus"]
TISSUE_CLASSES = ["stroma_or_lumen", "dab_epithelium", "nucleus"]
TILE, SCALE, SPLIT_ROW = 32, 2, 384


def otsu(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of the values ``x`` (any shape): the cut maximising the between-class variance."""
    hist, edges = np.histogram(x.ravel(), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def stain_densities(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float haematoxylin, eosin, DAB densities (skimage's rgb2hed)."""
    od = np.log(np.maximum(rgb / 255.0, 1e-6)) / np.log(1e-6)
    return np.maximum(od @ np.linalg.inv(RGB_FROM_HED), 0)


def label_ihc(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(instances (H, W) int32 0 = none, category per instance (K,) 0/1, tissue (H, W) uint8)``."""
    hed = stain_densities(rgb)
    h = ndi.gaussian_filter(hed[..., 0], 1.0)
    dab_mask = ndi.gaussian_filter(hed[..., 2], 6.0)
    dab_mask = dab_mask > otsu(dab_mask)
    nuclei = ndi.binary_opening(h > otsu(h), iterations=2)
    nuclei = ndi.binary_fill_holes(nuclei)
    lab, n = ndi.label(nuclei)
    sizes = ndi.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    keep = np.flatnonzero((sizes >= 12) & (sizes <= 400)) + 1
    inst = np.zeros_like(lab)
    cats = []
    for new, old in enumerate(keep, start=1):
        m = lab == old
        ring = ndi.binary_dilation(m, iterations=3) & ~m
        inst[m] = new
        cats.append(int(dab_mask[ring].mean() > 0.5))
    tissue = np.where(inst > 0, 2, np.where(dab_mask, 1, 0)).astype(np.uint8)
    return inst.astype(np.int32), np.array(cats, np.int64), tissue


def tiles(height: int, width: int, rows: tuple[int, int], stride: int):
    """Top-left corners of the TILE x TILE windows inside ``rows`` = (first, end) with ``stride``."""
    for y in range(rows[0], rows[1] - TILE + 1, stride):
        for x in range(0, width - TILE + 1, stride):
            yield y, x


def _up(a: np.ndarray, resample) -> Image.Image:
    im = Image.fromarray(a)
    return im.resize((a.shape[1] * SCALE, a.shape[0] * SCALE), resample)


def _rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a (H, W) bool mask (column-major runs, starting with zeros)."""
    flat = mask.T.ravel().astype(np.uint8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def write_coco(rgb, inst, cats, out: Path):
    """``out/{train,val}.json`` + ``out/images/{train,val}/*.png``; objects cut by a tile edge are kept
    only if at least half of their pixels are inside (the rest of the tile's part marked crowd-free)."""
    for split, rows, stride in (("train", (0, SPLIT_ROW), 16), ("val", (SPLIT_ROW, rgb.shape[0]), 32)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for y, x in tiles(*rgb.shape[:2], rows, stride):
            name = f"ihc_y{y:03d}_x{x:03d}.png"
            _up(rgb[y:y + TILE, x:x + TILE], Image.BICUBIC).save(out / "images" / split / name)
            img_id = len(images) + 1
            images.append({"id": img_id, "file_name": name, "height": TILE * SCALE, "width": TILE * SCALE})
            crop = inst[y:y + TILE, x:x + TILE]
            for k in np.unique(crop[crop > 0]):
                inside, whole = int((crop == k).sum()), int((inst == k).sum())
                if inside < max(0.5 * whole, 8):
                    continue
                m = np.asarray(_up(((crop == k) * 255).astype(np.uint8), Image.NEAREST)) > 127
                ys, xs = np.nonzero(m)
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(cats[k - 1]) + 1,
                             "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                      int(ys.max() - ys.min() + 1)],
                             "area": int(m.sum()), "iscrowd": 0, "segmentation": _rle(m)})
        coco = {"images": images, "annotations": anns,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NUCLEUS_CLASSES)]}
        (out / f"{split}.json").write_text(json.dumps(coco))
        print(f"{out / split}.json: {len(images)} images, {len(anns)} nuclei")


def write_ade(rgb, tissue, out: Path, classes: list[str] = TISSUE_CLASSES):
    """ADE20K layout with ``classes.txt``; ids 0..len(classes)-1 are the classes (no reduce_zero_label)."""
    for split, folder, rows, stride in (("train", "training", (0, SPLIT_ROW), 16),
                                        ("val", "validation", (SPLIT_ROW, rgb.shape[0]), 32)):
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        (out / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        n = 0
        for y, x in tiles(*rgb.shape[:2], rows, stride):
            name = f"ihc_y{y:03d}_x{x:03d}"
            _up(rgb[y:y + TILE, x:x + TILE], Image.BICUBIC).save(out / "images" / folder / f"{name}.jpg", quality=95)
            _up(tissue[y:y + TILE, x:x + TILE], Image.NEAREST).save(out / "annotations" / folder / f"{name}.png")
            n += 1
        print(f"{out / 'images' / folder}: {n} tiles")
    (out / "classes.txt").write_text("\n".join(classes) + "\n")


def write_folder(faces: np.ndarray, out: Path, val_per_class: int = 20):
    """ImageFolder of 16-bit grey TIFFs: the first 100 crops are faces, the last 100 not (skimage's docs);
    the last ``val_per_class`` of each class are held out."""
    for cls, arr in (("face", faces[:100]), ("non_face", faces[100:])):
        for i, a in enumerate(arr):
            split = "val" if i >= len(arr) - val_per_class else "train"
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(a * 65535).astype(np.uint16)).save(out / split / cls / f"{cls}_{i:03d}.tif")
    print(f"{out}: {200 - 2 * val_per_class} train / {2 * val_per_class} val 16-bit grey TIFFs")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", required=True, help="the scikit-image wheel (pip download --no-deps scikit-image)")
    p.add_argument("--out", required=True, help="folder for ihc_coco/, ihc_ade/, lfw_folder/ and preview PNGs")
    args = p.parse_args(argv)
    out = Path(args.out)
    with zipfile.ZipFile(args.wheel) as z:
        rgb = np.asarray(Image.open(io.BytesIO(z.read("skimage/data/ihc.png"))).convert("RGB"))
        faces = np.load(io.BytesIO(z.read("skimage/data/lfw_subset.npy")))
    inst, cats, tissue = label_ihc(rgb)
    print(f"ihc.png: {len(cats)} nuclei ({int((cats == 0).sum())} stromal, {int(cats.sum())} epithelial); "
          f"tissue pixels {np.bincount(tissue.ravel(), minlength=3).tolist()}")
    out.mkdir(parents=True, exist_ok=True)
    palette = np.array([[255, 255, 255], [160, 90, 20], [80, 80, 220]], np.uint8)
    colours = np.array([[0, 200, 255], [255, 60, 60]], np.uint8)
    overlay = rgb.copy()
    edge = ndi.binary_dilation(inst > 0) & ~ndi.binary_erosion(inst > 0)
    overlay[edge] = colours[cats[np.maximum(ndi.maximum_filter(inst, 3)[edge], 1) - 1]]
    Image.fromarray(np.concatenate([overlay, palette[tissue]], 1)).save(out / "labels_preview.png")
    write_coco(rgb, inst, cats, out / "ihc_coco")
    write_ade(rgb, tissue, out / "ihc_ade")
    # the detector's categories as pixel classes: naming a nucleus takes its surroundings (the DAB ring)
    nucleus_type = np.where(inst > 0, cats[np.maximum(inst, 1) - 1] + 1, 0).astype(np.uint8)
    write_ade(rgb, nucleus_type, out / "ihc_nuclei_ade", ["background"] + NUCLEUS_CLASSES)
    write_folder(faces, out / "lfw_folder")


if __name__ == "__main__":
    main()
