"""Datasets for pretraining and classification: Fashion-MNIST, ImageFolder trees, and the seeded
wrapper that makes every sample's augmentation (and MAE mask) a function of ``(seed, epoch, index)``.

That last property is what makes runs reproducible whatever the number of processes or loader workers,
and resumed runs bitwise equal to uninterrupted ones: nothing about a sample depends on which process
drew it or on RNG state carried between samples.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..common import atomic_write, file_lock, usable_cpus
from .fashion_mnist import CLASSES as FASHION_CLASSES
from .fashion_mnist import DEFAULT_ROOT as FASHION_ROOT
from .fashion_mnist import DataError, load_fashion_mnist
from .images import Planes, match_channels, probe_channels, read_image

logger = logging.getLogger("mae_transfer")

__all__ = ["DataError", "FashionMNIST", "FashionMNISTPhotos", "ImageFolder", "SeededDataset", "Subset", "open_dataset",
           "is_fashion_mnist_dir", "sample_seed", "IMG_EXTENSIONS", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
           "PHOTOS", "PHOTOS_MEAN", "PHOTOS_STD"]

PROBE_FILES = 16  # files whose headers decide an ImageFolder's channel count
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Grey-level statistics of the 60k training images after zero-padding 28 -> 32 (measured once).
FASHION_MNIST_MEAN = (0.2190,) * 3
FASHION_MNIST_STD = (0.3318,) * 3
PHOTOS = "fashion-mnist-photos"  # the --data name of FashionMNISTPhotos
# RGB statistics of the 60k rendered training photos (measured once; the scenes have the same renderer).
PHOTOS_MEAN = (0.453,) * 3
PHOTOS_STD = (0.278,) * 3


def is_fashion_mnist_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return any((p / n).is_file() for n in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte",
                                            "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"))


class FashionMNIST(Dataset):
    """Fashion-MNIST as PIL images: the 28x28 grey photo zero-padded by 2 px to 32x32 (the product
    background is black, so padding adds no edge; resizing would blur the 1-px details), by default with
    grey copied to 3 channels so ImageNet-shaped models and checkpoints apply unchanged.

    Args:
        split: "train" (60k) or "test" (10k).
        root: folder with the IDX files (default /usr/share/datasets/fashion-mnist).
        channels: 3 (grey copied to RGB) or 1 (grey as it is).
    Items: ``(PIL.Image RGB or L 32x32, label int, skipped=0)``.
    """

    classes = FASHION_CLASSES

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, channels: int = 3):
        if channels not in (1, 3):
            raise DataError(f"Fashion-MNIST is grey: in_chans must be 1 or 3 (grey copied to RGB), got {channels}")
        images, labels = load_fashion_mnist(split, root)
        self.images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
        self.labels = labels
        self.root = str(root or FASHION_ROOT)
        self.channels = channels
        self.mean, self.std = FASHION_MNIST_MEAN[:channels], FASHION_MNIST_STD[:channels]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> tuple[Image.Image, int, int]:
        img = Image.fromarray(self.images[i], mode="L")
        return (img.convert("RGB") if self.channels == 3 else img), int(self.labels[i]), 0


class FashionMNISTPhotos(Dataset):
    """Fashion-MNIST as object-centric colour "product photos", the built-in stand-in for ImageNet: each
    item alone, tinted, at 22-32 px on a 32x32 background of the kind the detection / segmentation scenes
    use (:func:`mae_transfer.data.scenes.render_photos`). Pretraining on these rather than on grey items on
    black is what makes the transfer to the scenes an ImageNet -> COCO analogue: same kind of pixels, one
    object per image upstream, several smaller ones downstream.

    Rendered once, by one process on every usable core (concurrent callers wait for it), and cached as
    ``$MAE_DATA_DIR/fashion-mnist-photos-32px-seedS[-<hash of root>]/{train,test}.npz`` (default
    ``output/data``), written atomically.

    Args:
        split: "train" (60k) or "test" (10k).
        root: folder with the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist).
        seed: rendering seed (backgrounds, tints, placement).
    Items: ``(PIL.Image RGB 32x32, label int, skipped=0)``.
    """

    classes = FASHION_CLASSES
    mean, std = PHOTOS_MEAN, PHOTOS_STD
    size = 32
    channels = 3

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, seed: int = 0):
        from .scenes import RENDER_VERSION, data_dir, render_photos

        name = f"{PHOTOS}-{self.size}px-seed{seed}-v{RENDER_VERSION}"
        if root is not None and Path(root).resolve() != FASHION_ROOT.resolve():  # other source images
            name += "-" + hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8]
        cache = data_dir() / name / f"{split}.npz"
        with file_lock(cache.parent / f".{split}.lock"):  # one process renders, on every core; the rest wait
            if not cache.is_file():
                items, labels = load_fashion_mnist(split, root)
                images = render_photos(items, labels, self.size, seed, workers=usable_cpus())
                atomic_write(cache, lambda f: np.savez(f, images=images, labels=labels))
        try:
            with np.load(cache) as f:
                self.images, self.labels = f["images"], f["labels"]
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"cannot read the rendered photos {cache}: {e} (delete it to re-render)") from None
        self.root = str(cache.parent)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> tuple[Image.Image, int, int]:
        return Image.fromarray(self.images[i], mode="RGB"), int(self.labels[i]), 0


class ImageFolder(Dataset):
    """Images under ``root/<class>/**/*.png`` (labels = sorted class folders), or directly under ``root``
    (one class; MAE ignores labels anyway), read by :func:`mae_transfer.data.images.read_image`: 8- and
    16-bit, grey, RGB, RGBA, N-channel TIFF stacks, at full depth.

    Args:
        root: the folder.
        min_size: smallest usable side in pixels (one patch); smaller images count as unusable.
        bad_images: ``"skip"``: an unreadable, truncated, too-small or wrong-channel image is replaced by
            the next usable one, counted (``skipped`` in each item) and logged with its path; ``"error"``:
            raise :class:`DataError` naming it.
        classes: the class names of the training folder, for a held-out folder: its subfolders are given
            their labels (a missing class is fine, an unknown one is an error); None: its own sorted names.
        channels: channels every item has (None: the data's, from the headers of up to
            :data:`PROBE_FILES` files spread over the folder: 1 if all are grey, 3 if grey and colour
            mix, else the one count they share). Grey is copied to RGB and RGB turned grey (luma) to
            fit; any other mismatch makes an image unusable.
        alpha: ``"drop"`` the alpha channel of RGBA / LA images (logged once) or ``"keep"`` it as a channel.
    Items: ``(image, label, skipped)``: a PIL L / RGB image or :class:`~mae_transfer.data.images.Planes`,
    and the number of bad files passed over.
    """

    mean = std = None  # computed from the data (pretrain/data.py, mae_transfer.data.norm_stats)

    def __init__(self, root: str | os.PathLike, min_size: int = 1, bad_images: str = "skip",
                 channels: int | None = None, alpha: str = "drop", classes: list[str] | None = None):
        if bad_images not in ("skip", "error"):
            raise ValueError(f"bad_images must be 'skip' or 'error', got {bad_images!r}")
        if alpha not in ("drop", "keep"):
            raise DataError(f"alpha must be drop or keep, got {alpha!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        self.min_size, self.bad_images, self.alpha = min_size, bad_images, alpha
        subdirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.samples: list[tuple[str, int]] = []
        self.classes = list(classes) if classes is not None else [d.name for d in subdirs]
        unknown = [d.name for d in subdirs if d.name not in self.classes]
        if unknown:
            raise DataError(f"{self.root} has class folders the training folder lacks: {', '.join(unknown[:8])} "
                            f"(training classes: {', '.join(self.classes[:8])}{', ...' if len(self.classes) > 8 else ''})")
        for d in subdirs:
            self.samples += [(f, self.classes.index(d.name)) for f in _image_files(d)]
        loose = [(str(f), 0) for f in sorted(self.root.iterdir()) if f.suffix.lower() in IMG_EXTENSIONS and f.is_file()]
        if loose and not self.samples:
            self.samples = loose
            self.classes = self.classes if classes is not None else [self.root.name]
        if not self.samples:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in {str(self.root)!r}")
        self.labels = np.array([s[1] for s in self.samples], dtype=np.int64)
        if channels is not None and channels < 1:
            raise DataError(f"channels must be >= 1, got {channels}")
        self.channels = channels or self._probe_channels()
        self._warned = 0

    def _probe_channels(self) -> int:
        """The folder's channel count from the headers of up to PROBE_FILES files spread over it."""
        picks = np.unique(np.linspace(0, len(self.samples) - 1, min(PROBE_FILES, len(self.samples))).astype(int))
        found: dict[int, str] = {}
        alpha = 0
        for i in picks:
            path = self.samples[i][0]
            try:
                n, has_alpha = probe_channels(path, self.alpha)
            except DataError:
                continue  # an unusable file is reported when it is loaded
            found.setdefault(n, path)
            alpha += has_alpha
        if alpha and self.alpha == "drop":
            logger.info("%s: %d of %d sampled images have an alpha channel: dropped (alpha=keep keeps it as a "
                        "channel)", self.root, alpha, len(picks))
        if not found or set(found) == {1}:
            return 1 if found else 3
        if set(found) <= {1, 3}:
            return 3
        if len(found) == 1:
            return next(iter(found))
        raise DataError(f"images in {self.root} have different channel counts: "
                        + ", ".join(f"{p} has {n}" for n, p in sorted(found.items()))
                        + "; set in_chans to the one to use (grey <-> RGB is converted, others are skipped)")

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, path: str) -> Image.Image | Planes:
        img = match_channels(read_image(path, self.alpha), self.channels, path)
        if min(img.size) < self.min_size:
            raise DataError(f"image {path} is {img.size[0]}x{img.size[1]}, smaller than one "
                            f"{self.min_size}x{self.min_size} patch")
        return img

    def load(self, i: int) -> tuple[Image.Image | Planes, int, int]:
        for skipped in range(min(64, len(self))):
            path, label = self.samples[(i + skipped) % len(self)]
            try:
                return self._open(path), label, skipped
            except DataError as e:
                if self.bad_images == "error":
                    raise
                if self._warned < 20:
                    self._warned += 1
                    logger.warning("skipping unusable image (%s)%s", e,
                                   "; further ones are only counted" if self._warned == 20 else "")
        raise DataError(f"{min(64, len(self))} consecutive unusable images in {self.root} from "
                        f"{self.samples[i][0]}: is the folder readable?")


