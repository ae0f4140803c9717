"""What every ``tools/predict.py`` predictor shares: which kind of model a checkpoint holds, the input
images (a folder or a glob) read as the models were trained, the output folder rule, and label colours.

The predictors themselves live beside their framework: :mod:`detection.predict` (detectron2),
:mod:`segmentation.predict` (MMSegmentation), :mod:`pretrain.predict` (MAE). Nothing here imports either
framework.
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from .checkpoint import CheckpointError, extract_state_dict
from .common import ConfigError
from .data.datasets import IMG_EXTENSIONS
from .data.images import to_rgb

__all__ = ["ImageError", "InputImage", "checkpoint_kind", "find_images", "read_image", "batches",
           "check_out_dir", "output_names", "palette", "blend", "save_png", "OUTPUT_NAMES"]

# Files and folders a prediction writes into --out; --overwrite removes exactly these first.
OUTPUT_NAMES = ("overlays", "labels", "reconstructions", "results.json", "images.json", "classes.json",
                "predict.json")


class ImageError(ValueError):
    """An input image cannot be used (unreadable, truncated, not an image, empty); names the file."""


@dataclass
class InputImage:
    """One input image, read.

    Attributes: ``path`` the file; ``name`` its output name (unique in the run, no suffix); ``rgb`` the
    pixels as (H, W, 3) uint8 RGB, at the file's own size; ``mode`` the file's PIL mode (``L``, ``RGBA``,
    ``I;16``, ...)."""
    path: Path
    name: str
    rgb: np.ndarray
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image as read."""
        return self.rgb.shape[0], self.rgb.shape[1]


def checkpoint_kind(obj: dict, source: str) -> str:
    """``"detector"``, ``"segmenter"`` or ``"mae"``: the kind of model a loaded checkpoint ``obj`` holds,
    from its keys (detectron2 heads ``roi_heads.`` / ``proposal_generator.``; an mmseg
    ``decode_head.``; an MAE decoder ``decoder_*``). Raises :class:`CheckpointError` naming ``source``
    for anything else, e.g. an encoder alone (nothing to predict with)."""
    sd = extract_state_dict(obj, source)
    if any(k.startswith(("roi_heads.", "proposal_generator.")) for k in sd):
        return "detector"
    if any(k.startswith("decode_head.") for k in sd):
        return "segmenter"
    if any(k.startswith(("decoder_embed.", "decoder_pred.", "decoder_blocks.")) for k in sd):
        return "mae"
    raise CheckpointError(f"{source} holds neither a detector (roi_heads.*), a segmenter (decode_head.*) nor an MAE "
                          f"(decoder_*); its keys begin {', '.join(sorted({k.split('.')[0] for k in sd})[:8])}. "
                          f"predict needs a model trained by tools/train_det.py, tools/train_seg.py or pretrain/run.py")


def find_images(spec: str) -> list[Path]:
    """The image files of ``spec``: a folder (searched recursively for the extensions of
    :data:`~mae_transfer.data.datasets.IMG_EXTENSIONS`, any case), a glob (``'dir/*.png'``, ``**`` allowed)
    or one file; sorted. Raises :class:`ConfigError` when nothing matches."""
    p = Path(spec)
    if p.is_dir():
        found = [q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMG_EXTENSIONS]
    elif p.is_file():
        found = [p]
    else:
        found = [Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file()]
    if not found:
        what = "folder" if p.is_dir() else "glob"
        raise ConfigError(f"--images {spec!r}: no image files found (the {what} matches no "
                          f"{'/'.join(e.lstrip('.') for e in IMG_EXTENSIONS)} file)" if p.is_dir() or glob.has_magic(spec)
                          else f"--images {spec!r}: no such file, folder or glob match")
    return sorted(found)


def output_names(paths: list[Path]) -> list[str]:
    """One output name per input (no suffix): the path below the inputs' common folder with ``/`` as
    ``__`` (``a/x.png`` -> ``a__x``), and the extension added where two inputs would share a name
    (``x.png`` and ``x.jpg`` -> ``x_png``, ``x_jpg``)."""
    if not paths:
        return []
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    stems = ["__".join(p.resolve().relative_to(root).with_suffix("").parts) for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [f"{s}_{p.suffix.lstrip('.').lower()}" if counts[s] > 1 else s for s, p in zip(stems, paths)]


def read_image(path: Path, name: str) -> InputImage:
    """Read ``path`` as 8-bit RGB, as the models were trained: grey and palette images are repeated over
    the three channels, alpha is dropped, 16-bit grey is scaled from its full range
    (:func:`~mae_transfer.data.images.to_rgb`); EXIF orientation is applied (as detectron2 reads).
    Raises :class:`ImageError` naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            rgb = np.asarray(to_rgb(im), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; each becomes one line naming the file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"cannot read image {str(path)!r}: {reason}") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"cannot read image {str(path)!r}: empty image of shape {rgb.shape}")
    return InputImage(Path(path), name, np.ascontiguousarray(rgb), mode)


def batches(paths: list[Path], batch_size: int, *, strict: bool, on_skip, progress=None) -> Iterator[list[InputImage]]:
    """Read ``paths`` and yield them in lists of up to ``batch_size`` readable images.

    Args:
        paths: the image files, in order.
        batch_size: images per list (> 0).
        strict: an unreadable image raises its :class:`ImageError` (else it is skipped).
        on_skip: called with the ``ImageError`` of each skipped image.
        progress: a tqdm bar advanced by one per file read (readable or not), or None.
    """
    names = output_names(paths)
    batch: list[InputImage] = []
    for path, name in zip(paths, names):
        try:
            batch.append(read_image(path, name))
        except ImageError as e:
            if strict:
                raise
            on_skip(e)
        if progress is not None:
            progress.update(1)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_out_dir(out: Path, *, overwrite: bool, weights: Path):
    """Refuse an ``--out`` that is the checkpoint's own folder, or a non-empty folder without
    ``--overwrite`` (:class:`ConfigError` naming it); with ``--overwrite`` the outputs of an earlier
    prediction (:data:`OUTPUT_NAMES`) are removed, nothing else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir() and out.resolve() == Path(weights).resolve().parent:
        raise ConfigError(f"--out {str(out)!r} is the folder of the checkpoint --weights reads: the run's own "
                          f"files live there; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
            raise ConfigError(f"--out {str(out)!r} is not empty ({shown}): pass --overwrite to replace an earlier "
                              f"prediction's files there, or choose another --out")
        for n in OUTPUT_NAMES:
            q = out / n
            if q.is_dir():
                shutil.rmtree(q)
            elif q.exists():
                q.unlink()
    out.mkdir(parents=True, exist_ok=True)


def palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """(num_classes, 3) uint8 colours, distinct and reproducible (``seed``); class 0 black when there are
    at least two classes, since 0 is background in the label convention most of our data uses."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)
    if num_classes > 1:
        colours[0] = 0
    return colours


def blend(rgb: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: ``rgb`` (H, W, 3) uint8 mixed with ``colours`` (H, W, 3) at ``alpha``."""
    return np.clip(rgb.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha + 0.5, 0, 255
                   ).astype(np.uint8)


def save_png(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    """Write ``pixels`` ((H, W) uint8 / uint16 labels or (H, W, 3) uint8 RGB) as a PNG, atomically."""
    from .common import atomic_write

    return atomic_write(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))
