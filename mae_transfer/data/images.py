"""Image files as users have them: 8- and 16-bit PNG / TIFF / JPEG ..., grey, RGB, RGBA, and N-channel
TIFF stacks (one channel per page), read at full depth with the channels the file has.

What :func:`read_image` returns:
- an 8-bit grey or RGB file: a PIL image of mode ``L`` or ``RGB`` (the fast path every 8-bit dataset
  keeps: crops and resizes in PIL's uint8 code);
- anything deeper or with other than 1 or 3 channels: :class:`Planes`, a float32 ``(C, H, W)`` array
  with the few PIL-like methods the transforms use.

Values of integer images are scaled to [0, 1] by their type's range, never by the image's own extremes
and never clipped: uint8 by 255, uint16 by 65535, int16 from [-32768, 32767]; float images (TIFF mode
``F``) are taken as they are. Palette, CMYK and YCbCr images become RGB; 1-bit images grey.

Alpha: ``alpha="drop"`` (the default) removes the alpha channel of RGBA / LA / transparent-palette
images, ``alpha="keep"`` keeps it as the last channel (an RGBA image then has 4 channels).

16-bit colour PNG / TIFF: Pillow can only read them cut to 8 bits, so they are read with OpenCV
(``cv2``, installed with the detection / segmentation extras) when it is importable; without it they are
read at 8 bits and a warning says so once.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
from PIL import Image

from .fashion_mnist import DataError

logger = logging.getLogger("mae_transfer")

__all__ = ["Planes", "read_image", "probe_channels", "channels_of", "match_channels", "image_array",
           "HIGH_BIT_DEPTH_MODES", "to_rgb"]

# PIL modes of images with more than 8 bits per channel: readers that work in 8 bits (detectron2's
# ``read_image``) would clip them, so the detection data check names such files up front.
HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_TO_RGB = ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_WITH_ALPHA = {"RGBA": "RGB", "RGBa": "RGB", "LA": "L", "La": "L", "PA": "RGB"}
_warned_8bit_colour = False


class Planes:
    """A float image of any number of channels: ``array`` ``(C, H, W)`` float32, with the methods of a PIL
    image that the transforms call (``size``, ``resize(size, resample, box)``, ``crop``, ``transpose``),
    applied to each channel by PIL's own ``F``-mode resampling (the same filters as the 8-bit path)."""

    mode = "planes"

    def __init__(self, array: np.ndarray):
        if array.ndim != 3:
            raise ValueError(f"Planes needs a (C, H, W) array, got shape {array.shape}")
        self.array = np.ascontiguousarray(array, dtype=np.float32)

    @property
    def channels(self) -> int:
        return self.array.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[2], self.array.shape[1]

    @property
    def width(self) -> int:
        return self.array.shape[2]

    @property
    def height(self) -> int:
        return self.array.shape[1]

    def resize(self, size: Sequence[int], resample=Image.BICUBIC, box=None) -> "Planes":
        out = [np.asarray(Image.fromarray(c, mode="F").resize(tuple(size), resample, box=box)) for c in self.array]
        return Planes(np.stack(out))

    def crop(self, box: Sequence[int]) -> "Planes":
        left, top, right, bottom = (int(v) for v in box)
        if left < 0 or top < 0 or right > self.width or bottom > self.height:
            raise ValueError(f"crop box {box} is outside the {self.width}x{self.height} image")
        return Planes(self.array[:, top:bottom, left:right])

    def transpose(self, method) -> "Planes":
        if method == Image.FLIP_LEFT_RIGHT:
            return Planes(self.array[:, :, ::-1])
        if method == Image.FLIP_TOP_BOTTOM:
            return Planes(self.array[:, ::-1, :])
        raise ValueError(f"Planes.transpose: only horizontal / vertical flips, got {method}")


def channels_of(img: Image.Image | Planes) -> int:
    """Channels of an image :func:`read_image` returned."""
    return img.channels if isinstance(img, Planes) else len(img.getbands())


