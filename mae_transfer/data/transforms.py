"""Image transforms of the MAE recipes: PIL image (+ a per-sample ``random.Random``) in, normalised
``(3, H, W)`` float tensor out.

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AUGMENTS", "train_transform", "eval_transform",
           "RandomResizedCropFlip", "RandomCropFlip", "EvalTransform", "color_jitter", "to_tensor"]

# The MAE paper's Table 1e rows: none | crop, fixed size | crop, rand size | crop + color jit.
AUGMENTS = ("none", "crop_fixed", "crop_rand", "crop_rand_jitter")
# crop_rand_jitter: brightness, contrast and saturation factors in [1 - s, 1 + s], the strength of the
# contrastive recipes' colour jitter (hue is left out: it costs an HSV round trip per image).
JITTER = 0.4


def to_tensor(img: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """PIL RGB -> normalised float tensor (3, H, W)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return x.sub_(mean).div_(std)


def color_jitter(img: Image.Image, rng: random.Random, strength: float = JITTER) -> Image.Image:
    """Brightness, contrast and saturation, each by a factor uniform in [1 - strength, 1 + strength],
    in an order drawn from ``rng``."""
    ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    rng.shuffle(ops)
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
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

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
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

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
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

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