def _image_files(d: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS)]
    return out


class Subset(Dataset):
    """The first ``n`` items of a permutation fixed by ``seed`` (so every run and every seed of a
    comparison sees the same subset). ``n = 0`` or ``n >= len``: the whole dataset, in order."""

    def __init__(self, base, n: int, seed: int = 0):
        self.base = base
        self.indices = (np.random.default_rng(seed).permutation(len(base))[:n] if 0 < n < len(base)
                        else np.arange(len(base)))
        self.labels = np.asarray(base.labels)[self.indices]
        self.classes, self.mean, self.std, self.channels = base.classes, base.mean, base.std, base.channels

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int):
        return self.base.load(int(self.indices[i]))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SeededDataset(Dataset):
    """Applies ``transform(img, rng)`` to ``base.load(i)`` with ``rng = random.Random(seed(seed, epoch, i))``.

    Args:
        base: a dataset with ``load(i) -> (PIL image, label, skipped)``.
        transform: ``(PIL image, random.Random) -> tensor (C, H, W)`` (see ``mae_transfer.data.transforms``).
        seed: run seed.
        noise_len: if > 0, also return ``noise`` ``(noise_len,)`` uniform [0, 1) from the same seed: the MAE
            masking noise, so a sample's mask does not depend on the process that drew it.
        noise_fn: draws ``noise`` instead, ``(np.random.Generator) -> (noise_len,)`` from the same seed
            (block / grid masks, see ``mae_transfer.models.masking.mask_noise``).
    Items: dict with ``img`` (C, H, W), ``label`` (), ``index`` (), ``skipped`` () and maybe ``noise``.
    Call :meth:`set_epoch` before building each epoch's loader iterator.
    """

    def __init__(self, base, transform: Callable, seed: int = 0, noise_len: int = 0,
                 noise_fn: Callable[[np.random.Generator], np.ndarray] | None = None):
        self.base, self.transform, self.seed, self.noise_len = base, transform, seed, noise_len
        self.noise_fn = noise_fn
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        img, label, skipped = self.base.load(i)
        s = sample_seed(self.seed, self.epoch, i)
        item = {"img": self.transform(img, random.Random(s)), "label": torch.tensor(label),
                "index": torch.tensor(i), "skipped": torch.tensor(skipped)}
        if self.noise_len:
            rng = np.random.default_rng(s)
            noise = self.noise_fn(rng) if self.noise_fn else rng.random(self.noise_len, dtype=np.float32)
            if noise.shape != (self.noise_len,):
                raise ValueError(f"noise_fn returned shape {noise.shape}, expected ({self.noise_len},)")
            item["noise"] = torch.from_numpy(noise)
        return item