def image_array(img: Image.Image | Planes) -> np.ndarray:
    """``(C, H, W)`` float32 in [0, 1] (8-bit) or the image's own float range (:class:`Planes`)."""
    if isinstance(img, Planes):
        return img.array
    a = np.asarray(img, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _int_range(rawmode: str, mode: str) -> tuple[float, float]:
    """(lowest, highest) value of the integer type a PIL ``I`` / ``I;16*`` image was stored as."""
    bits = "16" if ("16" in rawmode or mode.startswith("I;16")) else ("8" if rawmode.startswith("I;8") else "32")
    signed = "S" in rawmode.split(";")[-1] or mode.endswith("S") or (bits == "32" and "U" not in rawmode)
    top = 2.0 ** int(bits)
    return (-top / 2, top / 2 - 1) if signed else (0.0, top - 1)


def _rawmode(im: Image.Image) -> str:
    """The raw layout of the file's pixels (``RGB;16B``, ``I;16`` ...), from the decoder tile, before loading."""
    if not im.tile:
        return ""
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    return str(args[0] if isinstance(args, tuple) else args)


def _decode_frame(im: Image.Image, path: str, alpha: str) -> Image.Image | Planes | None:
    """One frame (page) of an open image: a PIL L/RGB image or Planes; None for 16-bit colour, which
    Pillow would cut to 8 bits (the caller reads it another way)."""
    raw, mode = _rawmode(im), im.mode
    if mode in ("RGB", "RGBA") and ";16" in raw:
        return None
    im.load()  # full decode here: truncated files fail now, with their path
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in _TO_RGB:
        return im.convert("RGB")
    if mode in _WITH_ALPHA:
        if alpha == "drop":
            return im.convert(_WITH_ALPHA[mode])
        return Planes(image_array(im.convert("RGBA" if mode in ("RGBa", "PA") else ("LA" if mode == "La" else mode))))
    if mode in ("L", "RGB"):
        return im
    if mode == "F":
        return Planes(np.asarray(im, dtype=np.float32)[None])
    if mode.startswith("I"):
        lo, hi = _int_range(raw, mode)
        a = np.asarray(im).astype(np.float64)
        return Planes(((a - lo) / (hi - lo)).astype(np.float32)[None])
    raise DataError(f"image {path} has PIL mode {mode!r}, which this reader does not know")


def _read_16bit_colour(path: str, alpha: str) -> Planes | None:
    """A 16-bit RGB(A) file at full depth by OpenCV, or None when OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    a = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if a is None or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise DataError(f"cannot read 16-bit colour image {path} (OpenCV read "
                        f"{'nothing' if a is None else f'shape {a.shape}'})")
    a = a[..., [2, 1, 0, 3][:a.shape[2]]]  # OpenCV's BGR(A) -> RGB(A)
    if alpha == "drop":
        a = a[..., :3]
    scale = 65535.0 if a.dtype == np.uint16 else float(np.iinfo(a.dtype).max) if a.dtype.kind == "u" else 1.0
    return Planes((a.astype(np.float32) / scale).transpose(2, 0, 1))


def read_image(path: str | os.PathLike, alpha: str = "drop") -> Image.Image | Planes:
    """The image file at ``path`` (see the module docstring for the rules). A multi-page TIFF is one
    image whose channels are its pages' channels in order (a microscopy stack); all pages must have the
    same size. Raises :class:`DataError` naming the file for anything unreadable."""
    global _warned_8bit_colour
    if alpha not in ("drop", "keep"):
        raise ValueError(f"alpha must be 'drop' or 'keep', got {alpha!r}")
    path = str(path)
    try:
        with Image.open(path) as im:
            pages = getattr(im, "n_frames", 1) if im.format == "TIFF" else 1
            frames = []
            for i in range(pages):
                if pages > 1:
                    im.seek(i)
                img = _decode_frame(im, path, alpha)
                if img is None:  # 16-bit colour
                    img = _read_16bit_colour(path, alpha) if pages == 1 else None
                    if img is None:
                        if not _warned_8bit_colour:
                            _warned_8bit_colour = True
                            logger.warning("%s is 16-bit colour: read at 8 bits (install opencv-python-headless "
                                           "to read such files at full depth)", path)
                        im.load()  # Pillow's 8-bit reading of it
                        img = _decode_frame(im.copy(), path, alpha)
                frames.append(img)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if len(frames) == 1:
        return frames[0]
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise DataError(f"TIFF stack {path} has pages of different sizes {sorted(sizes)} (a pyramid or "
                        f"thumbnails?): a stack's pages are its channels and must be the same size")
    return Planes(np.concatenate([image_array(f) for f in frames]))


def _mode_channels(mode: str, transparent: bool, alpha: str) -> int:
    keep = alpha == "keep"
    if mode in ("1", "L", "F") or mode.startswith("I"):
        return 1
    if mode in ("LA", "La"):
        return 2 if keep else 1
    if mode == "P":
        return 4 if keep and transparent else 3
    if mode in ("RGBA", "RGBa", "PA"):
        return 4 if keep else 3
    return 3


def probe_channels(path: str | os.PathLike, alpha: str = "drop") -> tuple[int, bool]:
    """``(channels, has_alpha)`` that :func:`read_image` would give ``path``, from the header alone
    (nothing is decoded). Raises :class:`DataError` for a file PIL cannot open."""
    try:
        with Image.open(path) as im:
            pages = getattr(im, "n_frames", 1) if im.format == "TIFF" else 1
            total, has_alpha = 0, False
            for i in range(pages):
                if pages > 1:
                    im.seek(i)
                transparent = im.mode == "P" and "transparency" in im.info
                has_alpha |= im.mode in _WITH_ALPHA or transparent
                total += _mode_channels(im.mode, transparent, alpha)
            return total, has_alpha
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


# ITU-R 601-2 luma, the weights of PIL's convert("L")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def match_channels(img: Image.Image | Planes, channels: int, path: str = "image") -> Image.Image | Planes:
    """``img`` with ``channels`` channels: as is if it has them, grey copied to 3 channels, RGB to grey
    by luma (PIL's weights); any other change raises :class:`DataError` naming ``path``."""
    have = channels_of(img)
    if have == channels:
        return img
    if have == 1 and channels == 3:
        return img.convert("RGB") if not isinstance(img, Planes) else Planes(np.repeat(img.array, 3, axis=0))
    if have == 3 and channels == 1:
        return img.convert("L") if not isinstance(img, Planes) else Planes(np.tensordot(_LUMA, img.array, 1)[None])
    raise DataError(f"image {path} has {have} channels, the dataset {channels} (only grey <-> RGB is converted; "
                    f"set in_chans to the data's channels, or alpha=drop|keep for images with transparency)")


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB, for models trained on 8-bit RGB (``tools/predict.py``): 16-bit (and 32-bit int /
    float) grey images are scaled from their full range (0..65535 for 16-bit and ``I``, 0..1 or the image's
    maximum for float) instead of clipped; everything else goes through PIL's own conversion."""
    if im.mode not in HIGH_BIT_DEPTH_MODES:
        return im.convert("RGB")
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        top = 1.0 if arr.size and arr.max() <= 1.0 else max(float(arr.max(initial=0)), 1.0)
    else:
        top = 65535.0 if arr.size == 0 or arr.max() <= 65535 else float(arr.max())
    grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")
