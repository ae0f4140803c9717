"""An MAE of ours (``pretrain/run.py``'s checkpoint) on new images (``tools/predict.py``): one figure per
image with the original, the masked input, the reconstruction and the reconstruction with the visible
patches pasted back, each panel at the input image's size.

The MAE is rebuilt from the checkpoint itself (``model_kwargs``, written by ``pretrain/run.py``) and
loaded strictly. Each image is resized (bicubic) to the model's square input, as the evaluation
transform does for square images, normalised with the training run's statistics, and the panels are
resized back (bicubic) to the image's size. Masks come from a seeded generator: the same run gives the
same figures.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mae_transfer.checkpoint import CheckpointError, check_state_dict, extract_state_dict
from mae_transfer.common import ConfigError
from mae_transfer.data.datasets import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, PHOTOS, PHOTOS_MEAN, PHOTOS_STD,
                                        is_fashion_mnist_dir)
from mae_transfer.data.fashion_mnist import DataError
from mae_transfer.data.images import image_array, match_channels, read_image
from mae_transfer.data.norm_stats import expand_channels, stored_norm_stats
from mae_transfer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mae_transfer.models.mae import MaskedAutoencoderViT
from mae_transfer.models.masking import mask_noise
from mae_transfer.predict import ImageError, InputImage, save_png
from mae_transfer.viz import mae_reconstruction

__all__ = ["training_norm_stats", "MAEPredictor", "PANEL_GAP"]

logger = logging.getLogger("pretrain")

PANEL_GAP = 2  # white pixels between the figure's panels


def training_norm_stats(ckpt: dict) -> tuple[tuple, tuple, str]:
    """``(mean, std, where from)`` the run normalised its images with, as ``pretrain/data.py``'s
    ``norm_stats`` chose them: the checkpoint's ``norm_stats`` (what every checkpoint of ``pretrain/run.py``
    stores), else statistics stored in the checkpoint (top level or config), else those of
    the built-in dataset it was trained on, else ImageNet's (an image folder without given statistics)."""
    stored = stored_norm_stats(ckpt)
    if stored is not None:
        return stored["mean"], stored["std"], f"the checkpoint (norm_stats: {stored['source'] or 'stored'})"
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    for src in (ckpt, cfg):
        if src.get("mean") and src.get("std"):
            return tuple(map(float, src["mean"])), tuple(map(float, src["std"])), "the checkpoint"
    data = cfg.get("data")
    if data == PHOTOS:
        return PHOTOS_MEAN, PHOTOS_STD, "the built-in photos"
    if data is None or (Path(str(data)).is_dir() and is_fashion_mnist_dir(data)):
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD, "the built-in Fashion-MNIST"
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet (the image-folder default)"