def open_dataset(data: str | None, split: str, min_size: int = 1, bad_images: str = "skip",
                 val_data: str | None = None, channels: int | None = None, alpha: str = "drop",
                 classes: list[str] | None = None):
    """The ``split`` ("train" or "val") of ``data``: a Fashion-MNIST IDX folder (None: the built-in one),
    an ImageFolder with ``train/`` and ``val/`` inside, or the training ImageFolder itself (then the
    held-out images come from ``val_data``), or ``"fashion-mnist-photos"`` (:class:`FashionMNISTPhotos`).
    ``channels`` / ``alpha`` / ``classes``: see :class:`ImageFolder` (give a held-out split the training
    split's ``channels`` and ``classes``). Returns None for "val" when there is none."""
    if data == PHOTOS:
        if channels not in (None, 3):
            raise DataError(f"{PHOTOS} are colour photos: in_chans must be 3, got {channels}")
        return FashionMNISTPhotos("train" if split == "train" else "test")
    if data is None or is_fashion_mnist_dir(data):
        return FashionMNIST("train" if split == "train" else "test", data, channels or 3)
    root = Path(data)
    if not root.exists():
        raise DataError(f"data path {data!r} does not exist")
    if split == "train":
        folder = root / "train" if (root / "train").is_dir() else root
    elif val_data:
        folder = Path(val_data)
    elif (root / "val").is_dir():
        folder = root / "val"
    else:
        return None
    return ImageFolder(folder, min_size, bad_images, channels, alpha, classes)
