"""Figures: MAE reconstructions laid out as the paper's Figure 2, loss curves, masking-ratio sweeps.

Matplotlib with the Agg backend (no display needed); every function writes a PNG and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["mae_reconstruction", "save_reconstruction_figure", "save_loss_curve", "save_sweep_plot"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def mae_reconstruction(model, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
    """Run an MAE and return images ``(N, C, H, W)`` in the input's (normalised) space:
    ``masked`` (removed patches zeroed), ``recon`` (every patch predicted) and ``paste`` (prediction
    on masked patches, original on visible ones), plus ``mask`` ``(N, L)`` with 1 = removed.

    The prediction is mapped back to pixels by ``model.prediction_to_patches`` (a normalised-pixel
    target with each patch's own mean and variance, as the MAE demo does; a PCA target with its basis)."""
    was_training = model.training
    model.eval()
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    model.train(was_training)
    pred = model.prediction_to_patches(pred, imgs)
    recon = model.unpatchify(pred)
    m = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))  # 1 where removed
    imgs = imgs.float()
    return {"masked": imgs * (1 - m), "recon": recon, "paste": imgs * (1 - m) + recon * m, "mask": mask,
            "original": imgs}


def _to_display(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(C, H, W) normalised -> (H, W, C) in [0, 1]."""
    mean = torch.tensor(mean).view(-1, 1, 1)
    std = torch.tensor(std).view(-1, 1, 1)
    return (x.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def save_reconstruction_figure(model, imgs: torch.Tensor, path: str | os.PathLike, mean: Sequence[float],
                               std: Sequence[float], mask_ratio: float = 0.75, noise: torch.Tensor | None = None,
                               title: str | None = None) -> Path:
    """Rows: original, masked input, reconstruction, reconstruction + visible patches; one column per
    image of ``imgs`` ``(N, C, H, W)`` (normalised with ``mean``/``std``). Masked patches show grey."""
    out = mae_reconstruction(model, imgs, mask_ratio, noise)
    grey = (0.5 - torch.tensor(mean)) / torch.tensor(std)
    removed = model.unpatchify(out["mask"].unsqueeze(-1).expand(-1, -1, model.patch_size ** 2 * imgs.shape[1])).bool()
    masked_show = torch.where(removed, grey.view(1, -1, 1, 1).to(out["original"].dtype), out["original"])
    rows = [("original", out["original"]), (f"masked {mask_ratio:.0%}", masked_show),
            ("reconstruction", out["recon"]), ("reconstruction + visible", out["paste"])]
    plt = _plt()
    n = imgs.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.2, 1.3 * len(rows) + 0.4), squeeze=False)
    for r, (name, batch) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(_to_display(batch[c], mean, std), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def save_loss_curve(records: list[dict], path: str | os.PathLike, key: str = "loss", title: str | None = None) -> Path:
    """Plot ``key`` against ``epoch`` (fractional) from log records (``log.jsonl`` lines); also the
    per-epoch means (``epoch_loss``) when present."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    pts = [(r["epoch"], r[key]) for r in records if key in r]
    if pts:
        ax.plot(*zip(*pts), lw=1, label=f"train {key} (logged steps)")
    ep = [(r["epoch"], r["epoch_loss"]) for r in records if "epoch_loss" in r]
    if ep:
        ax.plot(*zip(*ep), "o-", lw=1.5, label="epoch mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def save_sweep_plot(ratios: Sequence[float], series: dict[str, Sequence[float]], path: str | os.PathLike,
                    title: str = "masking ratio sweep") -> Path:
    """Top-1 (%) against masking ratio, one line per series (e.g. fine-tune, linear probe), as the
    paper's Figure 5."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, vals in series.items():
        ax.plot([r * 100 for r in ratios], vals, "o-", label=name)
        for r, v in zip(ratios, vals):
            ax.annotate(f"{v:.1f}", (r * 100, v), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
    ax.set_xlabel("masking ratio (%)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)