class MAEPredictor:
    """An MAE of ours on batches of images.

    Args:
        weights: the checkpoint file (``checkpoint-final.pth`` of ``pretrain/run.py``).
        ckpt: its loaded content.
        device: ``"cpu"`` or ``"cuda"``.
        mask_ratio: fraction of patches removed (None: the run's ``mask_ratio``).
        seed: seed of the masks.
    """

    kind = "mae"

    def __init__(self, weights: Path, ckpt: dict, device: str, mask_ratio: float | None = None, seed: int = 0):
        kwargs = ckpt.get("model_kwargs")
        if not isinstance(kwargs, dict):
            raise CheckpointError(f"{weights} has an MAE decoder but no 'model_kwargs': predict rebuilds MAEs from "
                                  f"checkpoints of pretrain/run.py (checkpoint-final.pth)")
        cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        try:
            self.model = MaskedAutoencoderViT(**kwargs)
        except TypeError as e:
            raise CheckpointError(f"{weights}: model_kwargs do not build an MAE ({e})") from None
        sd = extract_state_dict(ckpt, str(weights))
        check_state_dict(sd, self.model, source=str(weights), fmt="mae_transfer")
        self.model.load_state_dict(sd)
        self.model.to(device).eval()
        self.mask_ratio = float(mask_ratio if mask_ratio is not None else cfg.get("mask_ratio", 0.75))
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"--mask-ratio must be in (0, 1), got {self.mask_ratio}")
        self.sampling = str(cfg.get("mask_sampling") or "random")
        self.channels = int(kwargs.get("in_chans", 3))
        self.mean, self.std, self.stats_from = training_norm_stats(ckpt)
        try:
            self.mean, self.std = expand_channels(self.mean, self.std, self.channels)
        except ValueError as e:
            raise CheckpointError(f"{weights}: normalisation {e}") from None
        self.rng = np.random.default_rng(seed)
        self.device, self.weights, self.count = device, str(weights), 0
        logger.info(f"MAE {kwargs.get('embed_dim')}-d x {kwargs.get('depth')} at {self.model.img_size}px, mask "
                    f"{self.mask_ratio:.0%} ({self.sampling}), normalised with the statistics of {self.stats_from}")

    def _stat(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)

    def _tensor(self, im: InputImage) -> torch.Tensor:
        """(C, S_h, S_w) normalised input of the model (its ``img_size`` and ``in_chans``) for one image: an
        RGB model reads the 8-bit RGB image, any other channel count the file at full depth, as in training
        (:func:`mae_transfer.data.images.read_image`, grey <-> RGB converted)."""
        size = self.model.img_size
        sh, sw = (size, size) if isinstance(size, int) else size
        if self.channels == 3:
            img = Image.fromarray(im.rgb).resize((sw, sh), Image.BICUBIC)
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        else:
            try:
                img = match_channels(read_image(im.path), self.channels, str(im.path)).resize((sw, sh), Image.BICUBIC)
            except DataError as e:
                raise ImageError(str(e)) from None
            x = torch.from_numpy(np.ascontiguousarray(image_array(img), dtype=np.float32))
        return (x - self._stat(self.mean)) / self._stat(self.std)

    def _panel(self, x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(C, S_h, S_w) normalised -> (H, W, 3) uint8 at ``size`` (H, W); one channel (or the first of
        an N-channel stack) shown grey."""
        x = x.cpu().float() * self._stat(self.std) + self._stat(self.mean)
        if x.shape[0] != 3:
            x = x[:1].expand(3, -1, -1)
        pix = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        return np.asarray(Image.fromarray(pix).resize((size[1], size[0]), Image.BICUBIC))

    @torch.no_grad()
    def predict(self, batch: list[InputImage], out: Path):
        """``out/reconstructions/NAME.png`` per image of ``batch``: four panels side by side (original,
        masked with removed patches grey, reconstruction, reconstruction + visible), each the image's
        size, :data:`PANEL_GAP` white pixels apart."""
        imgs = torch.stack([self._tensor(im) for im in batch]).to(self.device)
        grid = tuple(self.model.grid_size)
        noise = torch.from_numpy(np.stack([mask_noise(self.sampling, self.rng, grid, self.mask_ratio)
                                           for _ in batch])).to(self.device)
        r = mae_reconstruction(self.model, imgs, self.mask_ratio, noise)
        grey = ((0.5 - self._stat(self.mean)) / self._stat(self.std)).unsqueeze(0).to(imgs)
        p = self.model.patch_size
        removed = self.model.unpatchify(r["mask"].unsqueeze(-1).expand(-1, -1, p * p * imgs.shape[1])).bool()
        masked = torch.where(removed, grey.expand_as(imgs), r["original"])
        for i, im in enumerate(batch):
            h, w = im.size
            panels = [im.rgb] + [self._panel(t[i], (h, w)) for t in (masked, r["recon"], r["paste"])]
            fig = np.full((h, 4 * w + 3 * PANEL_GAP, 3), 255, dtype=np.uint8)
            for k, panel in enumerate(panels):
                fig[:, k * (w + PANEL_GAP):k * (w + PANEL_GAP) + w] = panel
            save_png(out / "reconstructions" / f"{im.name}.png", fig)
            self.count += 1

    def finish(self, out: Path) -> dict:
        """The summary for ``predict.json``."""
        return {"mask_ratio": self.mask_ratio, "mask_sampling": self.sampling, "mean": list(self.mean),
                "std": list(self.std), "normalisation_from": self.stats_from,
                "panels": ["original", "masked", "reconstruction", "reconstruction + visible"]}
