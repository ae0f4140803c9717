"""Image transforms of the MAE recipes: an image (+ a per-sample ``random.Random``) in, normalised
``(C, H, W)`` float tensor out. Images are 8-bit PIL ``L`` / ``RGB`` images or
:class:`mae_transfer.data.images.Planes` (16-bit, float, N-channel), resampled by the same PIL filters.

- pretraining / linear probing: RandomResizedCrop(img_size, scale, ratio 3/4-4/3, bicubic) + horizontal
  flip, the same sampling rule as torchvision's, drawn from the given ``rng`` (no global RNG state, so a
  sample's view depends only on its seed, and it is cheap: one PIL resize with a crop box); the MAE
  paper's Table 1e variants: ``none`` (the evaluation transform), ``crop_fixed`` (resize to
  img_size / 0.875, random img_size crop + flip), ``crop_rand`` (the default above) and
  ``crop_rand_jitter`` (+ colour jitter);
- fine-tuning with RandAugment / random erasing: timm's ``create_transform`` with the MAE reference's
  arguments, run with the global RNGs seeded from ``rng`` and restored afterwards;
- evaluation: resize the short side to ``img_size / crop_pct`` (bicubic), centre crop ``img_size``.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance

from .images import Planes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AUGMENTS", "train_transform", "eval_transform",
           "RandomResizedCropFlip", "RandomCropFlip", "EvalTransform", "color_jitter", "to_tensor"]

# The MAE paper's Table 1e rows: none | crop, fixed size | crop, rand size | crop + color jit.
AUGMENTS = ("none", "crop_fixed", "crop_rand", "crop_rand_jitter")
# crop_rand_jitter: brightness, contrast and saturation factors in [1 - s, 1 + s], the strength of the
# contrastive recipes' colour jitter (hue is left out: it costs an HSV round trip per image).
JITTER = 0.4


def _stats(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


def to_tensor(img: Image.Image | Planes, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """PIL L / RGB (values / 255) or :class:`Planes` -> normalised float tensor (C, H, W); ``mean`` and
    ``std`` ``(C, 1, 1)``."""
    if isinstance(img, Planes):
        x = torch.from_numpy(img.array.copy())
    else:
        a = np.array(img, dtype=np.uint8)
        x = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).float().div_(255)
    if x.shape[0] != mean.shape[0]:
        raise ValueError(f"image has {x.shape[0]} channels, the normalisation statistics {mean.shape[0]}")
    return x.sub_(mean).div_(std)


def _jitter_planes(img: Planes, ops: list[str], rng: random.Random, strength: float) -> Planes:
    """PIL's three enhancers on float planes: brightness scales towards 0, contrast towards the image's
    mean grey, saturation (3 channels only) towards its luma."""
    a = img.array
    for op in ops:
        f = rng.uniform(1 - strength, 1 + strength)
        if op == "Brightness":
            a = a * f
        elif op == "Contrast":
            a = a.mean() + f * (a - a.mean())
        elif a.shape[0] == 3:
            grey = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), a, 1)[None]
            a = grey + f * (a - grey)
    return Planes(a)


def color_jitter(img: Image.Image | Planes, rng: random.Random, strength: float = JITTER) -> Image.Image | Planes:
    """Brightness, contrast and saturation, each by a factor uniform in [1 - strength, 1 + strength],
    in an order drawn from ``rng``."""
    ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    rng.shuffle(ops)
    if isinstance(img, Planes):
        return _jitter_planes(img, [op.__name__ for op in ops], rng, strength)
    for op in ops:
        img = op(img).enhance(rng.uniform(1 - strength, 1 + strength))
    return img


class RandomResizedCropFlip:
    """torchvision's RandomResizedCrop parameter rule (10 tries, then a centre crop within the ratio
    range) + optional horizontal flip, drawn from ``rng``; bicubic resampling.

    Args:
        size: output side.
        scale: crop area range as a fraction of the image (MAE pretraining: 0.2-1).
        ratio: aspect-ratio range.
        hflip: flip with probability 1/2.
        mean, std: normalisation.
        jitter: colour-jitter strength after the crop (0: none), see :func:`color_jitter`.
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, jitter: float = 0.0):
        self.size, self.scale, self.ratio, self.hflip = size, tuple(scale), tuple(ratio), hflip
        self.jitter = jitter
        self.mean, self.std = _stats(mean), _stats(std)

    def params(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """(left, top, w, h) of the crop."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ar = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        left, top, w, h = self.params(img.width, img.height, rng)
        img = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.jitter:
            img = color_jitter(img, rng, self.jitter)
        return to_tensor(img, self.mean, self.std)


class RandomCropFlip:
    """Crop of a fixed size at a random place (the paper's "crop, fixed size"): resize the short side to
    ``size / crop_pct`` (bicubic; 256 for 224 at the default 0.875), crop ``size`` x ``size``, flip.

    Args:
        size: output side.
        crop_pct: output side / resized short side.
        hflip: flip with probability 1/2.
        mean, std: normalisation.
    """

    def __init__(self, size: int, crop_pct: float = 0.875, hflip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size, self.resize, self.hflip = size, int(round(size / crop_pct)), hflip
        self.mean, self.std = _stats(mean), _stats(std)

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        s = self.resize / min(img.size)
        img = img.resize((max(self.size, round(img.width * s)), max(self.size, round(img.height * s))), Image.BICUBIC)
        left, top = rng.randint(0, img.width - self.size), rng.randint(0, img.height - self.size)
        img = img.crop((left, top, left + self.size, top + self.size))
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img, self.mean, self.std)


class EvalTransform:
    """Resize the short side to ``size / crop_pct`` (bicubic; skipped when already that size), centre crop."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 crop_pct: float = 1.0):
        self.size, self.resize = size, int(round(size / crop_pct))
        self.mean, self.std = _stats(mean), _stats(std)

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        w, h = img.size
        if min(w, h) != self.resize:
            s = self.resize / min(w, h)
            img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BICUBIC)
            w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        if (w, h) != (self.size, self.size):
            img = img.crop((left, top, left + self.size, top + self.size))
        return to_tensor(img, self.mean, self.std)


class _GlobalSeeded:
    """Runs a transform that draws from the global python / numpy / torch RNGs (timm's RandAugment,
    RandomErasing) with those seeded from ``rng``, restoring them afterwards."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        if isinstance(img, Planes) or img.mode != "RGB":
            from .fashion_mnist import DataError
            raise DataError(f"auto_augment / reprob (timm's RandAugment and random erasing) need 8-bit RGB "
                            f"images, this one has {'float planes' if isinstance(img, Planes) else img.mode}; "
                            f"drop auto_augment and reprob for this data")
        s = rng.getrandbits(63)
        py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(s)
            np.random.seed(s % 2 ** 32)
            torch.manual_seed(s)
            return self.transform(img)
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.set_rng_state(th)


def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float],
                    crop_scale: Sequence[float] = (0.2, 1.0), hflip: bool = True,
                    auto_augment: str | None = None, reprob: float = 0.0, augment: str = "crop_rand"):
    """Training transform ``(img, rng) -> tensor``. ``augment``: one of :data:`AUGMENTS` other than
    ``none`` (that is the evaluation transform). ``auto_augment`` (e.g. ``"rand-m9-mstd0.5-inc1"``) or
    ``reprob > 0`` switch to timm's ``create_transform`` as the MAE fine-tuning code calls it (random-size
    crops only)."""
    if augment not in AUGMENTS[1:]:
        raise ValueError(f"train_transform: augment must be one of {', '.join(AUGMENTS[1:])}, got {augment!r}")
    if (auto_augment or reprob > 0) and augment != "crop_rand":
        raise ValueError(f"train_transform: auto_augment / reprob use random-size crops, not augment={augment!r}")
    if augment == "crop_fixed":
        return RandomCropFlip(img_size, hflip=hflip, mean=mean, std=std)
    if auto_augment or reprob > 0:
        from timm.data import create_transform
        return _GlobalSeeded(create_transform(
            input_size=img_size, is_training=True, scale=tuple(crop_scale), hflip=0.5 if hflip else 0.0,
            color_jitter=None, auto_augment=auto_augment, interpolation="bicubic", re_prob=reprob,
            re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std)))
    return RandomResizedCropFlip(img_size, crop_scale, hflip=hflip, mean=mean, std=std,
                                 jitter=JITTER if augment == "crop_rand_jitter" else 0.0)


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 1.0):
    """Evaluation transform ``(img, rng=None) -> tensor`` (224/256 crop_pct for ImageNet)."""
    return EvalTransform(img_size, mean, std, crop_pct)
